"""`protect` with a fingerprint: a third part made of the watermarked victim that changes neither its weights nor its
answers; the key set declares its parts dependent, so verify combines them with Holm's adjustment, not Fisher's."""

from __future__ import annotations

import json

import pytest
import torch

import copycatch as cc
from copycatch.cli.commands.serve import _protection
from copycatch.cli.main import main
from copycatch.core import checkpoint as ckpt
from copycatch.core.commitment import key_seed_of, sub_seed
from copycatch.core.errors import InvalidArgument
from copycatch.core.keyset import KeySet
from copycatch.models.io import weights_digest
from copycatch.schemes import protect_oracle
from copycatch.schemes.protection import DEPENDENCE, part_seed
from copycatch.serve import ServeConfig, create_app

SCHEME = "dataset-inference"


@pytest.fixture(scope="module")
def data(tiny):
    """The fingerprint's own tiny data (few noisy examples: the owner's MLP memorises them)."""
    return tiny.for_scheme(SCHEME).splits


def protect(data, tiny, fingerprint: str | None = SCHEME, **options) -> cc.Protection:
    """The stack on the tiny data: margin, DynaMarks and (by default) dataset inference, each at toy size."""
    return cc.protect(
        data,
        watermark_params=tiny.params("margin"),
        api_params=tiny.params("dynamarks"),
        fingerprint=fingerprint,
        fingerprint_params=tiny.params(fingerprint) if fingerprint else None,
        arch="mlp",
        config=tiny.config(epochs=8),
        max_cost=None,  # the tiny task is no place to judge accuracy cost (tests/test_accuracy_cost.py does)
        **options,
    )


@pytest.fixture(scope="module")
def protected(data, tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("protect-fingerprint")
    protection = protect(data, tiny, output=folder / "victim.safetensors", keys=folder / "victim.cckeys")
    protection.folder = folder
    return protection


def test_the_fingerprint_is_a_third_part_that_leaves_the_victim_as_it_is(protected, data, tiny):
    keyset = protected.keyset
    assert [k.scheme for k in keyset] == ["margin", "dynamarks", SCHEME]
    assert [cc.scheme_for_key(k).kind for k in keyset] == ["watermark", "watermark", "fingerprint"]
    assert keyset.meta["seeds"] == [0, part_seed(0, 1, "dynamarks"), part_seed(0, 2, SCHEME)]
    assert not keyset.independent and keyset.meta["dependence"] == DEPENDENCE
    assert protected.info["fingerprint"]["weights_untouched"]
    # the fingerprint is made after the watermark, of the victim as it is: the same seeds give the same weights
    plain = protect(data, tiny, fingerprint=None)
    assert weights_digest(protected.victim) == weights_digest(plain.victim)
    assert keyset.keys[2].meta["victim_sha256"] == weights_digest(protected.victim)
    assert protected.victim.provenance["protection"]["schemes"] == ["margin", "dynamarks", SCHEME]
    assert protected.victim.provenance["scheme"] == "margin"  # the weights carry the watermark, not the fingerprint


def test_the_key_set_round_trips_and_verify_combines_with_holm(protected, data, tiny):
    path = protected.folder / "victim.cckeys"
    loaded = KeySet.load(path)
    assert loaded.digest == protected.keyset.digest and loaded.meta["dependence"] == DEPENDENCE
    assert [k.digest for k in loaded] == [k.digest for k in protected.keyset]
    run = cc.verify(protected.victim, path, sequential=False)
    assert [e.scheme for e in run.evidences] == ["margin", "dynamarks", SCHEME]
    assert all(0.0 < e.p_value <= 1.0 for e in run.evidences)
    assert run.combined.method == "holm" and not run.combined.independent
    assert "depend on each other" in run.combined.reason and "fingerprint" in run.combined.reason
    assert run.p_value == min(run.combined.holm_adjusted) <= 1e-3 and run.verdict == "stolen"
    innocent = cc.train("mlp", data, on="attacker_pool", config=tiny.config(epochs=8, seed=5), hidden=64)
    cleared = cc.verify(innocent, path, sequential=False)
    assert cleared.combined.method == "holm" and cleared.verdict == "not stolen", cleared.combined.summary()


def test_the_served_answers_ignore_the_fingerprint(protected, data):
    x = data.test.x[:64]
    served = protect_oracle(cc.ModelOracle(protected.victim), protected.keyset).query(x)
    without = protect_oracle(cc.ModelOracle(protected.victim), protected.keyset.keys[:2]).query(x)
    assert torch.equal(served, without)
    app = create_app(protected.victim, ServeConfig(ledger=None), key=str(protected.folder / "victim.cckeys"))
    assert [k.scheme for k in app.state.service.keys] == ["margin", "dynamarks", SCHEME]
    announced = _protection(app.state.service.keys)  # what `copycatch serve` prints at start
    assert "is a fingerprint" in announced[2] and "nothing was changed" in announced[2]


def test_a_cae_fingerprint_draws_its_secret_from_its_own_key_seed(tiny):
    """With a secret key seed, the fingerprint's comes from it as the API-time part's does (its own sub-seed)."""
    data, seed = tiny.for_scheme("cae").splits, "ab" * 16
    # the margin-watermarked toy MLP classifies fewer holdout inputs correctly than CAE's 160 tiny candidates need
    protection = cc.protect(
        data,
        watermark_params=tiny.params("margin"),
        api=None,
        fingerprint="cae",
        fingerprint_params=tiny.params("cae", candidates=100),
        arch="mlp",
        config=tiny.config(epochs=8),
        max_cost=None,
        key_seed=seed,
    )
    watermark, fingerprint = protection.keyset.keys
    assert key_seed_of(watermark) == seed and key_seed_of(fingerprint) == sub_seed(seed, "protect", 1, "cae")
    assert fingerprint.meta["victim_sha256"] == weights_digest(protection.victim)
    assert protection.keyset.meta["parts"] == ["margin (training time)", "cae (fingerprint)"]
    run = cc.verify(protection.victim, protection.keyset, sequential=False)
    assert run.combined.method == "holm" and run.verdict == "stolen"


def test_a_scheme_in_the_wrong_place_is_refused_in_one_line(capsys, tmp_path):
    argv = ["-o", str(tmp_path / "v.safetensors"), "--keys", str(tmp_path / "v.cckeys"), "--data", "synthetic", "-q"]
    assert main(["protect", "--fingerprint", "margin", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "fingerprint" in err and "'margin' is a watermark" in err and "--watermark" in err
    assert main(["protect", "--watermark", SCHEME, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"'{SCHEME}' is a fingerprint" in err and "--fingerprint" in err
    assert not (tmp_path / "v.cckeys").exists()


def test_a_resume_with_another_fingerprint_is_refused(data, tiny, tmp_path, monkeypatch):
    save_stage = ckpt.RunCheckpoint.save_stage

    def save_then_stop(checkpoint, index, record):  # Ctrl-C right after the first epoch is on disk
        save_stage(checkpoint, index, record)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.RunCheckpoint, "save_stage", save_then_stop)
    output = tmp_path / "victim.safetensors"
    with pytest.raises(KeyboardInterrupt):
        protect(data, tiny, fingerprint=None, output=output)
    with pytest.raises(InvalidArgument, match=r"other arguments \(they differ in .*fingerprint"):
        protect(data, tiny, output=output, resume=True)


def test_protect_with_a_fingerprint_on_the_command_line(capsys, tmp_path, tiny):
    victim, keys = tmp_path / "victim.safetensors", tmp_path / "victim.cckeys"
    argv = ["protect", "--arch", "mlp", "-p", "n_triggers=30", "-p", "lam=1", "--api-param", "n_verify=300"]
    argv += ["--api-param", "range_choices=4", "--fingerprint", SCHEME]
    for name, value in tiny.params(SCHEME).items():
        argv += ["--fingerprint-param", f"{name}={value}"]
    argv += ["-o", str(victim), "--keys", str(keys), "--max-cost", "none"]
    assert main([*argv, *tiny.flags(epochs=6), "--data", "synthetic", "-q"]) == 0
    out = capsys.readouterr().out
    assert SCHEME in out and "3 keys" in out
    assert main(["key", "show", str(keys)]) == 0
    shown = capsys.readouterr().out
    assert "part 2:" in shown and "dependence:" in shown and "Holm" in shown
    assert main(["verify", "--key", str(keys), "--suspect", str(victim), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [e["key"]["scheme"] for e in document["evidence"]] == ["margin", "dynamarks", SCHEME]
    assert document["combined"]["method"] == "holm" and "Holm's adjustment" in document["combined"]["reason"]
    assert document["verdict"] == "stolen"
