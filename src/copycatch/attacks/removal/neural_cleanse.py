"""Neural Cleanse (Wang et al., IEEE S&P 2019): reverse-engineer a trigger per class, flag outliers, unlearn.

Paper: "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks"; used against watermarks by
MEA-Defender (Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024), ref.
[30], §5.5 and Appendix E. Optimisation schedule as in TrojanZoo's ``model_inspection/neural_cleanse.py``.

Detection. For every label t, find the smallest trigger that sends clean inputs to t: a mask m
(H×W, in [0, 1]) and a pattern p (C×H×W, in [0, 1]) applied as x' = (1 − m)·x + m·p, minimising
CE(f(x'), t) + λ·‖m‖₁ with Adam. Both are parametrised through tanh so they stay in [0, 1]. The
cost λ and the early stop follow the authors' schedule (``_CostSchedule``). The label's score is
the smallest ‖m‖₁ among masks that reached ``success``.

Outliers. With the L1 norms n_t, median m̃ and MAD = 1.4826·median|n_t − m̃|, the anomaly index is
|n_t − m̃| / MAD; a label whose norm is *below* the median with index > ``threshold`` (2) is
flagged: a suspiciously small trigger reaches it, as a backdoor or watermark label would.

Unlearning (``unlearn=true``). A share ``unlearn_rate`` (20 %) of the thief's data gets a flagged
label's reversed trigger stamped on it while keeping its own label (true, or the model's own
prediction on the clean input with ``labels=self``), and the model is fine-tuned on the result
(``epochs``; the paper: one epoch). Without a flagged label, or with ``unlearn=false``, the
weights are left as they are and the attack only reports.

Parameters (defaults):
    steps (1000): optimisation steps (each moves every label's trigger on one batch of ``batch_size``).
    batch_size (128): clean inputs per step.
    lr (0.1): Adam step of mask and pattern (betas 0.5, 0.9, as the authors).
    init_cost (1e-3): first non-zero λ.
    patience (5): checks before the cost moves (authors: 5; TrojanZoo: 10).
    check_every (10): steps averaged into one check.
    success (0.99): attack success rate a trigger must reach.
    threshold (2.0): anomaly index above which a label is flagged.
    unlearn (false): fine-tune the flagged triggers away.
    unlearn_rate (0.2): share of the thief's data stamped with a trigger for unlearning.
    epochs (1), finetune_lr (None): unlearning fine-tuning; None uses the training configuration's lr.
    labels ("data"): labels for unlearning, "data" or "self".
    seed (0): seeds the initial mask/pattern and batch draws.

Deviations: one shared mask over channels (as the authors); steps rather than epochs, so the
cost is the same whatever the data size; all labels are optimised side by side on the same batches
(each has its own mask, pattern, cost and early stop, so this equals one search per label). Labels
that never reach ``success`` keep the norm of their final mask (large), so they are never flagged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from ...core.errors import InvalidArgument
from ...core.runtime import progress as progress_bar
from ...data.base import TensorData
from ...models.optim import Adam
from ...models.train import fit
from .base import LabelSource, RemovalAttack, finetune_config, register_removal, thief_targets

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of the standard deviation under normality


def median(values: torch.Tensor) -> torch.Tensor:
    """The usual median (mean of the two middle values for an even count, as numpy; torch.median takes the lower)."""
    return torch.quantile(values.double(), 0.5)


def anomaly_indices(norms: torch.Tensor) -> torch.Tensor:
    """|n − median| / (1.4826 · MAD) for every label (MAD = 0 gives inf for any deviation, 0 otherwise)."""
    norms = norms.double()
    deviation = (norms - median(norms)).abs()
    mad = MAD_CONSISTENCY * median(deviation)
    if mad == 0:
        return torch.where(deviation > 0, torch.tensor(float("inf"), dtype=torch.float64), torch.zeros_like(norms))
    return deviation / mad


def flagged_labels(norms: torch.Tensor, threshold: float = 2.0) -> list[int]:
    """Labels whose trigger norm is below the median with an anomaly index above ``threshold``."""
    index = anomaly_indices(norms)
    below = norms.double() < median(norms)
    return [int(t) for t in torch.nonzero(below & (index > threshold)).flatten()]


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    return (1 - mask) * x + mask * pattern


class _CostSchedule:
    """One label's cost λ and early stop, as in the authors' code (TrojanZoo's ``check_early_stop``).

    λ stays 0 until the trigger works (attack success >= ``success``) for ``patience`` checks, then starts at
    ``init_cost``; afterwards it is multiplied by 1.5 after ``patience`` successful checks in a row and divided by
    1.5^1.5 after ``patience`` failing ones. The search stops early once λ went both up and down and the best norm
    has not improved by 1 % for 2·``patience`` checks. A check is the mean over ``check_every`` steps."""

    def __init__(self, params: Any):
        self.p = params
        self.cost, self.cost_set, self.up, self.down = 0.0, 0, 0, 0
        self.up_flag = self.down_flag = self.stopped = False
        self.early_best, self.early_count = float("inf"), 0
        self.window: list[float] = []
        self.steps = 0

    def record(self, success_rate: float, best_norm: float) -> None:
        self.steps += 1
        self.window.append(success_rate)
        if len(self.window) < self.p.check_every:
            return
        success = sum(self.window) / len(self.window) >= self.p.success
        self.window.clear()
        patience = self.p.patience
        if self.cost == 0 and success:
            self.cost_set += 1
            if self.cost_set >= patience:
                self.cost, self.up, self.down, self.up_flag, self.down_flag = self.p.init_cost, 0, 0, False, False
        else:
            self.cost_set = 0
        if success:
            self.up, self.down = self.up + 1, 0
        else:
            self.up, self.down = 0, self.down + 1
        if self.cost > 0 and self.up >= patience:
            self.up, self.cost, self.up_flag = 0, self.cost * 1.5, True
        elif self.cost > 0 and self.down >= patience:
            self.down, self.cost, self.down_flag = 0, self.cost / 1.5**1.5, True
        if best_norm < float("inf"):
            self.early_count = self.early_count + 1 if best_norm >= 0.99 * self.early_best else 0
            self.early_best = min(self.early_best, best_norm)
        if self.up_flag and self.down_flag and self.early_count >= 2 * patience:
            self.stopped = True


def _final_triggers(
    mask_param: torch.Tensor,
    pattern_param: torch.Tensor,
    best: list[tuple[torch.Tensor, torch.Tensor] | None],
    best_norm: list[float],
    steps: list[int],
) -> list[dict[str, Any]]:
    """Each label's best trigger; a label that never reached ``success`` keeps its final trigger, with its (large)
    norm, so it is never flagged."""
    out = []
    with torch.no_grad():
        for t in range(len(best)):
            trigger, norm = best[t], best_norm[t]
            reached = trigger is not None
            if trigger is None:
                m = ((torch.tanh(mask_param[t, 0]) + 1) / 2).detach()
                trigger, norm = (m, ((torch.tanh(pattern_param[t, 0]) + 1) / 2).detach()), float(m.sum())
            out.append(
                {
                    "mask": trigger[0].cpu(),
                    "pattern": trigger[1].cpu(),
                    "norm": norm,
                    "reached": reached,
                    "steps": steps[t],
                }
            )
    return out


@register_removal
class NeuralCleanse(RemovalAttack):
    """Neural Cleanse (Wang et al. 2019): reverse-engineer a trigger per class, flag MAD outliers, unlearn."""

    name = "neural-cleanse"

    @dataclasses.dataclass(frozen=True)
    class Params(RemovalAttack.Params):
        steps: int = 1000
        batch_size: int = 128
        lr: float = 0.1
        init_cost: float = 1e-3
        patience: int = 5
        check_every: int = 10
        success: float = 0.99
        threshold: float = 2.0
        unlearn: bool = False
        unlearn_rate: float = 0.2
        epochs: int = 1
        finetune_lr: float | None = None
        labels: LabelSource = "data"
        seed: int = 0

        def validate(self) -> None:
            for name in ("steps", "batch_size", "patience", "check_every"):
                if getattr(self, name) < 1:
                    raise InvalidArgument(f"{name} must be >= 1, got {name}={getattr(self, name)}")
            if not self.lr > 0 or not self.init_cost > 0:
                raise InvalidArgument(
                    f"lr and init_cost must be positive, got lr={self.lr}, init_cost={self.init_cost}"
                )
            if not 0 < self.success <= 1:
                raise InvalidArgument(f"success must be in (0, 1], got success={self.success}")
            if not self.threshold > 0:
                raise InvalidArgument(f"threshold must be positive, got threshold={self.threshold}")
            if not 0 < self.unlearn_rate <= 1:
                raise InvalidArgument(f"unlearn_rate must be in (0, 1], got unlearn_rate={self.unlearn_rate}")
            if self.epochs < 0:
                raise InvalidArgument(f"epochs must be >= 0, got {self.epochs}")
            if self.finetune_lr is not None and not self.finetune_lr > 0:
                raise InvalidArgument(f"finetune_lr must be positive, got {self.finetune_lr}")
            if self.seed < 0:
                raise InvalidArgument(f"seed must be >= 0, got {self.seed}")

    # -- trigger reverse-engineering -----------------------------------------------------------------------------
    def reverse_triggers(
        self, model, x: torch.Tensor, generator: torch.Generator, progress: bool | None = None
    ) -> list[dict[str, Any]]:
        """For every label, the smallest mask (and its pattern) that sends the clean inputs ``x`` to it.

        All labels are optimised together, one stamped copy of the batch per label, which is the same
        as optimising them one by one (their losses share no parameter and Adam is per-coordinate)
        but far faster on small models.
        """
        p = self.params
        k, (c, h, w) = model.num_classes, x.shape[1:]
        device = next(model.parameters()).device
        mask_param = torch.randn(k, 1, 1, h, w, generator=generator).to(device).requires_grad_(True)
        pattern_param = torch.randn(k, 1, c, h, w, generator=generator).to(device).requires_grad_(True)
        optimizer = Adam([mask_param, pattern_param], lr=p.lr, betas=(0.5, 0.9))
        states = [_CostSchedule(p) for _ in range(k)]
        best_norm = [float("inf")] * k
        best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * k
        bar = iter(progress_bar(range(p.steps), total=p.steps, desc="neural cleanse", enabled=progress, unit="step"))
        for _ in bar:
            active = [t for t in range(k) if not states[t].stopped]
            if not active:
                break
            rows = torch.tensor(active, device=device)
            pick = torch.randint(len(x), (p.batch_size,), generator=generator)
            xb = x[pick].to(device)
            n = len(xb)
            mask = (torch.tanh(mask_param[rows]) + 1) / 2  # A×1×1×H×W
            pattern = (torch.tanh(pattern_param[rows]) + 1) / 2  # A×1×C×H×W
            logits = model(stamp(xb.unsqueeze(0), mask, pattern).reshape(-1, c, h, w))
            target = rows.repeat_interleave(n)
            ce = F.cross_entropy(logits, target, reduction="none").view(len(active), n).mean(1)
            norms = mask.flatten(1).sum(1)
            costs = torch.tensor([states[t].cost for t in active], device=device)
            loss = (ce + costs * norms).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                rates = (logits.argmax(1) == target).float().view(len(active), n).mean(1).tolist()
                norm_list = norms.tolist()
                for j, t in enumerate(active):
                    if rates[j] >= p.success and norm_list[j] < best_norm[t]:
                        best_norm[t] = norm_list[j]
                        best[t] = (mask[j, 0].detach().clone(), pattern[j, 0].detach().clone())
                    states[t].record(rates[j], best_norm[t])
        for _ in bar:  # drain so the bar closes after an early stop
            pass
        return _final_triggers(mask_param, pattern_param, best, best_norm, [state.steps for state in states])

    def inspect(self, model, data: TensorData, *, progress: bool | None = None) -> dict[str, Any]:
        """Reverse-engineer a trigger for every label; anomaly indices and flagged labels (weights untouched)."""
        p = self.params
        if len(data) == 0:
            raise InvalidArgument("Neural Cleanse needs clean inputs from the thief's data")
        generator = torch.Generator().manual_seed(p.seed)
        was = model.training
        trainable = [param.requires_grad for param in model.parameters()]
        model.eval()
        model.requires_grad_(False)  # only the mask and pattern are optimised
        try:
            triggers = self.reverse_triggers(model, data.x, generator, progress)
        finally:
            for param, flag in zip(model.parameters(), trainable):
                param.requires_grad_(flag)
            model.train(was)
        norms = torch.tensor([t["norm"] for t in triggers])
        index = anomaly_indices(norms)
        flagged = [t for t in flagged_labels(norms, p.threshold) if triggers[t]["reached"]]
        return {
            "norms": norms.tolist(),
            "anomaly_index": index.tolist(),
            "flagged": flagged,
            "reached": [t["reached"] for t in triggers],
            "triggers": triggers,
        }

    def apply(self, model, data, *, train, progress=None):
        p = self.params
        report = self.inspect(model, data, progress=progress)
        triggers = report.pop("triggers")
        flagged = report["flagged"]
        report["trigger_masks"] = {t: triggers[t]["mask"] for t in flagged}
        report["trigger_patterns"] = {t: triggers[t]["pattern"] for t in flagged}
        names = ", ".join(str(model.class_names[t]) for t in flagged) or "none"
        middle = float(median(torch.tensor(report["norms"])))
        small = [a for a, n in zip(report["anomaly_index"], report["norms"]) if n < middle]
        summary = (
            f"flagged labels: {names} (largest anomaly index below the median norm: "
            f"{max(small, default=0.0):.2f}, threshold {p.threshold:g})"
        )
        if p.unlearn and flagged and p.epochs:
            clean = thief_targets(model, data, p.labels)
            generator = torch.Generator().manual_seed(p.seed + 1)
            chosen = torch.randperm(len(clean), generator=generator)[: max(1, round(p.unlearn_rate * len(clean)))]
            x = clean.x.clone()
            for i, idx in enumerate(chosen.tolist()):  # cycle the flagged triggers over the chosen inputs
                trig = triggers[flagged[i % len(flagged)]]
                x[idx] = stamp(x[idx], trig["mask"], trig["pattern"])
            config = finetune_config(train, epochs=p.epochs, lr=p.finetune_lr)
            report["training"] = fit(
                model, TensorData(x, clean.y), config, progress=progress, desc="unlearn trigger"
            ).to_dict()
            report["unlearned"] = len(chosen)
            summary += f"; unlearned on {len(chosen)} stamped inputs for {config.epochs} epoch(s)"
        elif p.unlearn and not flagged:
            summary += "; nothing to unlearn"
        report["summary"] = summary
        return report
