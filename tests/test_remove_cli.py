"""`copycatch remove` and `copycatch steal --then` end to end on tiny synthetic data."""

import json
import re

import pytest
import torch

from copycatch.attacks.removal import REMOVAL_ATTACKS
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_NOT_STOLEN, EXIT_STOLEN
from copycatch.core.key import Key
from copycatch.models.io import load_model

DATA = ["--data", "synthetic", "-q"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is fastest, and on a shared machine much faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remove")
    victim, key = folder / "victim.safetensors", folder / "victim.cckey"
    assert (
        main(
            [
                "embed",
                "--max-cost",
                "none",
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
                *DATA,
            ]
        )
        == 0
    )
    return folder, victim, key


def test_help_lists_every_attack_with_its_summary(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["remove", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    table = out.split("removal attacks (--attack")[1]
    for name, summary in REMOVAL_ATTACKS.describe():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(summary)}$", table, re.M), name
    assert "rate=0.5, scope=global" in table  # parameters with their defaults


def test_remove_chains_attacks_in_order_and_writes_a_model(capsys, files):
    folder, victim, _ = files
    out_path = folder / "laundered.safetensors"
    code, out, err = run(
        capsys,
        "remove",
        "-i",
        victim,
        "--attack",
        "prune:rate=0.5",
        "--attack",
        "fine-tune:epochs=1",
        "-o",
        out_path,
        *DATA,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("[1/2] prune:") and "50.0%" in lines[0]
    assert lines[2].startswith("[2/2] fine-tune:epochs=1")
    assert "test accuracy" in lines[1] and "->" in lines[1]
    model = load_model(out_path)
    assert [r["attack"] for r in model.provenance["removals"]] == ["prune", "fine-tune"]
    assert not (folder / "laundered.evasion.safetensors").exists()


def test_evasions_write_a_deployment_that_verify_queries(capsys, files):
    folder, victim, key = files
    out_path = folder / "deployed.safetensors"
    code, out, err = run(
        capsys,
        "remove",
        "-i",
        victim,
        "-a",
        "reject:detector=energy",
        "-a",
        "noise:sigma=0.02",
        "-o",
        out_path,
        "--verify",
        key,
        *DATA,
    )
    assert code == 0, err
    deployment = folder / "deployed.evasion.safetensors"
    assert deployment.is_file() and f"written to {deployment}" in out
    assert "verification against" in out and "p-value" in out
    code, out, err = run(capsys, "verify", "--key", key, "--suspect", deployment, "--json")
    evidence = json.loads(out)
    assert code == {"stolen": EXIT_STOLEN, "not stolen": EXIT_NOT_STOLEN}[evidence["verdict"]], err
    assert evidence["queries_used"] >= 1 and 0 <= evidence["p_value"] <= 1
    assert evidence["suspect"]["identity"] == deployment.name
    # a deployment file can take further evasions, never weight changes
    code, _, err = run(
        capsys, "remove", "-i", deployment, "-a", "noise:sigma=0.01", "-o", folder / "more.safetensors", *DATA
    )
    assert code == 0, err
    code, _, err = run(capsys, "remove", "-i", deployment, "-a", "prune", "-o", folder / "bad.safetensors", *DATA)
    assert code == 2 and "evasions last" in err and "Traceback" not in err


def test_steal_then_removals(capsys, files):
    folder, victim, _ = files
    out_path = folder / "stolen.safetensors"
    code, out, err = run(
        capsys,
        "steal",
        "--victim",
        victim,
        "--arch",
        "mlp",
        "--budget",
        "400",
        "--epochs",
        "3",
        "-o",
        out_path,
        "--then",
        "quantize:bits=6",
        "--then",
        "svd:rank=8",
        *DATA,
    )
    assert code == 0, err
    assert out.index("stole a mlp surrogate") < out.index("[1/2] quantize:bits=6") < out.index("[2/2] svd:rank=8")
    model = load_model(out_path)
    assert [r["attack"] for r in model.provenance["removals"]] == ["quantize", "svd"]
    assert int(torch.linalg.matrix_rank(model.net.features[1].weight.detach())) == 8


def test_transfer_to_another_data_set_with_another_label_set(capsys, files):
    folder, victim, _ = files
    out_path = folder / "digits.safetensors"
    code, out, err = run(
        capsys,
        "remove",
        "-i",
        victim,
        "-a",
        "transfer:layers=all",
        "--data",
        "digits",
        "--epochs",
        "8",
        "-o",
        out_path,
        "-q",
    )
    assert code == 0, err
    assert "new 10-class head (was 4)" in out
    accuracy_after = float(out.splitlines()[1].split("->")[1].split()[0])
    assert accuracy_after > 0.8  # 8×8 digits, learnt on top of the stolen synthetic-data features
    assert load_model(out_path).num_classes == 10


def test_piracy_writes_the_thiefs_key_and_json_report(capsys, files):
    folder, victim, _ = files
    out_path = folder / "pirated.safetensors"
    code, out, err = run(
        capsys,
        "remove",
        "-i",
        victim,
        "-a",
        "piracy:scheme_params=n_triggers=20;trigger_batch=5",
        "-o",
        out_path,
        "--epochs",
        "2",
        "--json",
        *DATA,
    )
    assert code == 0, err
    report = json.loads(out)
    step = report["steps"][0]
    assert step["attack"] == "piracy" and step["info"]["key"]["scheme"] == "margin"
    pirate = Key.load(step["pirate_key"])
    assert pirate.digest == step["info"]["key_digest"] and step["pirate_key"].endswith("pirated.pirate.cckey")
    assert report["output"] == str(out_path) and 0 <= step["accuracy_after"] <= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-a", "no-such-attack"], "valid removal attacks"),
        (["-a", "prune:rate=2"], "rate=2"),
        (["-a", "prune", "--data", "digits"], "only a first `transfer`"),  # 8×8 like the model, but 10 classes
        (["-a", "prune", "--data", "mnist-5k"], "inputs shaped"),
    ],
)
def test_mistakes_are_one_line_errors(capsys, files, argv, message):
    folder, victim, _ = files
    try:  # argparse rejects bad specs before any work (SystemExit); the rest is a CopycatchError (exit 2)
        code = main(["remove", "-i", str(victim), "-o", str(folder / "x.safetensors"), "-q", *argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (folder / "x.safetensors").exists()


def test_steal_rejects_a_bad_then_spec_before_stealing(capsys, files):
    folder, victim, _ = files
    with pytest.raises(SystemExit) as exit_:
        main(["steal", "--victim", str(victim), "-o", str(folder / "y.safetensors"), "--then", "prune:rat=0.5", *DATA])
    assert exit_.value.code == 2 and "valid keys" in capsys.readouterr().err
    assert not (folder / "y.safetensors").exists()
