"""The analysis studies ``features`` and ``prms`` (``copycatch analyze``): their CSVs hold what the figures show, in
range, and the figures have their size; the CLI runs a study end to end and refuses mistakes in one line.

Tiny models on scikit-learn's digits (8×8, 10 classes): one epoch each, 300 thief queries; one cache for the module,
so each configuration trains once (the CLI test reuses the API test's models)."""

from __future__ import annotations

import csv
import math

import pytest

from copycatch import api
from copycatch.bench.analysis import STUDIES, common, features, prms
from copycatch.cli.main import main
from copycatch.core.errors import InvalidArgument

BASE = {"dataset": "digits", "max_train": 800, "epochs": 1, "thief_epochs": 1, "thief_queries": 300}
MARGIN = {**BASE, "scheme_params": {"n_triggers": 30}}
MEA = {**BASE, "scheme_params": {"n_verify": 200, "n_false_per_group": 40}}  # the scheme's tiny_params
CLI_DATA = ["--data", "digits", "--max-train", "800", "--epochs", "1", "--thief-queries", "300"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("analysis-cache"))


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _expected_size(module) -> tuple[int, int]:
    return round(module.FIGSIZE[0] * module.DPI), round(module.FIGSIZE[1] * module.DPI)


def test_both_studies_are_registered_with_their_default_scheme():
    assert {"features", "prms"} <= set(STUDIES.list())
    assert STUDIES.get("prms").factory.default_scheme == "mea-defender"
    assert STUDIES.get("features").factory.default_scheme == "margin"


def test_features_csv_holds_both_models_both_views_and_the_key(tmp_path, cache):
    result = api.analyze("features", tmp_path, cache_dir=cache, options={"points": 120, "key_points": 20}, **MARGIN)
    rows = _rows(result.csv)
    assert tuple(rows[0]) == features.COLUMNS
    assert len(rows) == result.rows == 2 * 2 * (120 + 20)
    for model in ("victim", "surrogate"):
        for method in ("pca", "tsne"):
            part = [r for r in rows if r["model"] == model and r["method"] == method]
            assert len(part) == 140 and sum(r["is_key"] == "1" for r in part) == 20
            assert all(math.isfinite(float(r["x"])) and math.isfinite(float(r["y"])) for r in part)
            assert all(0 <= int(r["label"]) < 10 and 0 <= int(r["predicted"]) < 10 for r in part)
            spread = max(float(r["x"]) for r in part) - min(float(r["x"]) for r in part)
            assert spread > 0  # not every point on one spot
    # the key points are the key's first 20 inputs (the margin key's triggers) in every view
    for model in ("victim", "surrogate"):
        for method in ("pca", "tsne"):
            keys = [
                int(r["index"]) for r in rows if r["is_key"] == "1" and (r["model"], r["method"]) == (model, method)
            ]
            assert keys == list(range(20))
    summary = result.summary
    assert summary["key_points"] == 20 and summary["test_points"] == 120 and summary["scheme"] == "margin"
    for model in ("victim", "surrogate"):
        assert summary[f"{model}_key_centroid_ratio"] > 0 and math.isfinite(summary[f"{model}_key_centroid_distance"])
        assert 0 <= summary[f"{model}_key_nearest_is_predicted"] <= 1
        assert 0 <= summary[f"{model}_test_accuracy"] <= 1
    assert summary["victim_key_agrees_with_victim"] == 1.0
    assert _png_size(result.png) == _expected_size(features)


def test_prms_csv_is_a_spectrum_of_every_class_pair(tmp_path, cache):
    result = api.analyze("prms", tmp_path, cache_dir=cache, options={"per_pair": 12}, **MEA)
    rows = _rows(result.csv)
    assert tuple(rows[0]) == prms.COLUMNS
    assert len(rows) == result.rows == 2 * 10 * 10  # victim and surrogate, C×C ordered pairs
    for model in ("victim", "surrogate"):
        part = [r for r in rows if r["model"] == model]
        assert {(int(r["class_a"]), int(r["class_b"])) for r in part} == {(a, b) for a in range(10) for b in range(10)}
        # the key's own pair (the scheme's defaults: source_a 0, source_b 1) is marked, once
        assert [(r["class_a"], r["class_b"]) for r in part if r["watermark_pair"] == "1"] == [("0", "1")]
    for r in rows:
        top, target, a, b = (float(r[k]) for k in ("top_share", "target_share", "share_a", "share_b"))
        assert all(0.0 <= v <= 1.0 for v in (top, target, a, b))
        assert top >= max(target, a, b) - 1e-9 and top >= 1 / 10 - 1e-9
        assert r["class_a"] == r["class_b"] or a + b <= 1 + 1e-9
        assert int(r["samples"]) == 12 and 0 <= int(r["top_label"]) < 10
        assert math.isclose(top * 12, round(top * 12), abs_tol=1e-6)  # a share of 12 combinations
    summary = result.summary
    assert (summary["source_a"], summary["source_b"], summary["target"], summary["rule"]) == (0, 1, 2, "crop-paste")
    for model in ("victim", "surrogate"):
        assert 0 <= summary[f"{model}_watermark_target_share"] <= 1
        assert 1 <= summary[f"{model}_watermark_pair_rank"] <= 10 * 10
        if "target_lookalikes" in summary:  # the key leaves the target's look-alike classes out of its controls
            assert 0 <= summary[f"{model}_other_pairs_max_target_share_without_lookalikes"] <= 1
    assert _png_size(result.png) == _expected_size(prms)


def test_prms_refuses_another_scheme_before_training(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(InvalidArgument, match="'margin'"):
        api.analyze("prms", tmp_path / "out", scheme="margin", cache_dir=str(cache), **BASE)
    assert not cache.exists() and not (tmp_path / "out").exists()


def test_without_matplotlib_the_csv_is_written_and_the_figure_skipped(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(common, "pyplot", lambda: None)
    result = api.analyze("prms", tmp_path, cache_dir=cache, options={"per_pair": 2}, **MEA)
    assert result.png is None and not (tmp_path / "prms.png").exists()
    assert result.csv.is_file() and any("matplotlib" in note for note in result.notes)


def test_cli_runs_a_study_end_to_end(tmp_path, cache, capsys):
    out = tmp_path / "out"
    argv = ["analyze", "prms", *CLI_DATA, "-p", "n_verify=200", "-p", "n_false_per_group=40"]
    code = main([*argv, "--per-pair", "5", "--cache-dir", cache, "-o", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert (
        str(out / "prms.csv") in stdout
        and str(out / "prms.png") in stdout
        and "victim_watermark_target_share" in stdout
    )
    assert len(_rows(out / "prms.csv")) == 200 and _png_size(out / "prms.png") == _expected_size(prms)


def test_cli_user_mistakes_exit_2(tmp_path, capsys):
    code = main(["analyze", "prms", "--scheme", "margin", *CLI_DATA, "--cache-dir", str(tmp_path), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("copycatch: error: ") and "'margin'" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", "no-such-study"])
    assert exit_.value.code == 2 and "no-such-study" in capsys.readouterr().err


def test_cli_help_lists_the_registered_studies(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and all(name in out for name in STUDIES.list())
    with pytest.raises(SystemExit):
        main(["analyze", "prms", "--help"])
    out = capsys.readouterr().out
    assert "--per-pair" in out and "mea-defender" in out
