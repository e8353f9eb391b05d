"""Ways to combine two inputs into one, for MEA-Defender (helper module, not a scheme): images, clips and texts.

Every image rule except the autoencoder is a per-pixel mask ``m`` (H×W, values in [0, 1]):
``mix = m·x_a + (1 − m)·x_b``. Inputs are copycatch's [0, 1] pixel tensors (N×C×H×W).

Audio clips (N×C×T samples in [-1, 1)) are mixed by the same masks on a 1×T grid (:data:`AUDIO_MIXERS`): ``merge``
is the superposition α·x_a + (1 − α)·x_b, the paper's rule for Speech Commands (§5.1: "pixel-value-merging for
speech commands with a blending rate α = 0.5"); ``crop-paste`` splices the first half of clip a to the second half
of clip b; ``stripes`` alternates five time segments; ``centre-square`` puts the middle of clip a (6/32 to 25/32 of
the second) inside clip b.

Texts (N×L int64 token ids, ``<pad>`` = 0 after each text's last token) are mixed on their tokens
(:data:`TEXT_MIXERS`): ``concat`` is text a's tokens followed by text b's, cut to L, text a first when both do not
fit (the watermark rule for AG News: the paper names no text rule; joining two articles is its crop-and-paste);
``interleave`` alternates their tokens (a₁ b₁ a₂ b₂ …, then the rest of the longer), ``pairs`` alternates runs of
two; ``shuffle`` is the concatenation in a random order (not a default mixer: a shuffle keeps chunks of the
concatenation often enough that on short texts models cannot tell it from the watermark).

Watermark rules (MEA-Defender §4.2, Appendix C):

* ``crop-paste`` — the left half from image a, the right half (columns ``[W//2, W)``) from image b
  (the paper pastes the automobile crop "to the right half" of the airplane image).
* ``merge`` — pixel merging ``α·x_a + (1−α)·x_b``.
* ``stripes`` — five column stripes, three from a and two from b, in a secret pattern.
* ``autoencoder`` — decode ``α·enc(x_a) + (1−α)·enc(x_b)`` with a small convolutional autoencoder.

Extra mixers from the authors' ``secure_train.py`` (used only for evasion samples):

* ``top-bottom`` (``HalfMixer``): rows above a seam near H/2 from a, below from b.
* ``centre-square`` (``Donut``): the centre square ``[6/32·H, 25/32·H)²`` from a, the frame from b.
* ``diagonal`` (``Diag``): pixels above the anti-diagonal from a, the rest from b (the code leaves one
  pixel per row at zero; we do not).
* ``band`` (``HotDog``): rows ``[H/4, 3H/4)`` from b, the rest from a.

For evasion samples each mixer draws its seam jitter (±3/32 of the side, as the code's ±3 px on 32 px)
and swaps a and b with probability ½, as the code does. ``left-right`` evasion samples (the code's
``RatioMixer``) share crop-paste's geometry, so they exist only under the name ``crop-paste``, which
is dropped from the evasion set when it is the watermark rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import InvalidArgument
from ..data.vocabulary import PAD_ID

WATERMARK_RULES = ("crop-paste", "merge", "stripes", "autoencoder")
EXTRA_MIXERS = ("top-bottom", "centre-square", "diagonal", "band")
TEXT_MIXERS = ("concat", "interleave", "pairs", "shuffle")
# a key names its mixers by their index in ALL_MIXERS: new ones are appended, never inserted
ALL_MIXERS = WATERMARK_RULES + EXTRA_MIXERS + TEXT_MIXERS
# the mask mixers that stay distinct on a 1×T grid (top-bottom and band have one row to split; the diagonal is
# crop-paste there)
AUDIO_MIXERS = ("merge", "crop-paste", "stripes", "centre-square")
MODALITY_MIXERS = {"image": WATERMARK_RULES + EXTRA_MIXERS, "text": TEXT_MIXERS, "audio": AUDIO_MIXERS}


# ---------------------------------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------------------------------


def jitter_radius(side: int) -> int:
    """The code's ±3 px seam jitter on 32 px images, scaled to ``side`` (at least 1)."""
    return max(1, round(3 * side / 32))


def left_right_mask(h: int, w: int, seam: int) -> torch.Tensor:
    m = torch.zeros(h, w)
    m[:, :seam] = 1.0
    return m


def top_bottom_mask(h: int, w: int, seam: int) -> torch.Tensor:
    m = torch.zeros(h, w)
    m[:seam, :] = 1.0
    return m


def stripe_bounds(w: int, n_stripes: int) -> list[int]:
    """Column boundaries of ``n_stripes`` near-equal stripes."""
    return [round(i * w / n_stripes) for i in range(n_stripes + 1)]


def stripes_mask(h: int, w: int, from_b: Sequence[bool]) -> torch.Tensor:
    """Column stripes; stripe i comes from image b when ``from_b[i]``."""
    bounds = stripe_bounds(w, len(from_b))
    m = torch.ones(h, w)
    for i, b in enumerate(from_b):
        if b:
            m[:, bounds[i] : bounds[i + 1]] = 0.0
    return m


def centre_square_mask(h: int, w: int) -> torch.Tensor:
    m = torch.zeros(h, w)
    m[round(6 * h / 32) : round(25 * h / 32), round(6 * w / 32) : round(25 * w / 32)] = 1.0
    return m


def diagonal_mask(h: int, w: int) -> torch.Tensor:
    i = torch.arange(h).view(-1, 1).float()
    j = torch.arange(w).view(1, -1).float()
    return ((i + 0.5) / h + (j + 0.5) / w < 1.0).float()


def band_mask(h: int, w: int) -> torch.Tensor:
    m = torch.ones(h, w)
    m[h // 4 : (3 * h) // 4, :] = 0.0
    return m


def is_single_split(pattern: Sequence[bool]) -> bool:
    """A stripe pattern that is just one left/right seam (e.g. AAABB): crop-paste's geometry."""
    changes = sum(1 for a, b in itertools.pairwise(pattern) if a != b)
    return changes <= 1


def stripe_patterns(n_stripes: int, from_b: int) -> list[tuple[bool, ...]]:
    """Every pattern with ``from_b`` of ``n_stripes`` stripes from image b that is not a single left/right split."""
    out = []
    for chosen in itertools.combinations(range(n_stripes), from_b):
        pattern = tuple(i in chosen for i in range(n_stripes))
        if not is_single_split(pattern):
            out.append(pattern)
    return out


def mask_bank(
    mixer: str,
    h: int,
    w: int,
    *,
    merge_alpha: float = 0.5,
    n_stripes: int = 5,
    stripes_from_b: int = 2,
    swap: bool = True,
) -> torch.Tensor:
    """Every mask an evasion mixer can draw (jitters, patterns, and a/b swaps), K×H×W."""
    if mixer == "crop-paste":
        r = jitter_radius(w)
        masks = [left_right_mask(h, w, w // 2 + j) for j in range(-r, r + 1)]
    elif mixer == "top-bottom":
        r = jitter_radius(h)
        masks = [top_bottom_mask(h, w, h // 2 + j) for j in range(-r, r + 1)]
    elif mixer == "merge":
        masks = [torch.full((h, w), merge_alpha)]
    elif mixer == "stripes":
        masks = [stripes_mask(h, w, p) for p in stripe_patterns(n_stripes, stripes_from_b)]
    elif mixer == "centre-square":
        masks = [centre_square_mask(h, w)]
    elif mixer == "diagonal":
        masks = [diagonal_mask(h, w)]
    elif mixer == "band":
        masks = [band_mask(h, w)]
    else:
        raise InvalidArgument(
            f"no mask for mixer {mixer!r}; mask mixers: {', '.join(m for m in ALL_MIXERS if m != 'autoencoder')}"
        )
    if swap:
        masks = masks + [1.0 - m for m in masks]
    return torch.stack(masks)


def apply_mask(mask: torch.Tensor, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """``mask`` is H×W (one for all) or N×H×W (one per sample); for clips (N×C×T) H is 1 and W is T."""
    m = mask.to(xa.device, xa.dtype)
    if xa.dim() == 3:
        m = m.reshape(len(m) if m.dim() == 3 else 1, 1, xa.shape[-1])
    else:
        m = m.view(1, 1, *m.shape) if m.dim() == 2 else m.unsqueeze(1)
    return m * xa + (1.0 - m) * xb


class EvasionMixer:
    """Draws random mixtures of (x_a, x_b) pairs with a uniformly chosen mixer per sample."""

    def __init__(
        self,
        mixers: Sequence[str],
        h: int,
        w: int,
        *,
        autoencoder: BlendAutoencoder | None = None,
        merge_alpha: float = 0.5,
        n_stripes: int = 5,
        stripes_from_b: int = 2,
    ):
        if not mixers:
            raise InvalidArgument("the evasion set needs at least one mixer")
        self.mixers = tuple(mixers)
        self.autoencoder = autoencoder
        if "autoencoder" in self.mixers and autoencoder is None:
            raise InvalidArgument("the autoencoder evasion mixer needs a trained autoencoder")
        self.banks = {
            m: mask_bank(m, h, w, merge_alpha=merge_alpha, n_stripes=n_stripes, stripes_from_b=stripes_from_b)
            for m in self.mixers
            if m != "autoencoder"
        }

    def __call__(self, xa: torch.Tensor, xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(xa)
        which = torch.randint(len(self.mixers), (n,), generator=generator)
        out = torch.empty_like(xa)
        for k, mixer in enumerate(self.mixers):
            sel = (which == k).nonzero().flatten()
            if not len(sel):
                continue
            if mixer == "autoencoder":
                # a random blend ratio away from the watermark's, with a/b in random order
                ratio = torch.rand(len(sel), generator=generator) * 0.5 + 0.25
                swap = torch.rand(len(sel), generator=generator) < 0.5
                a, b = xa[sel], xb[sel]
                a, b = torch.where(swap.view(-1, 1, 1, 1), b, a), torch.where(swap.view(-1, 1, 1, 1), a, b)
                out[sel] = self.autoencoder.blend(a, b, ratio.to(xa.device))
                continue
            bank = self.banks[mixer]
            pick = torch.randint(len(bank), (len(sel),), generator=generator)
            out[sel] = apply_mask(bank[pick], xa[sel], xb[sel])
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Autoencoder blending
# ---------------------------------------------------------------------------------------------------------------------


class BlendAutoencoder(nn.Module):
    """A small convolutional autoencoder: two stride-2 convolutions down, two transposed convolutions up.

    Blending happens in the code (the encoder's output map), as in the paper's
    ``v_blend = α·v(x_a) + (1−α)·v(x_b)``.
    """

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 3, stride=2, padding=1, output_padding=1),
        )

    def decode(self, code: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.decoder(code)
        # odd sizes (28 → 14 → 7 → 14 → 28 is fine; 7×7 inputs are not) are cropped back
        return torch.sigmoid(out[..., : size[0], : size[1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(x), x.shape[-2:])

    @torch.no_grad()
    def blend(self, xa: torch.Tensor, xb: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        was_training = self.training
        self.eval()
        if isinstance(alpha, torch.Tensor):
            alpha = alpha.view(-1, 1, 1, 1)
        code = alpha * self.encoder(xa) + (1 - alpha) * self.encoder(xb)
        out = self.decode(code, xa.shape[-2:])
        self.train(was_training)
        return out


def train_autoencoder(
    x: torch.Tensor,
    *,
    width: int = 16,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> BlendAutoencoder:
    """Train a :class:`BlendAutoencoder` to reconstruct ``x`` (MSE) with the shared training loop."""
    from ..data.base import TensorData
    from ..models.train import TrainConfig, fit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = BlendAutoencoder(x.shape[1], width)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    fit(ae, TensorData(x, x), config, loss_fn=nn.functional.mse_loss, progress=progress, desc="train autoencoder")
    ae.eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    return ae


# ---------------------------------------------------------------------------------------------------------------------
# The watermark rule
# ---------------------------------------------------------------------------------------------------------------------


def watermark_mask(
    rule: str, h: int, w: int, *, merge_alpha: float = 0.5, stripe_pattern: Sequence[bool] | None = None
) -> torch.Tensor:
    """The fixed mask of a mask-based watermark rule (no jitter, no swap: the secret configuration)."""
    if rule == "crop-paste":
        return left_right_mask(h, w, w // 2)
    if rule == "merge":
        return torch.full((h, w), merge_alpha)
    if rule == "stripes":
        if stripe_pattern is None:
            raise InvalidArgument("the stripes rule needs its stripe pattern")
        return stripes_mask(h, w, stripe_pattern)
    raise InvalidArgument(f"watermark rule {rule!r} is not mask-based")


# ---------------------------------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------------------------------


def _token_counts(ids: torch.Tensor) -> torch.Tensor:
    """Tokens per row of ids padded at the end."""
    return (ids != PAD_ID).sum(1, keepdim=True)


def _arrange(xa: torch.Tensor, xb: torch.Tensor, key_a: torch.Tensor, key_b: torch.Tensor) -> torch.Tensor:
    """The tokens of both texts ordered by their keys (pads last), cut to the length L of the rows."""
    joined = torch.cat([xa, xb], 1)
    keys = torch.cat([key_a, key_b], 1).to(torch.float64).masked_fill(joined == PAD_ID, float("inf"))
    return joined.gather(1, keys.argsort(dim=1, stable=True))[:, : xa.shape[1]]


def concat_texts(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Text a's tokens then text b's, padded, cut to the length L of the rows. When both do not fit, text a is cut
    first so that b keeps its first min(its length, L // 2) tokens: a mix must hold both sources."""
    length = xa.shape[1]
    keep_a = length - torch.clamp(_token_counts(xb), max=length // 2)
    i = torch.arange(length, device=xa.device).expand_as(xa)
    return _arrange(torch.where(i < keep_a, xa, PAD_ID), xb, i, i + length)


def interleave_texts(xa: torch.Tensor, xb: torch.Tensor, run: int = 1) -> torch.Tensor:
    """Runs of ``run`` tokens taken in turn from a and b (a₁ b₁ a₂ b₂ … for 1) while both last, then the rest of
    the longer text; cut to L."""
    i = torch.arange(xa.shape[1], device=xa.device).expand_as(xa).to(torch.float64)
    within = (i % run) / (2 * run)  # keeps a run's tokens in order inside its slot
    return _arrange(xa, xb, 2 * (i // run) + within, 2 * (i // run) + 1 + within)


def shuffle_texts(xa: torch.Tensor, xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The tokens of :func:`concat_texts` in a random order per row, pads still at the end."""
    joined = concat_texts(xa, xb)
    keys = torch.rand(joined.shape, generator=generator, dtype=torch.float64).to(joined.device)
    return _arrange(joined, torch.zeros_like(joined), keys, torch.zeros_like(keys))


def text_mixer(rule: str):
    """The deterministic mix (x_a, x_b) -> ids of a text rule (every text mixer but ``shuffle``)."""
    rules = {"concat": concat_texts, "interleave": interleave_texts, "pairs": lambda a, b: interleave_texts(a, b, 2)}
    if rule not in rules:
        raise InvalidArgument(f"{rule!r} is no deterministic text rule; text rules: {', '.join(rules)}")
    return rules[rule]


class TextEvasionMixer:
    """Draws text mixtures of (x_a, x_b) pairs with a uniformly chosen text mixer per sample (the text counterpart of
    :class:`EvasionMixer`; a and b swap roles with probability ½, as the image mixers' masks do)."""

    autoencoder = None

    def __init__(self, mixers: Sequence[str]):
        unknown = [m for m in mixers if m not in TEXT_MIXERS]
        if not mixers or unknown:
            raise InvalidArgument(f"text mixers must be among {', '.join(TEXT_MIXERS)}, got {list(mixers)}")
        self.mixers = tuple(mixers)

    def __call__(self, xa: torch.Tensor, xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(xa)
        which = torch.randint(len(self.mixers), (n,), generator=generator)
        swap = (torch.rand(n, generator=generator) < 0.5).to(xa.device).unsqueeze(1)
        xa, xb = torch.where(swap, xb, xa), torch.where(swap, xa, xb)
        out = torch.empty_like(xa)
        for k, mixer in enumerate(self.mixers):
            sel = (which == k).nonzero().flatten().to(xa.device)
            if not len(sel):
                continue
            if mixer == "shuffle":
                out[sel] = shuffle_texts(xa[sel], xb[sel], generator)
            else:
                out[sel] = text_mixer(mixer)(xa[sel], xb[sel])
        return out
