"""Study ``features``: where a watermark's key inputs sit in the victim's and the surrogate's feature space.

Papers: B. Kim, S. Lee, S. Lee, S. Son and S. J. Hwang, "Margin-based Neural Network Watermarking", ICML 2023
(Fig. 6 and Appendix C: t-SNE of the penultimate features, the triggers among the clean classes, for the source
model and its extracted copy); P. Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack",
IEEE S&P 2024 (§6, the PCA of the features of watermark and clean samples).

Method. A random sample of ``points`` test inputs and the key's verification inputs (the margin triggers, or the
true watermark samples of a MEA-Defender key: its group 0, without the false watermarks; at most ``key_points``) go
through each model; the input of the last ``Linear`` layer (the penultimate representation, whatever the
architecture) is captured by a forward pre-hook. Two 2-D views of it: PCA fitted on the test points alone (the key
inputs projected onto the same axes, so they cannot move them) and t-SNE of all points together. The figure is
2×2: rows PCA and t-SNE, columns victim and surrogate; test points are coloured by their true class, key inputs
are black-edged stars coloured by the class the model gives them.

Reading it. A watermark that survives extraction shows in the surrogate's panels as the victim's: the key inputs
gathered with (or beside) the class the watermark assigns them, not with the class they look like. The summary
measures it in the full feature space (no projection): the mean distance of the key inputs to their nearest class
centroid, in units of the test points' mean distance to their own class centroid (about 1: the key inputs sit
inside a class; larger: apart from every class), and the share of key inputs whose nearest centroid is the class the
model predicts for them.

CSV ``features.csv``: one row per point, model and method: ``model, method, x, y, label, predicted, is_key,
index``. ``label`` is the true class for test points and, for key inputs, the class the victim gives them (what the
watermark makes it say); ``predicted`` is the plotted model's class; ``index`` the row in the test split or the key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import InvalidArgument
from ...data.base import to_float
from ...models.train import predict_logits
from ...schemes.base import scheme_for_key
from . import register_study
from .common import StudyConfig, StudyResult, draw, study_models, write_csv

FIGSIZE = (11.0, 10.0)  # inches; the PNG is FIGSIZE × DPI pixels
DPI = 100
COLUMNS = ("model", "method", "x", "y", "label", "predicted", "is_key", "index")
METHODS = ("pca", "tsne")
MODELS = ("victim", "surrogate")


def last_linear(model: nn.Module) -> nn.Linear:
    """The layer that maps the penultimate representation to the classes: the last ``Linear`` of the model's
    ``classifier`` part (every copycatch architecture ends in one), else of the whole model."""
    part = getattr(model, "classifier", None)
    for module in (part, model):
        if isinstance(module, nn.Module):
            linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    raise InvalidArgument(f"model {type(model).__name__} has no Linear layer to read penultimate features from")


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features N×D, logits N×C) of ``x``: the input of the model's last ``Linear`` layer, captured by a forward
    pre-hook during an ordinary (eval-mode, batched) forward pass."""
    captured: list[torch.Tensor] = []

    def hook(_module, inputs):
        captured.append(inputs[0].detach().flatten(1).float().cpu())

    handle = last_linear(model).register_forward_pre_hook(hook)
    try:
        logits = predict_logits(model, x, batch_size=batch_size)
    finally:
        handle.remove()
    return torch.cat(captured).numpy(), logits.numpy()


def key_inputs(key, limit: int) -> torch.Tensor:
    """The key's verification inputs to highlight: all of them (the margin triggers …), or for a key with
    verification groups (MEA-Defender) the true watermark's group 0 only; at most ``limit``, in key order."""
    x = scheme_for_key(key).verification_inputs(key)
    if "verify_group" in key.tensors:
        x = x[key["verify_group"].long() == 0]
    return x[:limit]


def embed_2d(features: np.ndarray, n_test: int, *, perplexity: float, seed: int) -> dict[str, np.ndarray]:
    """PCA (fitted on the first ``n_test`` rows, the test points) and t-SNE (all rows) to two dimensions."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    pca = PCA(n_components=2, random_state=seed).fit(features[:n_test])
    perplexity = float(min(perplexity, max(1.0, (len(features) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return {"pca": pca.transform(features), "tsne": tsne.fit_transform(features)}


def centroid_summary(
    features: np.ndarray, labels: np.ndarray, n_test: int, predicted: np.ndarray
) -> tuple[float, float, float]:
    """(key inputs' mean distance to their nearest class centroid, that distance over the test points' mean
    distance to their own class centroid, share of key inputs whose nearest centroid is their predicted class),
    in the full feature space; centroids are the test points' class means."""
    test, key = features[:n_test], features[n_test:]
    classes = np.unique(labels[:n_test])
    centroids = np.stack([test[labels[:n_test] == c].mean(0) for c in classes])
    own = np.linalg.norm(test - centroids[np.searchsorted(classes, labels[:n_test])], axis=1).mean()
    if not len(key):
        return float("nan"), float("nan"), float("nan")
    distances = np.linalg.norm(key[:, None, :] - centroids[None, :, :], axis=2)
    nearest = distances.min(1).mean()
    agrees = (classes[distances.argmin(1)] == predicted[n_test:]).mean()
    return float(nearest), float(nearest / own) if own > 0 else float("nan"), float(agrees)


@register_study("features")
def features(
    config: StudyConfig,
    output: str | Path,
    *,
    points: int = 500,
    key_points: int = 100,
    perplexity: float = 30.0,
) -> StudyResult:
    """t-SNE and PCA of the penultimate features, key inputs highlighted, victim vs surrogate (Kim et al. Fig. 6)."""
    if points < 10 or key_points < 1:
        raise InvalidArgument(f"points must be >= 10 and key_points >= 1, got {points} and {key_points}")
    if perplexity <= 0:
        raise InvalidArgument(f"perplexity must be positive, got {perplexity}")
    notes: list[str] = []
    seed = config.seeds[0]
    if len(config.seeds) > 1:
        notes.append(f"features shows one seed's models: seed {seed} (of {len(config.seeds)})")
    models = study_models(config, seed)
    test = models.splits.test
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(test), generator=generator)[:points]
    x_test, y_test = to_float(test.stored[pick]), test.y[pick].numpy()
    x_key = key_inputs(models.key, key_points)
    n_test, n_key = len(x_test), len(x_key)
    if not n_key:
        notes.append(f"the {models.key.scheme} key has no verification inputs to show")
    x_all = torch.cat([x_test, x_key.to(x_test.dtype)]) if n_key else x_test

    victim_feats, victim_logits = penultimate_features(models.victim, x_all)
    victim_pred = victim_logits.argmax(1)
    # the label of a key input is the class the victim gives it: what the watermark makes the victim say
    labels = np.concatenate([y_test, victim_pred[n_test:]])
    rows: list[dict] = []
    views: dict[str, dict] = {}
    summary: dict[str, float | int | str] = {"seed": seed, "scheme": models.key.scheme, "test_points": n_test}
    summary["key_points"] = n_key
    for name, model in zip(MODELS, (models.victim, models.surrogate)):
        feats, logits = (victim_feats, victim_logits) if name == "victim" else penultimate_features(model, x_all)
        predicted = logits.argmax(1)
        coords = embed_2d(feats, n_test, perplexity=perplexity, seed=seed)
        views[name] = {"coords": coords, "predicted": predicted}
        for method in METHODS:
            xy = coords[method]
            for i in range(len(xy)):
                is_key = i >= n_test
                rows.append(
                    {
                        "model": name,
                        "method": method,
                        "x": float(xy[i, 0]),
                        "y": float(xy[i, 1]),
                        "label": int(labels[i]),
                        "predicted": int(predicted[i]),
                        "is_key": int(is_key),
                        "index": int(i - n_test) if is_key else int(pick[i]),
                    }
                )
        distance, ratio, agrees = centroid_summary(feats, labels, n_test, predicted)
        summary[f"{name}_test_accuracy"] = float((predicted[:n_test] == y_test).mean())
        summary[f"{name}_key_centroid_distance"] = distance
        summary[f"{name}_key_centroid_ratio"] = ratio
        summary[f"{name}_key_nearest_is_predicted"] = agrees
        if n_key:
            summary[f"{name}_key_agrees_with_victim"] = float((predicted[n_test:] == victim_pred[n_test:]).mean())

    csv_file, png_file = write_csv(output, "features", COLUMNS, rows)
    png = draw(
        png_file,
        notes,
        lambda plt, path: _plot(plt, path, views, labels, n_test, models.splits.class_names, config, seed),
    )
    return StudyResult("features", csv_file, png, len(rows), summary, notes)


features.default_scheme = "margin"  # type: ignore[attr-defined]
# the study's own options, for `copycatch analyze features` (name, type, help; defaults from the signature)
features.options = (  # type: ignore[attr-defined]
    ("points", int, "test inputs shown (a random sample of the test split)"),
    ("key_points", int, "key verification inputs shown at most"),
    ("perplexity", float, "t-SNE perplexity (capped at a third of the points)"),
)


def _plot(plt, png: Path, views: dict, labels: np.ndarray, n_test: int, class_names, config, seed: int) -> None:
    num_classes = max(len(class_names), int(labels.max()) + 1)
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    fig, axes = plt.subplots(2, 2, figsize=FIGSIZE, dpi=DPI)
    for col, name in enumerate(MODELS):
        coords, predicted = views[name]["coords"], views[name]["predicted"]
        for row, method in enumerate(METHODS):
            ax = axes[row][col]
            xy = coords[method]
            ax.scatter(
                xy[:n_test, 0], xy[:n_test, 1], c=[cmap(int(c) % cmap.N) for c in labels[:n_test]], s=9, alpha=0.6
            )
            if len(xy) > n_test:
                ax.scatter(
                    xy[n_test:, 0],
                    xy[n_test:, 1],
                    c=[cmap(int(c) % cmap.N) for c in predicted[n_test:]],
                    marker="*",
                    s=140,
                    edgecolors="black",
                    linewidths=0.9,
                )
            ax.set_title(f"{name}: {'PCA' if method == 'pca' else 't-SNE'}")
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [
        plt.Line2D(
            [], [], marker="o", ls="", color=cmap(c % cmap.N), label=class_names[c] if c < len(class_names) else c
        )
        for c in range(num_classes)
    ]
    handles.append(
        plt.Line2D([], [], marker="*", ls="", markersize=13, markerfacecolor="white", markeredgecolor="black")
    )
    handles[-1].set_label("key input (colour: class the model gives it)")
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(
        f"Penultimate features on {config.dataset}: {config.scheme} victim vs {config.thief} surrogate (seed {seed})"
    )
    fig.subplots_adjust(left=0.03, right=0.97, top=0.93, bottom=0.1, wspace=0.05, hspace=0.12)
    fig.savefig(png, dpi=DPI)
    plt.close(fig)
