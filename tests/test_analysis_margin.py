"""The margin-radius and location studies, the feature-sharing watermark's ``trainable_from`` and the margin
watermark's Mixup triggers (``mixup_components``)."""

from __future__ import annotations

import copy
import csv
import itertools
import struct

import numpy as np
import pytest
import torch
from conftest import margin_null_draws

import copycatch as cc
from copycatch.bench.analysis import STUDIES, StudyConfig, run_study, study_models
from copycatch.bench.analysis.location import _depths as location_depths
from copycatch.bench.analysis.location import _means as location_means
from copycatch.bench.analysis.margin_radius import trigger_retention
from copycatch.core.errors import InvalidArgument
from copycatch.schemes.feature_sharing import FeatureSharingWatermark, parameterised_layers
from copycatch.schemes.margin import MarginWatermark

FS_TINY = {"distribution": "out", "ood_dataset": "synthetic:seed=11", "n_verify": 30, "finetune_epochs": 1}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """Synthetic 1×8×8 data, one epoch everywhere: every model of the module trains once, in seconds."""
    return StudyConfig(
        dataset="synthetic",
        max_train=1000,
        epochs=1,
        thief_epochs=1,
        thief_queries=300,
        scheme_params={"n_triggers": 30},
        seeds=(0, 1),
        cache_dir=str(tmp_path_factory.mktemp("analysis-cache")),
    )


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


# -- margin-radius -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def radius_run(config, tmp_path_factory):
    return run_study("margin-radius", config, str(tmp_path_factory.mktemp("radius")), max_radius=6, pgd_steps=5)


def test_margin_radius_writes_one_row_per_seed_model_and_radius(radius_run, config):
    assert STUDIES.get("margin-radius").factory.default_scheme == "margin"
    rows = _rows(radius_run.csv)
    assert list(rows[0]) == ["seed", "model", "radius", "watermark_accuracy"]
    assert len(rows) == radius_run.rows == len(config.seeds) * 3 * 7
    assert {r["model"] for r in rows} == {"victim", "surrogate", "clean"}
    assert sorted({round(float(r["radius"]) * 255, 6) for r in rows}) == list(range(7))
    assert all(0.0 <= float(r["watermark_accuracy"]) <= 1.0 for r in rows)
    assert set(radius_run.summary) == {"victim", "surrogate", "clean"}
    assert _png_size(radius_run.png) == (720, 480)


def test_margin_radius_starts_at_the_plain_watermark_accuracy_and_never_rises(radius_run, config):
    rows = _rows(radius_run.csv)
    for seed in config.seeds:
        models = study_models(config, seed)  # cached: nothing trains again
        for name in ("victim", "surrogate", "clean"):
            curve = [float(r["watermark_accuracy"]) for r in rows if r["model"] == name and int(r["seed"]) == seed]
            plain = cc.verify(getattr(models, name), models.key, sequential=False).evidence
            assert curve[0] == pytest.approx(plain.metrics["watermark_accuracy"])
            assert all(b <= a for a, b in itertools.pairwise(curve)), (name, curve)


def test_pgd_moves_triggers_off_their_label_on_an_unmarked_model(splits):
    """An untrained network keeps no margin: a radius of 64/255 flips most of the triggers it happens to keep."""
    model = cc.create_for("mlp", splits, seed=0)
    x = splits.owner_holdout.x[:100]
    labels = model(x).argmax(1).detach()  # every trigger starts on its label
    shares = trigger_retention(model, x, labels, [0.0, 64 / 255], steps=10)
    assert shares[0] == 1.0 and shares[1] < 0.5
    with pytest.raises(InvalidArgument, match="ascending"):
        trigger_retention(model, x, labels, [0.1, 0.0])


def test_margin_radius_refuses_another_scheme_and_bad_options(config, tmp_path):
    with pytest.raises(InvalidArgument, match="margin key"):
        run_study("margin-radius", config.replace(scheme="feature-sharing"), str(tmp_path))
    with pytest.raises(InvalidArgument, match="max_radius"):
        run_study("margin-radius", config, str(tmp_path), max_radius=0)


# -- location and trainable_from -----------------------------------------------------------------------------------


def test_location_study_reports_victim_and_surrogate_per_depth(config, tmp_path):
    fs = config.replace(scheme="feature-sharing", scheme_params=FS_TINY, seeds=(0,))
    assert STUDIES.get("location").factory.default_scheme == "feature-sharing"
    result = run_study("location", fs, str(tmp_path), depths="1,4")
    rows = _rows(result.csv)
    assert list(rows[0]) == ["seed", "depth", "model", "watermark_accuracy", "p_value", "accuracy"]
    assert [(r["depth"], r["model"]) for r in rows] == [
        ("1", "victim"),
        ("1", "surrogate"),
        ("4", "victim"),
        ("4", "surrogate"),
    ]
    for r in rows:
        assert all(0.0 <= float(r[c]) <= 1.0 for c in ("watermark_accuracy", "p_value", "accuracy"))
    assert result.summary["layers"] == 4 and result.summary["default_depth"] == 1  # finetune="last-layer"
    assert result.png is not None and result.png.stat().st_size > 1000
    models = study_models(fs, 0, scheme_params={**FS_TINY, "trainable_from": 1})  # cached by the study
    evidence = cc.verify(models.victim, models.key, sequential=False).evidence
    assert float(rows[0]["p_value"]) == pytest.approx(evidence.p_value)
    with pytest.raises(InvalidArgument, match=r"not in \[1, 4\]"):
        run_study("location", fs, str(tmp_path), depths=[0, 2])
    # in distribution the scheme's own default split is the decision layers, and the study marks that depth
    in_distribution = config.replace(scheme_params={**FS_TINY, "distribution": "in"}, seeds=(0,))
    assert location_depths(in_distribution, "1")[2] == 2


def _embed_fs(trained, splits, **params):
    model = copy.deepcopy(trained)
    emb = FeatureSharingWatermark(**{**FS_TINY, **params}).embed(model, splits, train=cc.TrainConfig(epochs=1, seed=0))
    return model, emb.key


def test_trainable_from_none_is_the_default_split_bit_for_bit(trained, splits):
    before, key_before = _embed_fs(trained, splits)
    for explicit in ({"trainable_from": None}, {"trainable_from": 1}):  # the default tunes the output layer alone
        after, key_after = _embed_fs(trained, splits, **explicit)
        assert before.state_dict().keys() == after.state_dict().keys()
        assert all(torch.equal(v, after.state_dict()[k]) for k, v in before.state_dict().items())
        assert all(torch.equal(key_before[t], key_after[t]) for t in ("verify_x", "source_class", "target_class"))
    deeper, _ = _embed_fs(trained, splits, trainable_from=2)
    assert any(not torch.equal(v, deeper.state_dict()[k]) for k, v in before.state_dict().items())


def test_trainable_from_freezes_all_but_the_last_k_layers(trained, splits):
    layers = len(parameterised_layers(trained.net))
    assert layers >= 2
    model, _ = _embed_fs(trained, splits, trainable_from=1)
    original = dict(trained.state_dict())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    last = parameterised_layers(model.net)[-1]
    prefix = next(f"net.{name}." for name, module in model.net.named_modules() if module is last)
    assert changed == {f"{prefix}{name}" for name, _ in last.named_parameters()}
    assert all(q.requires_grad for q in model.parameters())  # the frozen layers' gradients are back on


def test_trainable_from_rejects_bad_values(trained, splits):
    for bad in (0, -2):
        with pytest.raises(InvalidArgument, match=f"trainable_from must be >= 1.*{bad}"):
            FeatureSharingWatermark(**FS_TINY, trainable_from=bad)
    with pytest.raises(InvalidArgument, match="finetune='whole-network' trains every layer"):
        FeatureSharingWatermark(**FS_TINY, trainable_from=1, finetune="whole-network")
    with pytest.raises(InvalidArgument, match=r"trainable_from=99: .* must be in \[1, "):
        _embed_fs(trained, splits, trainable_from=99)


# -- Mixup triggers ------------------------------------------------------------------------------------------------


def test_one_mixup_component_is_the_default_key_bit_for_bit(tiny):
    default = tiny.embed("margin", epochs=1, n_triggers=30)
    one = tiny.embed("margin", epochs=1, n_triggers=30, mixup_components=1)
    for name in ("trigger_x", "trigger_true", "trigger_label"):
        assert default.key[name].dtype == one.key[name].dtype and torch.equal(default.key[name], one.key[name])
    assert all(torch.equal(v, one.victim.state_dict()[k]) for k, v in default.victim.state_dict().items())


def _best_pair(splits, trigger):
    """Over every pair (a, b) of holdout images (pixel levels), the least-squares w ∈ [0, 1] with trigger ≈
    w·a + (1−w)·b: (L∞ error of the best pair, its heavier image's index, w)."""
    flat = (splits.owner_holdout.x * 255).round().double().flatten(1)
    i, j = torch.triu_indices(len(flat), len(flat), offset=1)
    a, b = flat[i], flat[j]
    d = a - b
    w = (((trigger - b) * d).sum(1) / (d * d).sum(1).clamp_min(1e-9)).clamp(0, 1)
    error = (w[:, None] * d + b - trigger).abs().amax(1)
    best = int(error.argmin())
    return float(error[best]), int(i[best] if w[best] >= 0.5 else j[best]), float(w[best])


@pytest.mark.parametrize("weights", ["uniform", "dirichlet"])
def test_two_component_triggers_are_convex_mixes_of_two_holdout_images(splits, weights):
    x_u8, true, labels = MarginWatermark(n_triggers=30, mixup_components=2, mixup_weights=weights).make_trigger_set(
        splits, torch.Generator().manual_seed(3)
    )
    assert x_u8.dtype == torch.uint8 and (labels != true).all()
    holdout = (splits.owner_holdout.x * 255).round().double().flatten(1)
    for t, y in zip(x_u8.double().flatten(1), true):
        error, heaviest, w = _best_pair(splits, t)
        # within a level of a mix of two holdout images (quantisation leaves half a level, the least-squares w a
        # little more); no unrelated pair comes near
        assert error <= 1.0
        if weights == "uniform":
            assert w == pytest.approx(0.5, abs=0.02)
            assert (holdout - t).abs().amax(1).min() >= 1, "a trigger equal to a holdout image is no mix"
        elif abs(w - 0.5) > 0.05:
            assert int(splits.owner_holdout.y[heaviest]) == int(y), "trigger_true is the heaviest component's class"


def test_mixup_parameters_are_checked():
    with pytest.raises(InvalidArgument, match=r"mixup_components must be >= 1.*got 0"):
        MarginWatermark(mixup_components=0)
    with pytest.raises(InvalidArgument, match="mixup_weights"):
        MarginWatermark(mixup_weights="beta")


def test_mixup_components_above_the_holdout_are_refused(splits):
    scheme = MarginWatermark(n_triggers=10, mixup_components=len(splits.owner_holdout) + 1)
    with pytest.raises(InvalidArgument, match=f"mixup_components={len(splits.owner_holdout) + 1} exceeds"):
        scheme.make_trigger_set(splits, torch.Generator().manual_seed(0))


def test_an_innocent_model_is_not_accused_on_a_mixup_key(tiny, innocent):
    emb = tiny.embed("margin", epochs=6, n_triggers=30, mixup_components=2)
    assert cc.verify(innocent, emb.key, alpha=0.05, sequential=False).evidence.verdict == "not stolen"
    assert cc.verify(emb.victim, emb.key, alpha=0.05, sequential=False).evidence.exact


@pytest.mark.parametrize("components", [2, 5])
def test_mixup_null_p_values_stay_valid_over_independent_keys(splits, innocent, components):
    """300 independent Mixup keys against a model trained on the same task, which is often drawn to a lighter
    component's class: the binomial null with rate 1/(C−1) still holds (false-positive rate at 0.05 ≤ 0.07)."""
    scheme = MarginWatermark(n_triggers=60, mixup_components=components)
    p, ms = margin_null_draws(scheme, splits, innocent, first_seed=20_000)
    assert np.mean(ms) > 15, "the innocent model must misclassify enough mixes for the test to mean anything"
    n = len(p)
    for u in (0.01, 0.05, 0.1, 0.25, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / n), u


def test_location_summary_keeps_the_worst_seeds_p_value_and_averages_the_rest():
    rows = [
        {"model": m, "depth": 1, "watermark_accuracy": acc, "p_value": p, "accuracy": 0.8}
        for m in ("victim", "surrogate")
        for acc, p in ((0.9, 1e-12), (0.7, 0.02))
    ]
    means = location_means(rows, [1])
    assert means["surrogate"]["p_value"][0][0] == 0.02 and means["surrogate"]["p_value"][1][0] == 0.0
    assert means["victim"]["watermark_accuracy"][0][0] == pytest.approx(0.8)
