"""Study "margin-radius": how far the margin watermark's triggers keep their secret label (margin paper, Fig. 4).

Paper: Kim et al., "Margin-based Neural Network Watermarking", ICML 2023, Fig. 4: the watermark accuracy of the
watermarked model and of its extracted copy as the radius of an adversarial perturbation of the triggers grows. A
model trained with the margin keeps the secret label on a whole L∞ ball around each trigger, and extraction copies
part of that margin, so the surrogate's curve falls later than an unmarked model's.

For each seed of the configuration, the clean model, the watermarked victim and its surrogate (``study_models``)
are attacked on the key's triggers: for every radius r = 0, 1/255, …, ``max_radius``/255, PGD with sign steps
(:func:`copycatch.models.adversarial.pgd`, ``pgd_steps`` steps of 2.5·r/``pgd_steps``, Madry et al.'s rule, from
the trigger itself) ascends the cross-entropy of the secret label, i.e. tries to move each trigger away from it,
projected to the ball and to [0, 1]. A trigger counts as kept at radius r when no perturbation found at any radius
≤ r moved it off its secret label (a perturbation inside a smaller ball lies inside the larger one), so every curve
is non-increasing, and each point is an upper bound of the model's true robust watermark accuracy (PGD may miss a
perturbation). Radius 0 is the plain watermark accuracy, hits / triggers, the scheme's own metric.

Output: ``margin-radius.csv`` (seed, model, radius, watermark_accuracy) and ``margin-radius.png`` (mean ± std over
the seeds as a shaded band, per model). The summary gives, per model, the mean accuracy at radius 0 and the first
radius at which the mean curve is at most half of it (None when it never halves in the range).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.errors import InvalidArgument
from ...models.adversarial import pgd
from . import register_study
from .common import StudyConfig, StudyResult, draw, study_models, write_csv

STUDY = "margin-radius"
MODELS = ("victim", "surrogate", "clean")
COLUMNS = ("seed", "model", "radius", "watermark_accuracy")


def trigger_retention(
    model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, radii: list[float], *, steps: int = 10
) -> list[float]:
    """The share of triggers ``x`` that ``model`` keeps on their secret ``labels`` within each radius of ``radii``
    (ascending): a trigger is lost at r once PGD moved it off its label inside any ball of radius ≤ r."""
    if any(b < a for a, b in itertools.pairwise(radii)) or (radii and radii[0] < 0):
        raise InvalidArgument(f"radii must be non-negative and ascending, got {radii}")
    was_training = model.training
    model.eval()
    try:
        kept = torch.ones(len(x), dtype=torch.bool)
        shares = []
        for r in radii:
            x_adv = x if r == 0 else pgd(model, x, r, 2.5 * r / steps, steps, y=labels, targeted=False)
            with torch.no_grad():
                kept &= model(x_adv).argmax(dim=1).cpu() == labels.cpu()
            shares.append(float(kept.float().mean()))
        return shares
    finally:
        model.train(was_training)


@register_study(STUDY)
def margin_radius(*, config: StudyConfig, output: str | Path, max_radius: int = 16, pgd_steps: int = 10) -> StudyResult:
    """Watermark accuracy of the victim, its surrogate and the clean model on the margin key's triggers as the L∞
    radius of a PGD perturbation away from the secret label grows (the margin paper's Fig. 4).

    :param max_radius: the largest radius in pixel levels: radii 0, 1/255, …, max_radius/255 (paper's range: 16).
    :param pgd_steps: PGD steps per radius, each of 2.5·r/pgd_steps.
    """
    if config.scheme != "margin":
        raise InvalidArgument(
            f"study {STUDY!r} reads a margin key (trigger inputs and secret labels); got scheme {config.scheme!r}"
        )
    if max_radius < 1 or pgd_steps < 1:
        raise InvalidArgument(f"max_radius and pgd_steps must be >= 1, got {max_radius} and {pgd_steps}")
    radii = [level / 255 for level in range(max_radius + 1)]
    rows: list[dict[str, Any]] = []
    for seed in config.seeds:
        models = study_models(config, seed)
        x = models.key["trigger_x"].float() / 255
        labels = models.key["trigger_label"].long()
        for name in MODELS:
            model = getattr(models, name)
            device = next(model.parameters()).device
            shares = trigger_retention(model, x.to(device), labels.to(device), radii, steps=pgd_steps)
            rows += [{"seed": seed, "model": name, "radius": r, "watermark_accuracy": a} for r, a in zip(radii, shares)]
    csv_path, png = write_csv(output, STUDY, COLUMNS, rows)
    curves = _curves(rows, radii)
    summary: dict[str, Any] = {}
    for name, (mean, _) in curves.items():
        half = next((r for r, a in zip(radii, mean) if a <= mean[0] / 2), None) if mean[0] > 0 else None
        summary[name] = {
            "watermark_accuracy_at_0": round(float(mean[0]), 4),
            "halving_radius": None if half is None else round(half, 6),
            "halving_radius_levels": None if half is None else round(half * 255),
        }
    notes = [
        "PGD finds some perturbations, not all: each point is an upper bound of the robust watermark accuracy",
    ]
    written = draw(png, notes, lambda plt, path: _plot(plt, path, curves, radii, seeds=len(config.seeds)))
    return StudyResult(STUDY, csv_path, written, len(rows), summary, notes)


margin_radius.default_scheme = "margin"
margin_radius.options = (
    ("max_radius", int, "the largest L∞ radius in pixel levels: radii 0, 1/255, …, N/255"),
    ("pgd_steps", int, "PGD steps per radius, each of 2.5·r/steps"),
)


def _curves(rows: list[dict[str, Any]], radii: list[float]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model, the mean and standard deviation over seeds at each radius."""
    out = {}
    for name in MODELS:
        table = np.array(
            [
                [r["watermark_accuracy"] for r in rows if r["model"] == name and r["seed"] == s]
                for s in dict.fromkeys(r["seed"] for r in rows)
            ]
        ).reshape(-1, len(radii))
        out[name] = (table.mean(axis=0), table.std(axis=0))
    return out


def _plot(plt, png: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], radii: list[float], *, seeds: int) -> None:
    levels = np.array(radii) * 255
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    for name, (mean, std) in curves.items():
        (line,) = ax.plot(levels, mean, marker="o", markersize=3, label=name)
        if seeds > 1:
            ax.fill_between(levels, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("L∞ radius of the perturbation (× 1/255)")
    ax.set_ylabel("watermark accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Margin watermark under PGD ({seeds} seed{'s' * (seeds > 1)}, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
