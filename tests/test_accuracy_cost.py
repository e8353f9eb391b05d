"""The accuracy-cost guard: the victim against a clean reference on the test split, recorded in the key, loud past
the limit (Python: AccuracyCostExceeded after the files are written; CLI: exit status 3) unless allowed."""

import json

import pytest

import copycatch as cc
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_COST
from copycatch.models.io import weights_digest

TOO_STRONG = {"n_triggers": 40, "trigger_batch": 10, "lam": 10.0}  # the trigger loss swamps the task
GENTLE = {"n_triggers": 40, "trigger_batch": 10, "lam": 0.05}
DATA = ["--data", "synthetic", "--arch", "mlp", "--epochs", "2", "-q"]


def test_the_guard_fires_on_an_over_strong_setting_and_keeps_the_work(tiny, tmp_path):
    victim, key = tmp_path / "victim.safetensors", tmp_path / "victim.cckey"
    with pytest.raises(cc.AccuracyCostExceeded, match=r"lam \(now 10.0\), e.g. params=\{'lam': 5.0\}") as caught:
        cc.embed(
            "trigger-set",
            tiny.splits,
            arch="mlp",
            params=TOO_STRONG,
            config=tiny.config(epochs=2),
            output=victim,
            key_path=key,
        )
    embedding = caught.value.embedding
    record = embedding.info["accuracy_cost"]
    assert record["exceeded"] and record["cost_points"] > 1.5 and record["split"] == "test"
    assert record["reference_source"] == "trained" and record["inputs"] == len(tiny.splits.test)
    assert record["strength"] == {"param": "lam", "value": 10.0, "try": 5.0}
    assert record["reference_accuracy"] - record["victim_accuracy"] == pytest.approx(record["cost_points"] / 100)
    loaded = cc.Key.load(key)  # written before the error: the cost is in the key, and the victim names that key
    assert loaded.meta["accuracy_cost"] == record and loaded.digest == embedding.key.digest
    assert cc.load_model(victim).provenance["key_digest"] == loaded.digest
    allowed = cc.embed(
        "trigger-set", tiny.splits, arch="mlp", params=TOO_STRONG, config=tiny.config(epochs=2), allow_cost=True
    )
    assert allowed.info["accuracy_cost"]["exceeded"] and allowed.victim.provenance["key_digest"] == allowed.key.digest


def test_a_gentle_mark_passes_and_a_given_or_pretrained_reference_is_used(tiny, trained):
    gentle = cc.embed("trigger-set", tiny.splits, arch="mlp", params=GENTLE, config=tiny.config(epochs=2))
    assert gentle.info["accuracy_cost"]["status"] == "within the limit"
    given = cc.embed(
        "trigger-set",
        tiny.splits,
        arch="mlp",
        params=GENTLE,
        config=tiny.config(epochs=2),
        reference=trained,
        max_cost=None,
    )
    record = given.info["accuracy_cost"]
    assert record["reference_source"] == "given" and record["reference_sha256"] == weights_digest(trained)
    assert record["status"] == "no limit" and not record["exceeded"]
    skipped = cc.embed(
        "trigger-set", tiny.splits, arch="mlp", params=GENTLE, config=tiny.config(epochs=2), max_cost=None
    )
    cost = skipped.key.meta["accuracy_cost"]
    assert cost["status"] == "skipped" and "cost_points" not in cost
    # DynaMarks trains its clean model first: that model is the reference, and the API keeps every label
    api = cc.embed("dynamarks", tiny.splits, arch="mlp", params=tiny.params("dynamarks"), config=tiny.config())
    record = api.info["accuracy_cost"]
    assert record["reference_source"] == "pretrained" and record["cost_points"] == 0.0
    assert record["measured_through"] == "the protected API" and record["strength"] is None


def test_cli_exits_3_with_a_loud_warning_and_key_show_prints_the_cost(tmp_path, capsys):
    victim, key = tmp_path / "v.safetensors", tmp_path / "v.cckey"
    argv = ["embed", "--scheme", "trigger-set", "-p", "lam=10", "-p", "n_triggers=40", "-p", "trigger_batch=10"]
    argv += ["-o", str(victim), "--key", str(key), *DATA]
    assert main(argv) == EXIT_COST == 3
    out, err = capsys.readouterr()
    assert victim.is_file() and key.is_file() and "key written" in out and "accuracy cost: +" in out
    assert "WARNING" in err and "e.g. -p lam=5.0" in err and "--allow-cost" in err
    assert main(["key", "show", str(key)]) == 0
    out = capsys.readouterr().out
    assert "points of test accuracy" in out and "on the test split" in out and "reference: a clean mlp" in out
    assert main(["key", "show", str(key), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["accuracy_cost"]["exceeded"] is True
    assert main([*argv, "--allow-cost"]) == 0
    assert "accepted with --allow-cost" in capsys.readouterr().err
    assert main([*argv, "--max-cost", "none"]) == 0
    assert "not measured" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--max-cost", "lots"])
    assert refused.value.code == 2 and "expected points of accuracy" in capsys.readouterr().err
