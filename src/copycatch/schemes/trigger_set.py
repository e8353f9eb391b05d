"""Plain trigger-set watermark: the baseline of the margin paper (its Eq. 1), in the style of Adi et al. 2018.

Paper: Kim et al., "Margin-based Neural Network Watermarking", ICML 2023, Eq. 1 and Table 1: train on the task data
plus a trigger set of held-out inputs with secret wrong labels, with no adversarial margin. The margin paper shows
this mark does not survive functionality stealing; it is here as the baseline the margin scheme improves on.

Triggers and verification are exactly the margin scheme's (:class:`~copycatch.schemes.margin.MarginWatermark`,
reused by subclassing): ``n_triggers`` owner-holdout inputs quantised to uint8, each with a secret label drawn
uniformly from the C−1 wrong classes; every training step adds λ × the cross-entropy of ``trigger_batch``
triggers drawn with replacement. Verification: among the m triggers the suspect misclassifies, hits on the
secret label ~ Binomial(m, 1/(C−1)) for any suspect independent of the key — exact, label-only.

Parameters (defaults):
    n_triggers (100): size of the trigger set (as the margin scheme).
    label_strategy ("random"): "random" wrong label (exact null), or "highest"/"lowest" confidence wrong label of
        a clean reference model (approximate null, flagged in the evidence), as the margin scheme.
    lam (None): weight of the trigger loss (Eq. 1 weighs both terms equally, λ = 1); None derives it from the data
        size as the margin scheme does (the same per-trigger ``exposure``; λ = 1 costs 15 points on 4,000 images).
    exposure (8.0): per-trigger total weight of that rule.
    trigger_batch (25): triggers drawn per training step (as the margin scheme).

Text and audio. The margin scheme's triggers are owner-holdout images; on text and audio the triggers are the
paper-style out-of-distribution key of Adi et al. instead (their abstract images with random labels): for text,
sentences of uniformly drawn in-vocabulary words (never ``<pad>`` or ``<unk>``) with the lengths of random owner
training texts; for audio, clips of a tone at a random frequency plus a white-noise burst at a random onset, length
and gain (not speech), stored as 16-bit samples. Such a trigger has no true class, so each gets a secret decoy
class d drawn uniformly and a secret label uniform over the C−1 other classes, stored as ``trigger_true`` and
``trigger_label``: for a suspect independent of the key, among the triggers it does not answer d, hits on the
secret label are still exactly Binomial(m, 1/(C−1)), the image version's null and test. Only ``label_strategy``
"random" applies (the other two rank wrong labels against a true class, which these triggers lack).

Deviations: Eq. 1 takes an expectation over the trigger set; like the margin scheme's code we sample
``trigger_batch`` triggers per step instead of mixing them into the data.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from ..core.errors import InvalidArgument
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..data.base import Splits, to_float
from ..data.vocabulary import PAD_ID, UNK_ID
from ..models.base import Classifier, create_for
from ..models.train import TrainConfig, TrainHook, TrainState, fit
from .base import Embedding, register_scheme
from .margin import MarginWatermark, check_trigger_weight, resolved_weight


class TriggerHook(TrainHook):
    """Adds λ·CE(h(x_q), y_q) on ``trigger_batch`` triggers to every step's loss (Eq. 1, no ascent)."""

    state_attrs = ("generator",)

    def __init__(self, trigger_x: torch.Tensor, trigger_y: torch.Tensor, lam: float, trigger_batch: int):
        self.trigger_x, self.trigger_y = trigger_x, trigger_y
        self.lam, self.trigger_batch = lam, trigger_batch
        self.generator: torch.Generator | None = None

    def on_start(self, state: TrainState) -> None:
        self.trigger_x, self.trigger_y = self.trigger_x.to(state.device), self.trigger_y.to(state.device)
        self.generator = torch.Generator().manual_seed(state.config.seed + 7919)

    def extra_loss(self, state, x, y, logits, loss):
        pick = torch.randint(len(self.trigger_x), (self.trigger_batch,), generator=self.generator).to(state.device)
        return loss + self.lam * F.cross_entropy(state.model(self.trigger_x[pick]), self.trigger_y[pick])


@register_scheme
class TriggerSetWatermark(MarginWatermark):
    """Plain trigger set (margin paper's Eq. 1 baseline): wrong-label held-out triggers, no margin."""

    name = "trigger-set"
    modalities: ClassVar[tuple[str, ...]] = ("image", "text", "audio")
    tiny_params: ClassVar[dict[str, Any]] = {"n_triggers": 40, "trigger_batch": 10}

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "trigger-set scheme"
        n_triggers: int = 100
        label_strategy: Literal["random", "highest", "lowest"] = "random"
        lam: float | None = None
        exposure: float = 8.0
        trigger_batch: int = 25

        def validate(self) -> None:
            if self.n_triggers < 1:
                raise InvalidArgument(f"n_triggers must be >= 1, got {self.n_triggers}")
            check_trigger_weight(self)

    def embed(
        self,
        model: Classifier,
        splits: Splits,
        *,
        train: TrainConfig | None = None,
        progress: bool | None = None,
        reference: Classifier | None = None,
    ) -> Embedding:
        """Train ``model`` (from its current weights) on owner_train plus the trigger set."""
        train = train or TrainConfig()
        generator = self.key_generator(train.seed, 104729)
        info: dict[str, Any] = {}
        if self.params.label_strategy != "random" and reference is None:
            reference = create_for(model.arch, model, seed=train.seed, **model.arch_kwargs)
            info["reference_training"] = fit(
                reference, splits.owner_train, train, progress=progress, desc="reference model"
            ).to_dict()
        if splits.modality == "image":
            x_u8, true, labels = self.make_trigger_set(splits, generator, reference)
        else:
            x_u8, true, labels = self.make_ood_trigger_set(splits, generator)
        params = resolved_weight(self.params, len(splits.owner_train), train)
        hook = TriggerHook(to_float(x_u8), labels, params.lam, params.trigger_batch)
        info["training"] = fit(
            model, splits.owner_train, train, hooks=[hook], progress=progress, desc="embed trigger set"
        ).to_dict()
        key = Key(
            scheme=self.name,
            params=params.to_dict(),
            tensors={"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
            meta=self.key_meta(splits, model, train=train.to_dict()),
        )
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        return Embedding(model, key, info)

    def make_ood_trigger_set(
        self, splits: Splits, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(out-of-distribution inputs as the data stores them, secret decoy classes, secret labels) for text or
        audio; see the module docstring."""
        p = self.params
        if p.label_strategy != "random":
            raise InvalidArgument(
                f"label_strategy={p.label_strategy!r} ranks wrong labels against a trigger's true class; "
                f"{splits.modality} triggers are out-of-distribution and have none: use 'random'"
            )
        n = p.n_triggers
        if splits.modality == "text":
            x = _random_sentences(splits, n, generator)
        else:
            x = _noise_clips(splits.input_shape, splits.sample_rate, n, generator)  # audio splits carry their rate
        c = splits.num_classes
        decoy = torch.randint(c, (n,), generator=generator)
        return x, decoy, (decoy + torch.randint(1, c, (n,), generator=generator)) % c

    def verification_inputs(self, key: Key) -> torch.Tensor:
        return to_float(key["trigger_x"])  # uint8 pixels → x / 255 as the margin scheme; ids and samples as stored


def _random_sentences(splits: Splits, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` texts of uniformly drawn vocabulary words, each as long as a random owner training text (>= 1 word)."""
    vocabulary = splits.vocabulary
    if vocabulary is None or len(vocabulary) <= UNK_ID + 1:
        raise InvalidArgument("text triggers draw words from the owner's vocabulary, which holds none")
    stored = splits.owner_train.stored
    lengths = (stored != PAD_ID).sum(1)[torch.randint(len(stored), (n,), generator=generator)].clamp(min=1)
    words = torch.randint(UNK_ID + 1, len(vocabulary), (n, stored.shape[1]), generator=generator)
    return torch.where(torch.arange(stored.shape[1]) < lengths[:, None], words, PAD_ID)


def _noise_clips(shape: tuple[int, ...], rate: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` int16 clips: a tone of 100 Hz to a third of the sample rate plus a white-noise burst at a random onset
    and length, each at a random gain: sounds no keyword recording contains."""
    samples = shape[-1]
    t = torch.arange(samples, dtype=torch.float64) / rate
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    freq = 100 * (rate / 300) ** u[:, 0:1]  # log-uniform in [100, rate / 3] Hz
    tone = (0.05 + 0.45 * u[:, 1:2]) * torch.sin(2 * math.pi * freq * t + 2 * math.pi * u[:, 2:3])
    onset = u[:, 3:4] * samples * 0.8
    burst = (torch.arange(samples) >= onset) & (torch.arange(samples) < onset + samples * (0.1 + 0.4 * u[:, 4:5]))
    noise = (0.05 + 0.45 * u[:, 5:6]) * torch.randn(n, samples, generator=generator, dtype=torch.float64) * burst
    clips = ((tone + noise).clamp(-1, 1) * 32767).round().to(torch.int16)
    return clips.reshape(n, *shape)
