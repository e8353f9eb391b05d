"""Text classifiers over int64 token ids (``<pad>`` = 0): an LSTM, Kim's CNN and a small transformer encoder.

Each takes ``input_shape`` (L,), the vocabulary's length cap, and ``vocab_size`` (:func:`~.base.create_for` fills
both in from the split's vocabulary). Pads never count as words: the embeddings keep id 0 at zero
(``padding_idx``), the LSTM stops at each text's last token, the CNN's max-over-time skips windows that start on a
pad, the transformer masks pads as attention keys and leaves them out of its mean. So appending pads to a text
leaves its logits as they were, and a text without any token (all pads) still gets finite logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..core.errors import InvalidArgument
from ..data.vocabulary import PAD_ID
from .base import Backbone, register_model


def _lengths(ids: torch.Tensor) -> torch.Tensor:
    """Tokens up to and including each text's last non-pad one (at least 1, so an empty text reads one pad)."""
    positions = torch.arange(1, ids.shape[1] + 1, device=ids.device)
    return ((ids != PAD_ID) * positions).amax(1).clamp(min=1)


class _LSTMFeatures(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, pooling: str):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.pooling = pooling

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = _lengths(ids)
        # packing stops the recurrence at each text's own length: trailing pads never reach the state
        packed = pack_padded_sequence(self.embedding(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (last, _) = self.lstm(packed)
        if self.pooling == "last":
            return last[-1]
        states, _ = pad_packed_sequence(out, batch_first=True)  # zeros past each length
        return states.sum(1) / lengths.unsqueeze(1).to(states.dtype)


@register_model("lstm", modality="text")
def lstm(input_shape, num_classes, *, vocab_size: int, embed_dim: int = 64, hidden: int = 128, pooling: str = "last"):
    """Embedding + single-layer LSTM → linear: MEA-Defender's AG News model.

    Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024 (Table 1: a
    single-layer LSTM on AG News; the paper gives no sizes, these are CPU-sized). Parameters: ``embed_dim`` = 64,
    ``hidden`` = 128 LSTM units, ``pooling`` = ``"last"`` (the hidden state after each text's last token) or
    ``"mean"`` (over its tokens).
    """
    if pooling not in ("last", "mean"):
        raise InvalidArgument(f"lstm pooling must be 'last' or 'mean', got {pooling!r}")
    return Backbone(
        _LSTMFeatures(vocab_size, embed_dim, hidden, pooling), nn.Sequential(nn.Linear(hidden, num_classes))
    )


class _KimFeatures(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, widths: tuple[int, ...], channels: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, w) for w in widths)
        self.tail = max(widths) - 1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # zeros after the last position are pads' embeddings: every window that starts on a word exists, however
        # short the text or the length cap
        x = F.pad(self.embedding(ids).transpose(1, 2), (0, self.tail))  # N × embed × (L + tail)
        real = F.pad(ids != PAD_ID, (0, self.tail), value=False)
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))  # N × channels × windows
            # a window starting on a pad holds no word (texts are padded at the end); zeroing it is exact for the
            # max because ReLU outputs are >= 0, and an empty text pools to zeros
            pooled.append(h.masked_fill(~real[:, None, : h.shape[2]], 0.0).amax(2))
        return torch.cat(pooled, 1)


@register_model("text-cnn", modality="text")
def text_cnn(
    input_shape,
    num_classes,
    *,
    vocab_size: int,
    embed_dim: int = 64,
    channels: int = 64,
    widths: tuple[int, ...] = (3, 4, 5),
    dropout: float = 0.5,
):
    """Kim's CNN: embedding, convolutions of widths 3/4/5, max-over-time, dropout, linear.

    Kim, "Convolutional Neural Networks for Sentence Classification", EMNLP 2014 (CNN-rand: embeddings learnt from
    scratch). Parameters: ``embed_dim`` = 64 (the paper's 300), ``channels`` = 64 feature maps per width (the
    paper's 100), ``widths`` = (3, 4, 5), ``dropout`` = 0.5 before the linear layer.
    """
    widths = tuple(int(w) for w in widths)
    features = _KimFeatures(vocab_size, embed_dim, widths, channels)
    classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels * len(widths), num_classes))
    return Backbone(features, classifier)


class _EncoderFeatures(nn.Module):
    def __init__(self, vocab_size: int, length: int, d_model: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        self.positions = nn.Parameter(torch.randn(length, d_model) * 0.02)  # learned, BERT's initial scale
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout, batch_first=True)
        # the nested-tensor fast path of eval mode warns that its API is a prototype, and masks are enough here
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == PAD_ID
        # a text without any token attends to its first pad alone (all keys masked would give NaN)
        pad[:, 0] &= ~pad.all(1)
        h = self.encoder(self.embedding(ids) + self.positions[: ids.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(2).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1)


@register_model("transformer", modality="text")
def transformer(
    input_shape,
    num_classes,
    *,
    vocab_size: int,
    d_model: int = 64,
    heads: int = 4,
    layers: int = 2,
    head: int = 64,
    dropout: float = 0.1,
):
    """Small transformer encoder mean-pooled over its tokens, then a two-layer head (feature-sharing's text model).

    Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (the encoder); learned positions and a classification
    head on pooled features as in Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
    Understanding", NAACL 2019, the feature-sharing paper's text model, at CPU size and trained from scratch.
    Parameters: ``d_model`` = 64, ``heads`` = 4, ``layers`` = 2 (feed-forward 2 × ``d_model``), ``head`` = 64
    hidden units in the decision layers, ``dropout`` = 0.1.
    """
    if d_model % heads:
        raise InvalidArgument(f"transformer d_model={d_model} is not a multiple of heads={heads}")
    features = _EncoderFeatures(vocab_size, input_shape[0], d_model, heads, layers, dropout)
    classifier = nn.Sequential(nn.Linear(d_model, head), nn.ReLU(), nn.Linear(head, num_classes))
    return Backbone(features, classifier)
