"""Calibration: reference innocent models of every kind, the empirical null, FPR with exact intervals, warnings,
the file beside the key, and verify picking it up."""

import json

import pytest
import torch

import copycatch as cc
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_NOT_STOLEN
from copycatch.core.errors import CorruptFile, InvalidArgument
from copycatch.core.key import Key
from copycatch.schemes.margin import MarginWatermark
from copycatch.verification.calibration import (
    KINDS,
    Calibration,
    CalibrationPlan,
    ReferenceModel,
    build_reference_models,
    calibrate,
    calibration_path,
    clopper_pearson,
)


def margin_key(splits, n_triggers=40, seed=0):
    scheme = MarginWatermark(n_triggers=n_triggers)
    x_u8, true, labels = scheme.make_trigger_set(splits, torch.Generator().manual_seed(seed))
    return Key(
        "margin",
        scheme.params.to_dict(),
        {"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
        meta={"num_classes": 4, "input_shape": [1, 8, 8], "dataset": "synthetic"},
    )


@pytest.fixture(scope="module")
def references(splits):
    plan = CalibrationPlan(n_models=4, archs=("mlp", "lenet"), epochs=1)
    return build_reference_models(splits, plan)


def test_reference_models_cover_every_kind_with_distinct_seeds(references):
    assert [r.kind for r in references] == list(KINDS)
    assert len({r.info["seed"] for r in references}) == 4 and {r.info["arch"] for r in references} == {"mlp", "lenet"}
    extracted = references[KINDS.index("extracted")]
    assert extracted.info["extraction"] == "soft-label" and extracted.info["other_owner_arch"] in {"mlp", "lenet"}
    assert all(r.oracle.num_classes == 4 for r in references)


def test_clopper_pearson_matches_closed_forms():
    lo, hi = clopper_pearson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 20), rel=1e-6)
    lo, hi = clopper_pearson(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 20), rel=1e-6)


def test_calibration_records_the_null_and_the_false_positive_rate(references, splits, tmp_path):
    key = margin_key(splits)
    cal = calibrate(key, references, alphas=[1e-3, 0.05])
    assert cal.n == 4 and cal.scheme == "margin" and cal.statistic_name.startswith("secret label's rank")
    assert all(0 <= p <= 1 for p in cal.p_values) and len(cal.statistics) == 4
    fpr = cal.false_positive_rate(0.05)
    assert fpr["n"] == 4 and fpr["false_positives"] == sum(p <= 0.05 for p in cal.p_values)
    assert cal.min_p_value == pytest.approx((1 / 3) ** 40)
    assert cal.empirical_p_value(0.0) == 1 / 5 and cal.empirical_p_value(1.0) == 1.0
    path = cal.save(tmp_path / "k.calibration.json")
    again = Calibration.load(path, key=key)
    assert again.p_values == cal.p_values and again.references[0]["kind"] == "owner-data"
    with pytest.raises(CorruptFile, match="made for key"):
        Calibration.load(path, key=margin_key(splits, seed=1))
    assert "alpha=0.05" in cal.summary() and "95% CI" in cal.summary()


def test_warns_when_the_key_can_never_reach_alpha(references, splits):
    cal = calibrate(margin_key(splits, n_triggers=3), references[:1], alphas=[1e-3])
    assert cal.min_p_value == pytest.approx(1 / 27)
    assert any("too small to ever reach alpha=0.001" in w for w in cal.warnings())


def test_warns_when_innocent_models_are_called_stolen_too_often():
    refs = [{"name": f"r{i}", "kind": "given", "statistic": 9.0, "p_value": 1e-4 if i < 6 else 0.5} for i in range(20)]
    cal = Calibration("d" * 64, "margin", "hits", refs, [0.05])
    fpr = cal.false_positive_rate(0.05)
    assert fpr["false_positives"] == 6 and fpr["ci95"][0] > 0.05 and not fpr["consistent_with_alpha"]
    assert any("anti-conservative" in w for w in cal.warnings())


def test_plan_rejects_bad_values(splits):
    with pytest.raises(InvalidArgument, match="subset"):
        CalibrationPlan(subset=0).validate()
    with pytest.raises(InvalidArgument, match="unknown architecture"):
        build_reference_models(splits, CalibrationPlan(n_models=1, archs=("nope",)))


def test_cli_calibrate_writes_beside_the_key_and_verify_uses_it(capsys, splits, trained, references, tmp_path):
    key_path = margin_key(splits).save(tmp_path / "victim.cckey")
    innocent = cc.save_model(trained, tmp_path / "innocent.safetensors")
    code = main(["calibrate", "--key", str(key_path), "--train", "0", "--innocent", str(innocent), "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "1 given" in out and calibration_path(key_path).is_file()
    assert "empirical p-values from 1 references cannot go below 0.5" in out
    code = main(["verify", "--key", str(key_path), "--suspect", str(innocent), "--report", str(tmp_path / "rep"), "-q"])
    assert code == EXIT_NOT_STOLEN
    record = json.loads((tmp_path / "rep" / "evidence.json").read_text())
    assert record["evidence"][0]["metrics"]["calibrated_p_value"] == 1.0
    assert record["evidence"][0]["details"]["calibration"]["references"] == 1
    assert "class='reference'" in (tmp_path / "rep" / "report.html").read_text()


def test_cli_calibrate_needs_some_references(capsys, splits, tmp_path):
    key_path = margin_key(splits).save(tmp_path / "victim.cckey")
    assert main(["calibrate", "--key", str(key_path), "--train", "0"]) == 2
    assert "no reference models" in capsys.readouterr().err


def test_given_reference_wraps_any_oracle(trained, splits):
    ref = ReferenceModel("mine", "given", cc.ModelOracle(trained), {"source": "memory"})
    cal = calibrate(margin_key(splits), [ref], alphas=[0.05])
    assert cal.references[0]["source"] == "memory" and cal.references[0]["queries"] == 40
