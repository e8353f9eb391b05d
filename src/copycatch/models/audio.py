"""Audio classifiers over float32 waveforms in [-1, 1) (N × channels × samples): M5 and a log-mel CNN.

Each takes ``input_shape`` (channels, samples) and ``sample_rate`` (:func:`~.base.create_for` fills both in from the
split), from which the window sizes follow, so a model is sized in milliseconds rather than samples. Both scale
each clip to a common level first (recording levels are not what a keyword is). The log-mel front end is computed
here in torch (``torch.stft`` and a mel filterbank built below), with no torchaudio.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from ..core.errors import InvalidArgument
from .base import Backbone, register_model

POOL = 4  # M5's max-pool after every convolution


def _conv_block(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv1d(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0)
    return [conv, nn.BatchNorm1d(cout), nn.ReLU(), nn.MaxPool1d(POOL)]


class _UnitLoudness(nn.Module):
    """Each clip divided by its RMS: recording levels differ from clip to clip, and a keyword does not depend on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.square().mean(-1, keepdim=True).sqrt().clamp(min=1e-4)


@register_model("m5", modality="audio")
def m5(input_shape, num_classes, *, sample_rate: int = 16000, width: int = 32):
    """M5 raw-waveform CNN: four conv-BN-ReLU-pool blocks (the first 10 ms wide), global average pool, linear.

    Dai et al., "Very Deep Convolutional Neural Networks for Raw Waveforms", ICASSP 2017 (M5, the Speech Commands
    model of MEA-Defender). The first convolution spans 10 ms with a stride of a twentieth of that (the paper's
    80 samples, stride 4, at 8 kHz); batch norm after every convolution. Unlike the paper, each clip is first
    scaled to unit RMS (on the spoken-keywords stand-in this lifted unseen-voice accuracy from about 75 to 80-85 %).
    Parameters: ``sample_rate`` = 16000, ``width`` = 32 channels in the first two convolutions, doubling twice (the
    paper's 128, 128, 256, 512).
    """
    channels, samples = input_shape
    kernel = sample_rate // 100
    stride = max(1, kernel // 20)
    if (samples - kernel) // stride + 1 < POOL**4:
        raise InvalidArgument(f"m5: {samples} samples at {sample_rate} Hz are too short for its four max-pools of 4")
    widths = (width, width, 2 * width, 4 * width)
    layers = [_UnitLoudness(), *_conv_block(channels, widths[0], kernel, stride)]
    for cin, cout in pairwise(widths):
        layers += _conv_block(cin, cout, 3)
    features = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten())
    return Backbone(features, nn.Sequential(nn.Linear(widths[-1], num_classes)))


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """n_mels × (n_fft // 2 + 1) triangular filters on the HTK mel scale (no area normalisation), for a power
    spectrogram's bins: the filters of ``torchaudio.functional.melscale_fbanks(..., norm=None, mel_scale="htk")``."""
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    low, high = (2595 * math.log10(1 + f / 700) for f in (f_min, f_max))
    edges = 700 * (10 ** (torch.linspace(low, high, n_mels + 2, dtype=torch.float64) / 2595) - 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.minimum(rising, falling).clamp(min=0).float()


class LogMel(nn.Module):
    """N × C × samples waveforms → N × C × mels × frames log-mel energies (25 ms Hann windows every 10 ms)."""

    def __init__(self, sample_rate: int, n_mels: int):
        super().__init__()
        self.win = sample_rate * 25 // 1000
        self.hop = sample_rate // 100
        self.n_fft = 1 << (self.win - 1).bit_length()  # the next power of two
        # derived from the parameters, so left out of the model file
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        fbank = mel_filterbank(self.n_fft, n_mels, sample_rate, 20.0, sample_rate / 2)
        self.register_buffer("fbank", fbank, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, samples = x.shape
        spec = torch.stft(
            x.reshape(n * c, samples), self.n_fft, self.hop, self.win, self.window, center=True, return_complex=True
        )
        mel = self.fbank @ spec.abs().square()  # (N·C) × mels × frames
        return torch.log(mel + 1e-6).reshape(n, c, *mel.shape[1:])


class _MaxOverTime(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(-1)


@register_model("logmel-cnn", modality="audio")
def logmel_cnn(
    input_shape, num_classes, *, sample_rate: int = 16000, n_mels: int = 40, width: int = 16, hidden: int = 128
):
    """Log-mel spectrogram (computed in torch), three conv-BN-ReLU-pool blocks, max over time, FC, linear.

    Sainath and Parada, "Convolutional Neural Networks for Small-footprint Keyword Spotting", Interspeech 2015: 40
    log-mel filterbank energies from 25 ms windows every 10 ms, classified by a small CNN; the convolutions here
    are a VGG-style stack of 3 × 3 ones rather than the paper's cnn-trad-fpool3. Parameters: ``sample_rate`` =
    16000, ``n_mels`` = 40, ``width`` = 16 channels in the first block, doubling in each of the next two,
    ``hidden`` = 128 units in the fully connected layer (dropout 0.5 after it). Each clip's log-mel energies are
    standardised on their own; the features are the maximum over time (a keyword may start anywhere in the clip)
    of every channel in every remaining frequency band (where the energy lies in frequency tells keywords apart).
    """
    channels, samples = input_shape
    frames = 1 + samples // (sample_rate // 100)
    if min(n_mels, frames) < 8:  # three max-pools of 2
        raise InvalidArgument(f"logmel-cnn needs at least 8 mel bands and 8 frames of 10 ms, got {n_mels} and {frames}")
    # each clip's log energies are standardised on their own: a gain is an offset in the log domain, and recording
    # levels differ from clip to clip
    layers: list[nn.Module] = [LogMel(sample_rate, n_mels), nn.InstanceNorm2d(channels)]
    cin = channels
    for cout in (width, 2 * width, 4 * width):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        cin = cout
    features = nn.Sequential(*layers, _MaxOverTime(), nn.Flatten())
    flat = cin * (n_mels // 8)
    classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, num_classes))
    return Backbone(features, classifier)
