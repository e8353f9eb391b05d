"""The CLI end to end on tiny synthetic data, and its one-line errors for user mistakes."""

import json

import numpy as np
import pytest

from copycatch.cli.main import main
from copycatch.cli.options import EXIT_ERROR, EXIT_INCONCLUSIVE, EXIT_NOT_STOLEN, EXIT_STOLEN

DATA = ["--data", "synthetic", "-q"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def victim_files(workdir):
    victim, key = workdir / "victim.safetensors", workdir / "victim.cckey"
    assert (
        main(
            [
                "embed",
                "--scheme",
                "margin",
                "--arch",
                "mlp",
                "-p",
                "n_triggers=30",
                "-o",
                str(victim),
                "--key",
                str(key),
                "--epochs",
                "6",
                "--max-cost",
                "none",
                *DATA,
            ]
        )
        == 0
    )
    return victim, key


def test_embed_steal_verify_train_flow(capsys, victim_files, workdir, tiny):
    victim, key = victim_files
    surrogate = workdir / "surrogate.safetensors"
    steal = ["steal", "--victim", str(victim), "--arch", "mlp", "--budget", "500", "-o", str(surrogate)]
    code, out, _ = run(capsys, *steal, *tiny.flags(), *DATA)
    assert code == 0 and "500 queries" in out
    code, out, _ = run(capsys, "verify", "--key", str(key), "--suspect", str(victim), "--json")
    evidence = json.loads(out)
    assert code == 0 and evidence["verdict"] == "stolen" and evidence["p_value"] < 1e-3
    innocent = workdir / "innocent.safetensors"
    train = ["train", "--arch", "mlp", "--on", "attacker_pool", "-o", str(innocent)]
    code, out, _ = run(capsys, *train, *tiny.flags(), *DATA)
    assert code == 0 and "test accuracy" in out
    code, out, _ = run(capsys, "verify", "--key", str(key), "--suspect", str(innocent))
    assert code == EXIT_NOT_STOLEN and "NOT STOLEN" in out and "null hypothesis" in out


def test_verify_exits_with_its_verdict(capsys, victim_files, tmp_path):
    """0 stolen, 1 not stolen, 4 inconclusive (alpha out of reach, or the budget ran out), 2 error: distinct from each
    other and from embed's 3, so a script can branch on the verdict."""
    assert len({EXIT_STOLEN, EXIT_NOT_STOLEN, EXIT_ERROR, EXIT_INCONCLUSIVE, 3}) == 5
    victim, key = victim_files
    innocent = tmp_path / "innocent.safetensors"
    assert main(["train", "--arch", "mlp", "--on", "attacker_pool", "--epochs", "2", "-o", str(innocent), *DATA]) == 0
    capsys.readouterr()
    verify = ["verify", "--key", str(key), "-q"]
    code, out, _ = run(capsys, *verify, "--suspect", str(victim), "--json")
    assert code == EXIT_STOLEN and json.loads(out)["verdict"] == "stolen"
    code, out, _ = run(capsys, *verify, "--suspect", str(innocent), "--json")
    assert code == EXIT_NOT_STOLEN and json.loads(out)["verdict"] == "not stolen"
    # alpha below the smallest p-value 30 triggers can give: "not stolen" by construction, so no verdict
    for suspect in (victim, innocent):
        code, out, err = run(capsys, *verify, "--suspect", str(suspect), "--alpha", "1e-30")
        assert code == EXIT_INCONCLUSIVE and "NOT STOLEN" in out and "can never reach alpha=1e-30" in err, err
    # the query budget runs out before the sequential test decides: inconclusive, the answers kept for --resume
    report = tmp_path / "case"
    budget = [*verify, "--suspect", str(victim), "--batch", "5", "--report", str(report)]
    code, out, err = run(capsys, *budget, "--budget", "5")
    assert code == EXIT_INCONCLUSIVE and out == "" and err.startswith("copycatch: inconclusive: "), err
    assert "budget" in err and "--resume" in err and err.count("\n") == 1
    code, out, err = run(capsys, *budget, "--budget", "30", "--resume", "--json")
    assert code == EXIT_STOLEN and json.loads(out)["transcript"]["replayed_this_session"] == 5, err
    code, _, err = run(capsys, *verify, "--suspect", str(tmp_path / "missing.safetensors"))
    _one_line_error(code, err, "missing.safetensors")


def test_verify_exits_error_on_a_bug_never_not_stolen(capsys, victim_files, monkeypatch):
    """An unexpected exception would exit 1 (Python's status), which reads "not stolen": verify exits 2 instead."""
    victim, key = victim_files

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("copycatch.api.verify", broken)
    code, out, err = run(capsys, "verify", "--key", str(key), "--suspect", str(victim))
    assert code == EXIT_ERROR and out == "" and "RuntimeError: a bug" in err and "no verdict" in err


def test_key_show_hides_secrets_unless_asked(capsys, victim_files):
    _, key = victim_files
    code, out, _ = run(capsys, "key", "show", str(key))
    assert code == 0 and "trigger_label: int64 30" in out and "hidden" in out and "[" not in out.split("secrets:")[1]
    code, out, _ = run(capsys, "key", "show", str(key), "--secrets", "--json")
    assert len(json.loads(out)["tensors"]["trigger_label"]["values"]) == 30


@pytest.mark.parametrize("verb", ["data", "models", "train", "embed", "steal", "verify", "key", "demo"])
def test_every_verb_has_help(capsys, verb):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    assert "usage: copycatch " + verb in capsys.readouterr().out


def test_embed_help_lists_schemes_with_descriptions(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = capsys.readouterr().out
    assert "margin" in out and "Margin-based watermark" in out and "cnn-small" in out


def _one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("copycatch: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_missing_data_is_one_line_with_instructions(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("COPYCATCH_DATA_DIR", raising=False)
    monkeypatch.setattr("copycatch.data.fashion_mnist.DEBIAN_FASHION_MNIST", tmp_path / "none")
    code, _, err = run(capsys, "data", "show", "--data", "fashion-mnist", "--data-dir", str(tmp_path))
    _one_line_error(code, err, "apt-get install")


def test_unknown_names_list_the_valid_ones(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--arch", "resnet9000", "-o", str(tmp_path / "m"), *DATA)
    _one_line_error(code, err, "unknown architecture 'resnet9000'", "cnn-small")
    code, _, err = run(
        capsys, "embed", "--scheme", "nope", "-o", str(tmp_path / "m"), "--key", str(tmp_path / "k"), *DATA
    )
    _one_line_error(code, err, "unknown scheme 'nope'", "margin")
    code, _, err = run(capsys, "data", "show", "--data", "imagenet")
    _one_line_error(code, err, "unknown data set 'imagenet'", "fashion-mnist")
    code, _, err = run(capsys, "embed", "-p", "epz=3", "-o", str(tmp_path / "m"), "--key", str(tmp_path / "k"), *DATA)
    _one_line_error(code, err, "'epz'", "n_triggers")


def test_corrupt_model_and_key_files_are_one_line_errors(capsys, victim_files, tmp_path):
    victim, key = victim_files
    broken = tmp_path / "broken.cckey"
    raw = bytearray(key.read_bytes())
    raw[-3] ^= 0xFF
    broken.write_bytes(bytes(raw))
    code, _, err = run(capsys, "verify", "--key", str(broken), "--suspect", str(victim))
    _one_line_error(code, err, "broken.cckey", "digest mismatch")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    code, _, err = run(capsys, "verify", "--key", str(key), "--suspect", str(junk))
    _one_line_error(code, err, "junk.safetensors")
    code, _, err = run(capsys, "key", "show", str(tmp_path / "missing.cckey"))
    _one_line_error(code, err, "no such key file")


def test_wrong_shapes_are_one_line_errors(capsys, victim_files, tmp_path):
    _, key = victim_files
    other = tmp_path / "digits-model.safetensors"
    assert main(["train", "--arch", "mlp", "--data", "digits", "--epochs", "1", "-o", str(other), "-q"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "verify", "--key", str(key), "--suspect", str(other))
    _one_line_error(code, err, "classes")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 2, 2, 2, 2)), y=np.zeros(10, int))
    code, _, err = run(capsys, "data", "show", "--data", str(bad))
    _one_line_error(code, err, "shape")


def test_budget_overrun_is_a_one_line_error(capsys, victim_files, tmp_path):
    victim, _ = victim_files
    code, _, err = run(capsys, "steal", "--victim", str(victim), "--budget", "0", "-o", str(tmp_path / "s"), *DATA)
    _one_line_error(code, err, "budget")


def test_unwritable_output_fails_before_any_training(capsys, tmp_path):
    (tmp_path / "adir").mkdir()
    code, _, err = run(capsys, "train", "--arch", "mlp", "-o", str(tmp_path / "adir"), *DATA)
    _one_line_error(code, err, "is a directory")


def test_demo_runs_end_to_end_and_writes_its_table(tmp_path, capsys):
    """The demo's whole path on a small real data set (scikit-learn's 8×8 digits, every class represented)."""
    pytest.importorskip("sklearn")
    from copycatch.cli.main import main

    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--data",
                "digits",
                "--out",
                str(out),
                "--epochs",
                "10",
                "-p",
                "n_triggers=40",
                "-p",
                "lam=1",
                "--surrogate-arch",
                "mlp",
                "-q",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "watermark: margin lam=1.0, ascent=free, n_triggers=40" in printed and "cost" in printed
    report = json.loads((out / "demo-results.json").read_text())
    rows = {r["model"].split(" ")[0]: r for r in report["rows"]}
    assert set(rows) == {"victim", "surrogate", "innocent", "clean"}
    assert rows["victim"]["verdict"] == "stolen" and rows["clean"]["verdict"] == "not stolen"
    assert rows["innocent"]["p_value"] > 1e-3
    assert rows["victim"]["combination"] == "fisher" and rows["victim"]["margin_p_value"] <= 1e-3
    # the suspects answer scores, so the table shows (and the nulls line describes) the rank test, not hit counts
    assert rows["victim"]["secret_rank_mean"] < 5
    assert "uniform on 1..9" in printed and "hits/m" not in printed
    for name in ("victim.safetensors", "victim.cckeys", "surrogate.safetensors", "innocent.safetensors"):
        assert (out / name).is_file()


def test_a_reader_that_stops_early_ends_the_command_quietly():
    import subprocess
    import sys

    # `true` closes the pipe before the dry run writes its 170 cells (more than the pipe's buffer)
    cmd = f"'{sys.executable}' -m copycatch.cli bench frontier-stitching --dry-run | true"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert done.stderr == "" and done.returncode == 141
