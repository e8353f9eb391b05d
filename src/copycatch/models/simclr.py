"""SimCLR pre-training of encoders, the augmentations it needs for small grayscale images, and downstream probes.

Paper: T. Chen, S. Kornblith, M. Norouzi and G. Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv 2002.05709): two augmented views of each image go through the encoder ``h`` and
a projection head ``g``; the NT-Xent loss (§2.1, Eq. 1; MEA-Defender's Eq. 2) pulls each view towards its twin and
away from the other 2N − 2 views of the batch. The head is dropped after training: the encoder's output is the
embedding, evaluated by a linear probe (§4.2) trained on labelled data with the encoder frozen.

Training goes through :func:`copycatch.models.train.fit` (seeds, progress bar, checkpoints): the trained module is a
:class:`SimCLRNet` whose forward augments its batch twice and returns the 2N projections; augmentations draw from
the global generator that ``fit`` seeds and checkpoints.

Augmentations (:class:`Augment`, defaults), in torch on N×C×H×W pixels in [0, 1] (no torchvision), for 28×28
grayscale images; SimCLR's colour distortion becomes brightness/contrast jitter:
    min_scale (0.5), max_scale (1.0): area share of the random resized crop; aspect ratio in [3/4, 4/3] (SimCLR's).
    translate (2.0): extra shift in pixels, uniform in ±translate (zeros fill what comes in).
    flip (0.5): probability of a horizontal flip.
    jitter (0.8), brightness (0.2), contrast (0.4): probability of the jitter, ± brightness offset, contrast factor
        in [1 − contrast, 1 + contrast] about the image's mean.
    noise (0.5), noise_std (0.05): probability of additive Gaussian noise and its standard deviation.
    erase (0.25), erase_area (0.02, 0.15): probability of random erasing (Zhong et al., AAAI 2020), the erased
        rectangle's area share range; erased pixels become 0.

:func:`train_simclr` defaults: temperature τ 0.5 (SimCLR's CIFAR-10 value; MEA-Defender does not give its own),
projection head ``dim → dim → proj_dim`` with ``proj_dim`` 64; the optimiser and epochs are the TrainConfig's.
Probes (:func:`train_probe`): standardised embeddings, then a linear layer (or an MLP with ``hidden`` units), full
batch Adam (lr 0.01, weight decay 1e-4, 300 steps), seeded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import InvalidArgument
from ..core.params import Params
from ..data.base import TensorData, to_float
from .base import Classifier
from .encoder import embedding_dim
from .optim import Adam
from .train import EVAL_BATCH, TrainConfig, TrainHook, TrainResult, fit


def nt_xent(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent loss on 2N projections: rows i and i + N are the two views of one image.

    loss = mean over the 2N rows of −log(exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ)), sim the cosine."""
    if z.ndim != 2 or len(z) % 2 or len(z) < 4:
        raise InvalidArgument(f"nt_xent needs 2N×d projections with N >= 2, got shape {tuple(z.shape)}")
    if not temperature > 0:
        raise InvalidArgument(f"temperature must be positive, got temperature={temperature}")
    n = len(z) // 2
    u = F.normalize(z, dim=1)
    logits = u @ u.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    twins = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, twins)


@dataclasses.dataclass(frozen=True)
class Augment(Params):
    """Random views of small grayscale images (see the module docstring for every field and its default)."""

    kind = "augmentation"
    min_scale: float = 0.5
    max_scale: float = 1.0
    translate: float = 2.0
    flip: float = 0.5
    jitter: float = 0.8
    brightness: float = 0.2
    contrast: float = 0.4
    noise: float = 0.5
    noise_std: float = 0.05
    erase: float = 0.25
    erase_area: tuple[float, float] = (0.02, 0.15)

    def validate(self) -> None:
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise InvalidArgument(f"need 0 < min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale}")
        for name in ("flip", "jitter", "noise", "erase"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidArgument(f"{name} is a probability, got {name}={getattr(self, name)}")
        low, high = self.erase_area
        if not 0 < low <= high < 1:
            raise InvalidArgument(f"erase_area must satisfy 0 < low <= high < 1, got erase_area={self.erase_area}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One random view of every image of ``x`` (float pixels in [0, 1], N×C×H×W); ``generator`` None draws from
        the global generator (inside ``fit``, seeded by it)."""
        x = self._crop(x, generator)
        x = self._jitter(x, generator)
        x = self._erase(x, generator)
        return x.clamp(0.0, 1.0)

    def _uniform(self, n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    def _crop(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random resized crop, shift and flip as one affine resampling (``affine_grid``, bilinear)."""
        n, _, h, w = x.shape
        scale = self._uniform(n, self.min_scale, self.max_scale, generator)
        log_ratio = self._uniform(n, math.log(3 / 4), math.log(4 / 3), generator)
        sx = (scale * log_ratio.exp()).sqrt().clamp(max=1.0)
        sy = (scale / log_ratio.exp()).sqrt().clamp(max=1.0)
        cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)
        cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
        cx = cx + self._uniform(n, -self.translate, self.translate, generator) * 2 / w
        cy = cy + self._uniform(n, -self.translate, self.translate, generator) * 2 / h
        flip = torch.where(torch.rand(n, generator=generator) < self.flip, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = sx * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = sy, cy
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = len(x)
        view = (n,) + (1,) * (x.ndim - 1)
        on = (torch.rand(n, generator=generator) < self.jitter).float().view(view).to(x.device)
        factor = self._uniform(n, 1 - self.contrast, 1 + self.contrast, generator).view(view).to(x.device)
        offset = self._uniform(n, -self.brightness, self.brightness, generator).view(view).to(x.device)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        jittered = (x - mean) * factor + mean + offset
        x = on * jittered + (1 - on) * x
        noisy = (torch.rand(n, generator=generator) < self.noise).float().view(view).to(x.device)
        return x + noisy * self.noise_std * torch.randn(x.shape, generator=generator).to(x.device)

    def _erase(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        area = self._uniform(n, *self.erase_area, generator) * h * w
        log_ratio = self._uniform(n, math.log(0.3), math.log(3.3), generator)
        eh = (area * log_ratio.exp()).sqrt().round().clamp(1, h)
        ew = (area / log_ratio.exp()).sqrt().round().clamp(1, w)
        top = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
        left = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
        on = torch.rand(n, generator=generator) < self.erase
        rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        inside = (
            (rows >= top.view(n, 1, 1))
            & (rows < (top + eh).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1))
            & (cols < (left + ew).view(n, 1, 1))
            & on.view(n, 1, 1)
        )
        return x.masked_fill(inside.unsqueeze(1).to(x.device), 0.0)


class SimCLRNet(nn.Module):
    """What :func:`fit` trains for SimCLR: the encoder (a :class:`Classifier`'s ``features``) and a projection head;
    forward returns the 2N projections of two random views of the batch.

    A hook that needs the encoder's features of images of its own (MEA-Defender's watermark, source, prototype and
    evasion images) sets ``extra_inputs`` (batch → images) in ``on_start`` and reads ``extra_features`` in
    ``extra_loss``: in training its images go through the encoder in the same forward as the 2N views, so every batch
    norm normalises them with the statistics of a mostly clean batch, as inference does. A forward of those images alone
    normalises them with the statistics of two or three classes, and a loss learnt under those statistics does not
    hold under the clean running statistics the encoder is served with."""

    def __init__(self, encoder: Classifier, proj_dim: int = 64, augment: Augment | None = None):
        super().__init__()
        self.encoder = encoder
        dim = embedding_dim(encoder)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj_dim))
        self.augment = augment or Augment()
        self.extra_inputs: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.extra_features: torch.Tensor | None = None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = torch.cat([self.augment(x), self.augment(x)])
        if self.extra_inputs is None or not self.training:
            return self.project(views)
        h = self.encoder.features(torch.cat([views, self.extra_inputs(x)]))
        self.extra_features = h[len(views) :]
        return self.head(h[: len(views)])


def train_simclr(
    encoder: Classifier,
    data: TensorData,
    config: TrainConfig | None = None,
    *,
    temperature: float = 0.5,
    proj_dim: int = 64,
    augment: Augment | None = None,
    hooks: Sequence[TrainHook] = (),
    progress: bool | None = None,
    desc: str = "train simclr",
) -> TrainResult:
    """Pre-train ``encoder`` in place with SimCLR on ``data``'s inputs (labels are ignored). ``hooks`` see the
    :class:`SimCLRNet` as ``state.model`` and its projections as ``logits`` (MEA-Defender adds its losses so)."""
    if config is not None and config.batch_size < 2:
        raise InvalidArgument(f"SimCLR needs batches of at least 2 images, got batch_size={config.batch_size}")
    config = config or TrainConfig()
    with torch.random.fork_rng(devices=[]):  # the head's initial weights, without touching the caller's generator
        torch.manual_seed(config.seed + 1)
        net = SimCLRNet(encoder, proj_dim, augment)
    unlabeled = TensorData(data.stored, torch.zeros(len(data), dtype=torch.long))
    result = fit(
        net,
        unlabeled,
        config,
        hooks=hooks,
        loss_fn=lambda z, _: nt_xent(z, temperature),
        progress=progress,
        desc=desc,
    )
    recalibrate_batchnorm(encoder, data.stored, batch_size=config.batch_size)
    encoder.provenance.update(
        {"ssl": "simclr", "temperature": temperature, "proj_dim": proj_dim, "train": config.to_dict()}
    )
    return result


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, *, batch_size: int = EVAL_BATCH) -> None:
    """Re-estimate every batch norm's running statistics as the plain average over clean ``x`` (float or uint8
    pixels) with the final weights, and leave ``model`` in eval mode. Training sees augmented views and moving
    weights; after a short run the running averages still remember their initial values and the eval-mode
    embedding collapses towards a constant, which this removes."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    device = next(model.parameters()).device
    for i in range(0, len(x), batch_size):
        batch = x[i : i + batch_size]
        if len(batch) > 1:  # a batch norm cannot normalise one sample
            model(to_float(batch.to(device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def encode(model: Classifier, x: torch.Tensor, *, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """``model``'s embeddings (its ``features``) of ``x`` (float or uint8 pixels), in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = [
        model.features(to_float(x[i : i + batch_size].to(device))).float().cpu() for i in range(0, len(x), batch_size)
    ]
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, embedding_dim(model))


class Probe(nn.Module):
    """A downstream head on embeddings: standardisation (statistics of the probe's training embeddings), then a
    linear layer or a one-hidden-layer MLP."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int, hidden: int | None = None):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        dim = len(mean)
        self.net = (
            nn.Linear(dim, num_classes)
            if not hidden
            else nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net((z - self.mean) / self.std)


def train_probe(
    z: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    hidden: int | None = None,
    steps: int = 300,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> Probe:
    """A linear probe (``hidden`` None) or MLP head trained full-batch on embeddings ``z`` with labels ``y``."""
    if len(z) != len(y) or len(z) == 0:
        raise InvalidArgument(f"a probe needs as many labels as embeddings (> 0), got {len(z)} and {len(y)}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise InvalidArgument(f"probe labels must be in 0…{num_classes - 1}, got {int(y.min())}…{int(y.max())}")
    z = z.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = Probe(z.mean(0), z.std(0).clamp_min(1e-6), num_classes, hidden)
    optimizer = Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(probe(z), y.long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: Probe, z: torch.Tensor, y: torch.Tensor) -> float:
    return float((probe(z.float()).argmax(1) == y).float().mean()) if len(y) else float("nan")


def attach_linear_probe(model: Classifier, data: TensorData, *, seed: int = 0) -> Probe:
    """Train a linear probe on ``model``'s embeddings of ``data`` and make it the model's downstream head (its
    standardisation and linear layer, :func:`copycatch.models.encoder.downstream_head`), so ``model`` itself
    classifies: served, saved and stolen as any classifier."""
    probe = train_probe(encode(model, data.stored), data.y, model.num_classes, seed=seed)
    norm = [m for m in model.classifier.modules() if isinstance(m, nn.BatchNorm1d)]
    linear = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
    if len(norm) != 1 or len(linear) != 1:
        raise InvalidArgument(f"architecture {model.arch!r} has no encoder downstream head to hold a probe")
    with torch.no_grad():
        norm[0].running_mean.copy_(probe.mean)
        norm[0].running_var.copy_((probe.std**2 - norm[0].eps).clamp_min(0))
        linear[0].weight.copy_(probe.net.weight)
        linear[0].bias.copy_(probe.net.bias)
    return probe


def evaluate_encoder(
    model: Classifier, train: TensorData, test: TensorData, *, hidden: int | None = 128, seed: int = 0
) -> dict[str, Any]:
    """Downstream accuracy of ``model``'s embeddings: a linear probe and an MLP head (``hidden`` units) trained on
    ``train``'s labels, measured on ``test``."""
    z_train, z_test = encode(model, train.stored), encode(model, test.stored)
    linear = train_probe(z_train, train.y, model.num_classes, seed=seed)
    out = {"linear_probe_accuracy": probe_accuracy(linear, z_test, test.y)}
    if hidden:
        mlp = train_probe(z_train, train.y, model.num_classes, hidden=hidden, seed=seed)
        out["mlp_probe_accuracy"] = probe_accuracy(mlp, z_test, test.y)
    return out
