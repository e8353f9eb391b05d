"""Study ``prms``: MEA-Defender's pairwise random mixing spectrum, for the victim and its surrogate.

Paper: P. Lv, H. Ma, K. Chen, J. Zhou, S. Zhang, R. Liang, S. Zhu, P. Li and Y. Zhang, "MEA-Defender: A Robust
Watermark against Model Extraction Attack", IEEE S&P 2024, Fig. 4: for every pair of labels (i, j), the probability
that samples combined from random inputs of i and j are classified as one label. The paper uses it to show that the
watermark pair stands out: its combinations go to the target class, the other pairs' to one of their own sources.

Method. For every ordered pair (a, b) of classes, the diagonal included, ``per_pair`` random test inputs of class a
are combined with random test inputs of class b by the key's own secret rule, through the scheme's
``watermark_maker`` (:mod:`copycatch.schemes.mea_defender`, masks from :mod:`copycatch.schemes._mixers`; the
autoencoder rule's autoencoder is retrained from the key's parameters, the owner's data and the seed, as embedding
trained it). The same combined inputs go to the victim and to the surrogate; for each pair the study reports the
share of them on the most frequent label (``top_share``, the paper's spectrum, and that label, ``top_label``), the
share on the key's target class (``target_share``) and the shares on a and on b. Test inputs are never trained on.

Reading the figure (2×2: rows top share and target share, columns victim and surrogate; C×C heat maps, row = the
class of the first image, column = the second, the watermark's own pair (source_a, source_b) framed in red). On the
victim the framed cell of the target-share map is bright and the rest dark except the target's own row and column
(a combination with a target image is often a target) and, often, the classes that look like the target (the key
lists them, ``lookalike_classes``, and leaves them out of its false watermarks). The watermark survived extraction
when the surrogate's target-share map shows the same bright cell. The summary gives each model's target share on
the watermark pair, the largest target share on any pair without the target class (and without its look-alikes),
and the watermark pair's rank among the pairs without the target class.

CSV ``prms.csv``: one row per seed, model and ordered class pair: ``seed, model, class_a, class_b, samples,
top_label, top_share, target_share, share_a, share_b, watermark_pair``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...core.errors import InvalidArgument
from ...core.key import Key
from ...data.base import Splits, to_float
from ...models.train import predict_logits
from ...schemes import _mixers as mixers
from ...schemes.base import scheme_for_key
from . import register_study
from .common import StudyConfig, StudyResult, draw, study_models, write_csv

SCHEME = "mea-defender"
FIGSIZE = (12.0, 11.0)  # inches; the PNG is FIGSIZE × DPI pixels
DPI = 100
COLUMNS = (
    "seed", "model", "class_a", "class_b", "samples", "top_label", "top_share", "target_share", "share_a", "share_b",
    "watermark_pair",
)  # fmt: skip
MODELS = ("victim", "surrogate")


def combine_rule(key: Key, splits: Splits, seed: int):
    """The key's combining rule as a function (x_a, x_b) -> combined inputs, built by the scheme itself
    (``MEADefender.watermark_maker``) from the configuration the key records: the rule, its α, the secret stripe
    pattern; for the autoencoder rule an autoencoder retrained as embedding trained it (owner_train, the key's
    ``ae_width``/``ae_epochs``, the training seed)."""
    scheme = scheme_for_key(key)
    p = scheme.params.for_modality(splits.modality)
    scheme.params = p
    h, w = splits.input_shape[-2:] if splits.modality == "image" else (1, splits.input_shape[-1])
    stripe_pattern = tuple(bool(v) for v in key["stripe_pattern"].tolist()) if p.rule == "stripes" else None
    autoencoder = None
    if p.rule == "autoencoder":
        autoencoder = mixers.train_autoencoder(
            splits.owner_train.x, width=p.ae_width, epochs=p.ae_epochs, seed=seed, progress=False
        )
    return scheme.watermark_maker(h, w, stripe_pattern, autoencoder, modality=splits.modality)


def spectrum(
    models: dict[str, torch.nn.Module],
    combine,
    splits: Splits,
    *,
    per_pair: int,
    generator: torch.Generator,
) -> dict[str, np.ndarray]:
    """Per model, the C×C×C array of label counts: [a, b, k] = how many of the ``per_pair`` combinations of a test
    input of class a (first) with one of class b (second) the model classifies as k."""
    test = splits.test
    c = splits.num_classes
    by_class = {k: test.stored[test.y == k] for k in range(c)}
    missing = [k for k, v in by_class.items() if not len(v)]
    if missing:
        raise InvalidArgument(f"the test split has no input of class {missing[0]}; the spectrum needs every class")
    counts = {name: np.zeros((c, c, c), dtype=np.int64) for name in models}
    for a in range(c):
        for b in range(c):
            ia = torch.randint(len(by_class[a]), (per_pair,), generator=generator)
            ib = torch.randint(len(by_class[b]), (per_pair,), generator=generator)
            x = combine(to_float(by_class[a][ia]), to_float(by_class[b][ib]))
            for name, model in models.items():
                predicted = predict_logits(model, x).argmax(1)
                counts[name][a, b] = np.bincount(predicted.numpy(), minlength=c)[:c]
    return counts


@register_study("prms")
def prms(config: StudyConfig, output: str | Path, *, per_pair: int = 100) -> StudyResult:
    """MEA-Defender's PRMS: label shares of randomly combined class pairs, victim vs surrogate (Lv et al. Fig. 4)."""
    if config.scheme != SCHEME:
        raise InvalidArgument(
            f"study prms needs scheme {SCHEME!r} (its key records the source classes, the target and the combining "
            f"rule), got scheme {config.scheme!r}"
        )
    if per_pair < 1:
        raise InvalidArgument(f"per_pair must be >= 1, got {per_pair}")
    rows: list[dict] = []
    shares: dict[str, list[np.ndarray]] = {name: [] for name in MODELS}  # per seed: C×C×C label shares
    notes: list[str] = []
    for seed in config.seeds:
        models = study_models(config, seed)
        params = scheme_for_key(models.key).params.for_modality(models.splits.modality)
        source_a, source_b, target = params.source_a, params.source_b, params.target
        lookalikes = models.key.tensors.get("lookalike_classes", torch.zeros(0)).long().tolist()
        if params.rule == "autoencoder" and seed == config.seeds[0]:
            notes.append("the autoencoder rule's autoencoder was retrained from the key's parameters and seed")
        combine = combine_rule(models.key, models.splits, seed)
        generator = torch.Generator().manual_seed(seed)
        counts = spectrum(
            {"victim": models.victim, "surrogate": models.surrogate},
            combine,
            models.splits,
            per_pair=per_pair,
            generator=generator,
        )
        c = models.splits.num_classes
        for name in MODELS:
            share = counts[name] / per_pair
            shares[name].append(share)
            for a in range(c):
                for b in range(c):
                    top = int(counts[name][a, b].argmax())
                    rows.append(
                        {
                            "seed": seed,
                            "model": name,
                            "class_a": a,
                            "class_b": b,
                            "samples": per_pair,
                            "top_label": top,
                            "top_share": float(share[a, b, top]),
                            "target_share": float(share[a, b, target]),
                            "share_a": float(share[a, b, a]),
                            "share_b": float(share[a, b, b]),
                            "watermark_pair": int((a, b) == (source_a, source_b)),
                        }
                    )
    mean = {name: np.mean(shares[name], axis=0) for name in MODELS}
    summary: dict[str, float | int | str] = {
        "source_a": source_a,
        "source_b": source_b,
        "target": target,
        "rule": params.rule,
        "seeds": len(config.seeds),
        "per_pair": per_pair,
    }
    if lookalikes:
        summary["target_lookalikes"] = ",".join(map(str, lookalikes))
    summary.update(_summary(mean, source_a, source_b, target, lookalikes))

    csv_file, png_file = write_csv(output, "prms", COLUMNS, rows)
    classes = (source_a, source_b, target)
    png = draw(png_file, notes, lambda plt, path: _plot(plt, path, mean, classes, models.splits.class_names, config))
    return StudyResult("prms", csv_file, png, len(rows), summary, notes)


prms.default_scheme = SCHEME  # type: ignore[attr-defined]
# the study's own options, for `copycatch analyze prms` (name, type, help; defaults from the signature)
prms.options = (("per_pair", int, "combined inputs per ordered class pair"),)  # type: ignore[attr-defined]


def _summary(
    mean: dict[str, np.ndarray], source_a: int, source_b: int, target: int, lookalikes: list[int]
) -> dict[str, float | int]:
    """Per model: the target share on the watermark pair, the largest target share on the other pairs without the
    target class (and, when the key names the target's look-alike classes, on those without them either), the
    watermark pair's rank among all pairs without the target class (1: the highest) and the mean top share off the
    diagonal."""
    out: dict[str, float | int] = {}
    for name, share in mean.items():
        c = share.shape[0]
        top = share.max(axis=2)
        target_share = share[:, :, target]
        others = [(a, b) for a in range(c) for b in range(c) if target not in (a, b) and (a, b) != (source_a, source_b)]
        wm = float(target_share[source_a, source_b])
        other_values = [float(target_share[a, b]) for a, b in others]
        off_diagonal = ~np.eye(c, dtype=bool)
        out[f"{name}_watermark_target_share"] = wm
        out[f"{name}_other_pairs_max_target_share"] = max(other_values, default=float("nan"))
        if lookalikes:
            unlike = [float(target_share[a, b]) for a, b in others if a not in lookalikes and b not in lookalikes]
            out[f"{name}_other_pairs_max_target_share_without_lookalikes"] = max(unlike, default=float("nan"))
        out[f"{name}_watermark_pair_rank"] = 1 + sum(v > wm for v in other_values)
        out[f"{name}_mean_top_share"] = float(top[off_diagonal].mean())
    return out


def _plot(plt, png: Path, mean: dict[str, np.ndarray], classes: tuple[int, int, int], class_names, config) -> None:
    from matplotlib.patches import Rectangle

    source_a, source_b, target = classes
    c = next(iter(mean.values())).shape[0]
    names = [str(class_names[k]) if k < len(class_names) else str(k) for k in range(c)]
    ticks = [f"{k} {n}" if n != str(k) else n for k, n in enumerate(names)]
    fig, axes = plt.subplots(2, 2, figsize=FIGSIZE, dpi=DPI, layout="constrained")
    image = None
    for col, name in enumerate(MODELS):
        share = mean[name]
        panels = (
            (share.max(axis=2), f"{name}: share on the most frequent label (PRMS)", share.argmax(axis=2)),
            (share[:, :, target], f"{name}: share on the target class {names[target]}", None),
        )
        for row, (values, title, top_label) in enumerate(panels):
            ax = axes[row][col]
            image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(title, fontsize=10)
            ax.set_xticks(range(c))
            ax.set_yticks(range(c))
            ax.set_xticklabels(ticks, rotation=90, fontsize=7)
            ax.set_yticklabels(ticks, fontsize=7)
            ax.set_xlabel("second input's class (b)", fontsize=8)
            ax.set_ylabel("first input's class (a)", fontsize=8)
            if top_label is not None and c <= 12:  # the label most combinations go to, in each cell
                for a in range(c):
                    for b in range(c):
                        colour = "black" if values[a, b] > 0.6 else "white"
                        ax.text(b, a, str(top_label[a, b]), ha="center", va="center", fontsize=7, color=colour)
            ax.add_patch(Rectangle((source_b - 0.5, source_a - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    fig.colorbar(image, ax=axes, shrink=0.6, label="share of the combined inputs")
    fig.suptitle(
        f"MEA-Defender PRMS on {config.dataset}: victim vs {config.thief} surrogate "
        f"(watermark: {names[source_a]} + {names[source_b]} → {names[target]}, framed)"
    )
    fig.savefig(png, dpi=DPI)
    plt.close(fig)
