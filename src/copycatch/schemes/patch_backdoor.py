"""Patch backdoor watermark (Zhang et al., AsiaCCS 2018 "content" marks; Gu et al., BadNets 2017), a baseline.

Papers (cited by the frontier-stitching and DynaMarks papers as refs. [39]/[31] and [8]): J. Zhang et al.,
"Protecting intellectual property of deep neural networks with watermarking", AsiaCCS 2018; T. Gu et al., "BadNets:
identifying vulnerabilities in the machine learning model supply chain", 2017.

Embedding. A small secret patch (a random binary pattern, ``patch_size`` pixels square, stamped over the pixels
in a corner of the image as in BadNets) is stamped on training inputs, which are relabelled with a secret
target; every training step adds λ × the cross-entropy of ``poison_batch`` stamped copies of the batch's inputs.
The key is ``n_key`` owner-holdout inputs (never trained on) stamped with the patch, with their targets.

Why the targets are drawn per source class. With the classic single target t, the only exact statement about
an independent model is about t itself: a model whose answers on stamped inputs lean to some class (a patch can
look like a bag or a sandal) hits t on almost every stamped input whenever t happens to be that class, which it
is with probability 1/C. Hits among stamped inputs are therefore *not* Binomial at any fixed rate (the inputs
share one t), and the exact randomisation test over t can never give a p-value below 1/C. So each source class
y gets its own secret target π(y), drawn uniformly from the C−1 other classes, independently (BadNets'
"all-to-all" attack with a secret random mapping); with ``n_patches`` > 1 each patch (in its own corner) has its
own mapping.

Verification (exact). The suspect labels the stamped key inputs; group them by (patch, source class). Null
hypothesis: the suspect's answers do not depend on the secret mapping. Then, given its answers, every group's
target is still a uniform draw from its C−1 wrong classes, independently, so the total number of hits is the
sum over groups of the count of answers equal to an independent uniform wrong class; its distribution is
computed exactly by convolution (``copycatch.core.stats.independent_choices_greater``). Labels only are needed. The
smallest attainable p-value is (C−1)^−G for G groups: 2.9e-10 for 10 classes and one patch.

Parameters (defaults):
    n_key (100): stamped owner-holdout inputs queried at verification.
    patch_size (4): side of the square patch in pixels (BadNets uses a few pixels in a corner).
    n_patches (1): patches, each in its own corner (bottom-right, top-left, top-right, bottom-left), 1-4.
    poison_batch (16): stamped inputs added to every training step (~11 % of a 128 batch).
    lam (0.3): weight of the backdoor loss. The stamped copies are fresh inputs every step, so unlike a fixed trigger
        set their weight need not shrink with the data; 1.0 cost 2-3.7 accuracy points on 4,000-10,000 owner images
        and 0.3 keeps the mark through pruning and fine-tuning (benchmarks/README.md, "Proof after extraction").

Deviations: per-source-class secret targets instead of one target (see above); the poisoned inputs are stamped
copies of each batch's inputs added to the step's loss, not relabelled members of the training set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..core.stats import independent_choices_greater
from ..data.base import Splits
from ..models.base import Classifier
from ..models.train import TrainConfig, TrainHook, TrainState, fit
from .base import Embedding, Scheme, register_scheme

CORNERS = ("bottom-right", "top-left", "top-right", "bottom-left")


def stamp(x: torch.Tensor, patches: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Copies of ``x`` (N×C×H×W in [0, 1]) with patch ``which[n]`` (patches: J×C×k×k in [0, 1]) in its corner."""
    out = x.clone()
    k, (h, w) = patches.shape[-1], x.shape[-2:]
    for j in range(len(patches)):
        rows = (which == j).nonzero().flatten()
        if not len(rows):
            continue
        corner = CORNERS[j]
        top = h - k if corner.startswith("bottom") else 0
        left = w - k if corner.endswith("right") else 0
        out[rows, :, top : top + k, left : left + k] = patches[j].to(out.dtype)
    return out


class BackdoorHook(TrainHook):
    """Adds λ·CE on stamped copies of the batch's first ``poison_batch`` inputs, labelled with their targets."""

    state_attrs = ("generator",)

    def __init__(self, patches: torch.Tensor, targets: torch.Tensor, params: PatchBackdoor.Params):
        self.patches, self.targets, self.params = patches, targets, params
        self.generator: torch.Generator | None = None

    def on_start(self, state: TrainState) -> None:
        self.patches, self.targets = self.patches.to(state.device), self.targets.to(state.device)
        self.generator = torch.Generator().manual_seed(state.config.seed + 2038074743)

    def extra_loss(self, state, x, y, logits, loss):
        n = min(self.params.poison_batch, len(x))
        which = torch.randint(len(self.patches), (n,), generator=self.generator).to(state.device)
        poisoned = stamp(x[:n], self.patches, which)
        return loss + self.params.lam * F.cross_entropy(state.model(poisoned), self.targets[which, y[:n]])


@register_scheme
class PatchBackdoor(Scheme):
    """Patch backdoor (Zhang et al. 2018 / BadNets): a secret patch sends each source class to a secret target."""

    name = "patch-backdoor"
    acts_at = "training"
    needs = "labels"
    default_arch = "cnn-small"
    tiny_params: ClassVar[dict[str, Any]] = {"n_key": 80, "n_patches": 2, "patch_size": 3}
    strength = "lam"
    per_item = ("key_x", "key_true", "key_patch", "key_label")
    larger_key = "key inputs covering more (patch, source class) groups (n_key, n_patches)"
    null_hypothesis = (
        "The suspect's answers do not depend on the secret target mapping: each (patch, source class) target was "
        "drawn uniformly from the C-1 other classes, so total hits = sum over groups of the count of answers equal "
        "to an independent uniform wrong class."
    )

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "patch-backdoor scheme"
        n_key: int = 100
        patch_size: int = 4
        n_patches: int = 1
        poison_batch: int = 16
        lam: float = 0.3

        def validate(self) -> None:
            if self.n_key < 1:
                raise InvalidArgument(f"n_key must be >= 1, got {self.n_key}")
            if self.patch_size < 1:
                raise InvalidArgument(f"patch_size must be >= 1, got {self.patch_size}")
            if not 1 <= self.n_patches <= len(CORNERS):
                raise InvalidArgument(f"n_patches must be between 1 and {len(CORNERS)}, got {self.n_patches}")
            if self.poison_batch < 1:
                raise InvalidArgument(f"poison_batch must be >= 1, got {self.poison_batch}")
            if self.lam < 0:
                raise InvalidArgument(f"lam must be >= 0, got {self.lam}")

    # -- embed -----------------------------------------------------------------------------------------------------
    def embed(
        self, model: Classifier, splits: Splits, *, train: TrainConfig | None = None, progress: bool | None = None
    ) -> Embedding:
        """Train ``model`` (from its current weights) on owner_train with the backdoor loss."""
        p = self.params
        train = train or TrainConfig()
        channels, height, width = splits.input_shape
        corners_needed = 2 if p.n_patches > 1 else 1  # several patches sit in opposite corners and must not overlap
        if corners_needed * p.patch_size > min(height, width):
            raise InvalidArgument(
                f"patch_size={p.patch_size} does not fit {p.n_patches} corner(s) of {height}×{width} inputs"
            )
        c = splits.num_classes
        pool = splits.owner_holdout
        if len(pool) < p.n_key:
            raise InvalidArgument(
                f"owner_holdout has {len(pool)} inputs, fewer than n_key={p.n_key}; raise the "
                "holdout fraction or lower n_key"
            )
        generator = self.key_generator(train.seed, 982451653)
        patches = torch.randint(2, (p.n_patches, channels, p.patch_size, p.patch_size), generator=generator)
        patches = (patches * 255).to(torch.uint8)
        # π_j(y): a uniform draw from the C-1 classes other than y, independently per (patch, source class).
        targets = (torch.arange(c) + torch.randint(1, c, (p.n_patches, c), generator=generator)) % c
        pick = torch.randperm(len(pool), generator=generator)[: p.n_key]
        which = torch.randperm(p.n_key, generator=generator) % p.n_patches
        key_x = stamp(pool.subset(pick).x, patches.float() / 255, which)
        key_x = (key_x * 255).round().clamp(0, 255).to(torch.uint8)
        true = pool.y[pick].clone()
        hook = BackdoorHook(patches.float() / 255, targets, p)
        result = fit(model, splits.owner_train, train, hooks=[hook], progress=progress, desc="embed patch backdoor")
        key = Key(
            scheme=self.name,
            params=p.to_dict(),
            tensors={
                "key_x": key_x,
                "key_true": true,
                "key_patch": which,
                "key_label": targets[which, true],
                "targets": targets,
                "patches": patches,
            },
            meta=self.key_meta(splits, model, train=train.to_dict()),
        )
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        return Embedding(model, key, {"training": result.to_dict()})

    # -- verify ----------------------------------------------------------------------------------------------------
    def verification_inputs(self, key: Key) -> torch.Tensor:
        return key["key_x"].float() / 255

    def attainable_p_value(self, key: Key, num_classes: int) -> float:
        """Every stamped input sent to its secret target: each (patch, source class) group's target is then the one
        choice of C−1 that scores its whole group, so p = ``(C−1)^−G`` for the G groups asked."""
        groups = set(zip(key["key_patch"].tolist(), key["key_true"].tolist()))
        return float((num_classes - 1.0) ** -len(groups))

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        true, which, targets = key["key_true"].long(), key["key_patch"].long(), key["targets"].long()
        if len(answers) != len(true):
            raise InvalidArgument(f"{len(answers)} answers for a key of {len(true)} inputs")
        num_classes = answers.shape[1]
        if targets.shape[1] != num_classes:
            raise InvalidArgument(f"key is for {targets.shape[1]} classes, answers have {num_classes}")
        pred = answers.argmax(dim=1)
        scores, chosen = [], []
        for j in range(len(targets)):
            for y in range(num_classes):
                group = (which == j) & (true == y)
                if not group.any():
                    continue
                counts = torch.bincount(pred[group], minlength=num_classes).numpy()
                wrong = [c for c in range(num_classes) if c != y]
                scores.append(counts[wrong])
                chosen.append(wrong.index(int(targets[j, y])))
        hits = int(sum(s[c] for s, c in zip(scores, chosen)))
        p_value = independent_choices_greater(scores, chosen)
        return self.evidence(
            key,
            statistic_name="stamped inputs sent to their secret target",
            statistic=hits,
            p_value=p_value,
            alpha=alpha,
            queries=queries,
            exact=True,
            metrics={
                "hits": hits,
                "key_inputs": len(true),
                "watermark_accuracy": hits / max(len(true), 1),
                "groups": len(scores),
                "kept_true_class": int((pred == true).sum()),
            },
        )
