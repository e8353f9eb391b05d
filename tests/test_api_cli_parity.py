"""The Python API and the command line are one code path: same key, suspect and seed give the same verdict."""

from __future__ import annotations

import json

import pytest

import copycatch as cc
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_NOT_STOLEN, EXIT_STOLEN


@pytest.fixture(scope="module")
def case(tmp_path_factory, splits):
    """A margin key, its victim stolen by soft-label extraction, and an innocent model, all on disk."""
    folder = tmp_path_factory.mktemp("parity")
    cc.embed(
        "margin",
        splits,
        arch="mlp",
        params={"n_triggers": 40, "lam": 1},  # toy data: the paper's λ (the data-size default is for real data)
        config=cc.TrainConfig(epochs=6, seed=0),
        output=folder / "victim.safetensors",
        key_path=folder / "victim.cckey",
        max_cost=None,
    )
    cc.steal(
        folder / "victim.safetensors",
        splits.attacker_pool,
        arch="mlp",
        config=cc.TrainConfig(epochs=10, seed=1),
        output=folder / "stolen.safetensors",
    )
    cc.train(
        "mlp",
        splits,
        on="attacker_pool",
        config=cc.TrainConfig(epochs=4, seed=7),
        output=folder / "innocent.safetensors",
    )
    return folder


@pytest.mark.parametrize(("suspect", "verdict"), [("stolen", "stolen"), ("innocent", "not stolen")])
@pytest.mark.parametrize("fixed", [False, True], ids=["sequential", "fixed"])
def test_cc_verify_and_copycatch_verify_json_agree(case, capsys, suspect, verdict, fixed):
    key, model = str(case / "victim.cckey"), str(case / f"{suspect}.safetensors")
    run = cc.verify(model, key, sequential=not fixed)
    capsys.readouterr()
    code = main(["verify", "--key", key, "--suspect", model, "--json", *(["--fixed"] if fixed else [])])
    document = json.loads(capsys.readouterr().out)
    assert code == {"stolen": EXIT_STOLEN, "not stolen": EXIT_NOT_STOLEN}[verdict]
    assert run.verdict == document["verdict"] == verdict
    assert run.decision == document["decision"]
    assert run.p_value == document["evidence"][0]["p_value"]
    assert run.queries == document["queries_used"] == document["evidence"][0]["queries"]
    assert run.evidence.statistic == document["evidence"][0]["statistic"]
    assert document["settings"]["sequential"] is (not fixed)
