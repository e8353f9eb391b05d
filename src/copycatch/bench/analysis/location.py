"""Study "location": where in the network the feature-sharing watermark is learnt, and what extraction keeps of it.

Paper: Tang et al., "Was my Model Stolen? Feature Sharing for Robust and Transferable Watermarks", ICLR 2022
submission, Figs. 3–4: the watermark is embedded by fine-tuning only the layers after a frozen feature extractor;
the deeper the split (the fewer layers fine-tuned), the more the watermark has to reuse the task's features, which
is what lets it travel to an extracted copy.

For each seed and each depth k (the scheme's ``trainable_from``: the last k parameterised layers of the network are
fine-tuned on the clean data plus the watermark set, everything before them frozen), the victim is embedded with
``scheme_params = {**config.scheme_params, "trainable_from": k}`` and stolen (``study_models``, cached per depth).
For the victim and its surrogate the study reports the watermark accuracy (the share of the key's verification
inputs, with the trigger, classified as the target class: the scheme's ``watermark_accuracy`` metric), the p-value
of the scheme's own test (one-sided Wilcoxon signed-rank, the fixed test on the whole key) and the model's test
accuracy. The clean model, shared by every depth, is the same for all rows of a seed (its accuracy is in the summary).

Output: ``location.csv`` (seed, depth, model, watermark_accuracy, p_value, accuracy) and ``location.png``
(watermark accuracy against depth, victim and surrogate, mean ± std over the seeds; the worst seed's p-value on a second
panel). The scheme's default split (``trainable_from=None``) is k = 1 (``finetune="last-layer"``), or the number of
parameterised layers of ``model.classifier`` with ``-p finetune=decision-layers``; the summary names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import InvalidArgument
from ...data.base import load_splits
from ...models.base import create_for
from ...models.train import accuracy
from ...schemes.feature_sharing import FeatureSharingWatermark, parameterised_layers
from ...verification.session import fixed_test
from . import register_study
from .common import StudyConfig, StudyResult, draw, study_models, write_csv

STUDY = "location"
MODELS = ("victim", "surrogate")
COLUMNS = ("seed", "depth", "model", "watermark_accuracy", "p_value", "accuracy")


def _depths(config: StudyConfig, depths: Sequence[int] | str | None) -> tuple[list[int], int, int]:
    """(the depths to run, the architecture's parameterised-layer count, the default split's depth)."""
    splits = load_splits(config.dataset, seed=config.seeds[0], data_dir=config.data_dir, max_train=config.max_train)
    model = create_for(config.arch, splits, seed=0)
    total = len(parameterised_layers(model.net))
    # the scheme resolves its own default split (it depends on the distribution)
    finetune = FeatureSharingWatermark.Params.from_dict(config.scheme_params).finetune
    default = 1 if finetune == "last-layer" else len(parameterised_layers(model.classifier))
    if depths is None:
        chosen = list(range(1, total + 1))
    else:
        if isinstance(depths, str):
            try:
                depths = [int(v) for v in depths.replace(" ", "").split(",") if v]
            except ValueError:
                raise InvalidArgument(f"depths must be whole numbers separated by commas, got {depths!r}") from None
        chosen = sorted(dict.fromkeys(int(k) for k in depths))
        bad = [k for k in chosen if not 1 <= k <= total]
        if bad or not chosen:
            raise InvalidArgument(
                f"depths {bad or list(depths)} are not in [1, {total}] ({config.arch} has {total} parameterised layers)"
            )
    return chosen, total, default


@register_study(STUDY)
def location(*, config: StudyConfig, output: str | Path, depths: Sequence[int] | str | None = None) -> StudyResult:
    """Feature-sharing watermark embedded at each depth of the frozen/fine-tuned split: watermark accuracy, p-value
    and test accuracy of the victim and its surrogate (the feature-sharing paper's Figs. 3–4).

    :param depths: the numbers k of last parameterised layers fine-tuned (``trainable_from``), as integers or a
        comma-separated text ("1,2,4"); None runs every depth from 1 (the last layer only) to the whole network.
    """
    if config.scheme != "feature-sharing":
        raise InvalidArgument(f"study {STUDY!r} moves the feature-sharing split; got scheme {config.scheme!r}")
    chosen, total, default = _depths(config, depths)
    rows: list[dict[str, Any]] = []
    clean_accuracy = {}
    for seed in config.seeds:
        for k in chosen:
            models = study_models(config, seed, scheme_params={**config.scheme_params, "trainable_from": k})
            test = models.splits.test
            clean_accuracy.setdefault(seed, accuracy(models.clean, test))
            for name in MODELS:
                model = getattr(models, name)
                evidence = fixed_test(model, models.key, progress=False)
                rows.append(
                    {
                        "seed": seed,
                        "depth": k,
                        "model": name,
                        "watermark_accuracy": float(evidence.metrics["watermark_accuracy"]),
                        "p_value": float(evidence.p_value),
                        "accuracy": accuracy(model, test),
                    }
                )
    csv_path, png = write_csv(output, STUDY, COLUMNS, rows)
    means = _means(rows, chosen)
    summary: dict[str, Any] = {
        "layers": total,
        "default_depth": default,
        "clean_accuracy": round(float(np.mean(list(clean_accuracy.values()))), 4),
        **{
            name: {
                str(k): {col: round(float(means[name][col][0][i]), 6) for col in ("watermark_accuracy", "p_value")}
                for i, k in enumerate(chosen)
            }
            for name in MODELS
        },
    }
    notes = [
        f"depth k fine-tunes the last k of {config.arch}'s {total} parameterised layers; k={default} is the "
        "scheme's default split",
    ]
    written = draw(png, notes, lambda plt, path: _plot(plt, path, means, chosen, default, seeds=len(config.seeds)))
    return StudyResult(STUDY, csv_path, written, len(rows), summary, notes)


location.default_scheme = "feature-sharing"
location.options = (
    ("depths", str, "numbers k of last layers fine-tuned, comma-separated (default: every depth, 1 = the last layer)"),
)


def _means(rows: list[dict[str, Any]], depths: list[int]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per model and column, the mean and standard deviation over seeds at each depth; for the p-value the worst
    (largest) seed's, with no spread: a mean of p-values on a log axis would show the best seeds, not a proof."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name in MODELS:
        out[name] = {}
        for col in ("watermark_accuracy", "p_value", "accuracy"):
            values = [[r[col] for r in rows if r["model"] == name and r["depth"] == k] for k in depths]
            if col == "p_value":
                out[name][col] = (np.array([max(v) for v in values]), np.zeros(len(values)))
            else:
                out[name][col] = (np.array([np.mean(v) for v in values]), np.array([np.std(v) for v in values]))
    return out


def _plot(plt, png: Path, means, depths: list[int], default: int, *, seeds: int) -> None:
    x = np.array(depths)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=120)
    for name in MODELS:
        mean, std = means[name]["watermark_accuracy"]
        (line,) = left.plot(x, mean, marker="o", label=name)
        if seeds > 1:
            left.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        right.plot(x, np.clip(means[name]["p_value"][0], 1e-300, 1.0), marker="o", label=name)
    for ax in (left, right):
        ax.axvline(default, color="grey", linestyle=":", linewidth=1, label=f"default split (k={default})")
        ax.set_xticks(x)
        ax.set_xlabel("fine-tuned layers k (the last k of the network; the rest frozen)")
        ax.grid(alpha=0.3)
    left.set_ylabel("watermark accuracy")
    left.set_ylim(-0.02, 1.02)
    left.set_title(f"Feature-sharing watermark by location ({seeds} seed{'s' * (seeds > 1)})")
    left.legend()
    right.set_yscale("log")
    right.set_ylabel("p-value (signed-rank test, worst seed)")
    right.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
