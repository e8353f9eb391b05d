"""`protect`: a training-time watermark plus an API-time mark, their keys in one key set; the key-set file; verifying
a key set (each part, combined: Fisher for independent parts, Holm otherwise); serving and stealing through it."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

import copycatch as cc
from copycatch.cli.commands.serve import _protection
from copycatch.cli.main import main
from copycatch.core.errors import CorruptFile, InvalidArgument
from copycatch.core.key import Key, compute_digest
from copycatch.core.keyset import KeySet, load_key_file, open_keys
from copycatch.schemes import protect_oracle
from copycatch.schemes.protection import part_seed, stack_params
from copycatch.serve import ServeConfig, create_app, serve_in_thread


@pytest.fixture(scope="module")
def protected(tiny, tmp_path_factory):
    """The recommended stack on the tiny split, written to disk, and a surrogate stolen through its API."""
    folder = tmp_path_factory.mktemp("protect")
    protection = cc.protect(
        tiny.splits,
        watermark_params=tiny.params("margin"),
        api_params=tiny.params("dynamarks"),
        arch="mlp",
        config=tiny.config(epochs=8),
        output=folder / "victim.safetensors",
        keys=folder / "victim.cckeys",
        max_cost=None,  # the tiny task is no place to judge accuracy cost (tests/test_accuracy_cost.py does)
    )
    stolen = cc.steal(
        folder / "victim.safetensors",
        tiny.splits.attacker_pool,
        arch="mlp",
        key=folder / "victim.cckeys",
        config=tiny.config(epochs=10, seed=1),
    )
    protection.folder, protection.stolen = folder, stolen.surrogate
    return protection


def test_protect_round_trips_a_key_set_through_save_load_verify(protected, innocent):
    path = protected.folder / "victim.cckeys"
    loaded = KeySet.load(path)
    assert loaded.digest == protected.keyset.digest and loaded.independent
    assert [k.scheme for k in loaded] == ["margin", "dynamarks"]
    assert [k.digest for k in loaded] == [k.digest for k in protected.keyset]
    assert loaded.meta["seeds"] == [0, part_seed(0, 1, "dynamarks")] and "SHA-256" in loaded.meta["seed_rule"]
    assert list(loaded)[1].params["favoured_weight"] == 10.0  # the stack's DynaMarks, not the paper's 2
    for suspect in (protected.stolen, protected.victim):
        run = cc.verify(suspect, path)
        assert len(run.evidences) == 2 and run.verdict == "stolen"
        assert run.combined.method == "fisher" and run.p_value == run.combined.fisher_p_value <= 1e-3
        assert "drawn independently" in run.combined.reason
    cleared = cc.verify(innocent, path)
    assert cleared.verdict == "not stolen" and cleared.combined.method == "fisher"


def test_the_served_api_carries_the_api_part(protected, tiny):
    served = protect_oracle(cc.ModelOracle(protected.victim), protected.keyset)
    x = tiny.splits.test.x[:200]
    answers, own = served.query(x), cc.ModelOracle(protected.victim).query(x)
    assert torch.equal(answers.argmax(1), own.argmax(1)) and not torch.allclose(answers, own)
    only_watermark = protect_oracle(cc.ModelOracle(protected.victim), protected.keyset.keys[0])
    assert torch.equal(only_watermark.query(x), own)  # a training-time part leaves the answers as they are
    run = cc.verify(served, protected.keyset, sequential=False)
    assert all(e.verdict == "stolen" for e in run.evidences)


def test_key_set_file_is_strict(protected, tmp_path):
    path = protected.keyset.save(tmp_path / "set.cckeys")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    (tmp_path / "tampered.cckeys").write_bytes(bytes(raw))
    with pytest.raises(CorruptFile, match=r"tampered\.cckeys: key set digest mismatch"):
        KeySet.load(tmp_path / "tampered.cckeys")
    (tmp_path / "short.cckeys").write_bytes(bytes(raw[:-9]))
    with pytest.raises(CorruptFile, match=r"short\.cckeys"):
        load_key_file(tmp_path / "short.cckeys")
    with pytest.raises(InvalidArgument, match=r"is a key set.*KeySet\.load"):
        Key.load(path)
    single = protected.keyset.keys[0].save(tmp_path / "one.cckey")
    with pytest.raises(InvalidArgument, match=r"is a single key.*Key\.load"):
        KeySet.load(single)
    assert [k.digest for k in open_keys(single)[0]] == [protected.keyset.keys[0].digest]
    assert open_keys(single)[1] is False and open_keys(path)[1] is True
    assert [k.digest for k in open_keys(path)[0]] == [k.digest for k in protected.keyset]


def test_a_part_altered_under_a_recomputed_set_digest_is_caught(protected, tmp_path):
    """Whoever edits a part and recomputes the set's digest still fails the part's own digest."""
    from safetensors.torch import save_file

    header = protected.keyset.header()
    header["parts"][1]["params"] = {**header["parts"][1]["params"], "tau": 2.0}
    tensors = protected.keyset.tensors()
    text = json.dumps(header, sort_keys=True, separators=(",", ":"))
    save_file(
        tensors, str(tmp_path / "forged.cckeys"), {"copycatch.keyset": text, "digest": compute_digest(header, tensors)}
    )
    with pytest.raises(CorruptFile, match=r"forged\.cckeys: part 1 \(dynamarks\) digest mismatch"):
        KeySet.load(tmp_path / "forged.cckeys")


def test_mixed_keys_fall_back_to_holm_unless_asked(protected, tiny, tmp_path):
    base = cc.create_for("mlp", tiny.splits, seed=3)  # another owner's key, drawn with its own seed
    other = cc.create_scheme("margin", n_triggers=20).embed(base, tiny.splits, train=tiny.config(epochs=1, seed=3)).key
    other_path = other.save(tmp_path / "other.cckey")
    keys = [protected.folder / "victim.cckeys", other_path]
    run = cc.verify(protected.victim, keys, sequential=False)
    assert len(run.evidences) == 3 and run.combined.method == "holm" and not run.combined.independent
    assert "not declared independent" in run.combined.reason
    fisher = cc.verify(protected.victim, keys, sequential=False, combine="fisher")
    assert fisher.combined.method == "fisher" and "do not declare" in fisher.combined.reason
    holm = cc.verify(protected.victim, protected.keyset, sequential=False, combine="holm")
    assert holm.combined.method == "holm" and "Fisher's method would be valid too" in holm.combined.reason
    with pytest.raises(InvalidArgument, match="same key is given twice"):
        cc.verify(protected.victim, [protected.keyset, protected.keyset.keys[0]])
    with pytest.raises(InvalidArgument, match="holm, fisher"):
        cc.verify(protected.victim, protected.keyset, combine="stouffer")


def test_each_part_is_calibrated_beside_the_key_set(protected, innocent, tmp_path):
    path = protected.keyset.save(tmp_path / "set.cckeys")
    written = cc.calibrate([path], innocents=[innocent])
    assert [p.name for _, p in written] == ["set.cckeys.part0.calibration.json", "set.cckeys.part1.calibration.json"]
    run = cc.verify(innocent, path, sequential=False)
    assert all("calibration" in e.details for e in run.evidences)


def test_the_stack_parameters_yield_to_the_callers():
    assert stack_params("dynamarks", None) == {"favoured_weight": 10.0}
    assert stack_params("dynamarks", {"favoured_weight": 2, "n_verify": 50}) == {"favoured_weight": 2, "n_verify": 50}
    assert stack_params("dawn", None) is None and stack_params(None, {"n_verify": 10}) == {"n_verify": 10}


def test_protect_refuses_schemes_in_the_wrong_place(tiny):
    with pytest.raises(InvalidArgument, match=r"acts at api time.*--api"):
        cc.protect(tiny.splits, watermark="dynamarks")
    with pytest.raises(InvalidArgument, match=r"acts at training time.*--watermark"):
        cc.protect(tiny.splits, api="margin")
    with pytest.raises(InvalidArgument, match="without an API-time scheme"):
        cc.protect(tiny.splits, api="none", api_params={"n_verify": 10})


def test_protect_verify_and_key_show_on_the_command_line(capsys, tmp_path, tiny):
    victim, keys = tmp_path / "victim.safetensors", tmp_path / "victim.cckeys"
    argv = ["protect", "--arch", "mlp", "-p", "n_triggers=30", "-p", "lam=1", "--api-param", "n_verify=300"]
    argv += ["--api-param", "range_choices=4", "-o", str(victim), "--keys", str(keys), "--max-cost", "none"]
    assert main([*argv, *tiny.flags(epochs=6), "--data", "synthetic", "-q"]) == 0
    out = capsys.readouterr().out
    assert "margin" in out and "dynamarks" in out and "key set written" in out
    assert main(["verify", "--key", str(keys), "--suspect", str(victim), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [e["key"]["scheme"] for e in document["evidence"]] == ["margin", "dynamarks"]
    assert all("p_value" in e for e in document["evidence"])
    combined = document["combined"]
    assert combined["method"] == "fisher" and "Fisher's method" in combined["reason"]
    assert document["p_value"] == combined["p_value"] == combined["fisher_p_value"]
    assert document["verdict"] == "stolen"
    assert main(["key", "show", str(keys)]) == 0
    shown = capsys.readouterr().out
    assert "part 0:" in shown and "part 1:" in shown and "independent" in shown and "seed_rule" in shown
    assert main(["key", "show", str(keys), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["independent"] and [p["scheme"] for p in summary["parts"]] == ["margin", "dynamarks"]
    laundered = ["remove", "-i", str(victim), "-a", "prune:rate=0.1", "-o", str(tmp_path / "pruned.safetensors")]
    assert main([*laundered, "--verify", str(keys), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [e["scheme"] for e in report["evidence"]] == ["margin", "dynamarks"]
    assert report["combined"][0]["method"] == "fisher"
    assert main(["key", "show", str(tmp_path / "missing.cckeys")]) == 2
    assert "no such key file" in capsys.readouterr().err


def test_serve_with_a_key_set_applies_the_api_part(protected, tiny):
    app = create_app(protected.victim, ServeConfig(ledger=None), key=str(protected.folder / "victim.cckeys"))
    assert [k.scheme for k in app.state.service.keys] == ["margin", "dynamarks"]
    announced = _protection(app.state.service.keys)  # what `copycatch serve` prints at start
    assert "acts at training time" in announced[0] and "applied to every answer" in announced[1]
    x = tiny.splits.test.x[:32]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = client.post("/v1/predict", json={"inputs": x.tolist()}).json()
    answers = torch.tensor(body["probabilities"])
    own = cc.ModelOracle(protected.victim).query(x)
    assert torch.equal(answers.argmax(1), own.argmax(1)) and not torch.allclose(answers, own, atol=1e-4)


def test_protect_has_the_accuracy_cost_guard_of_embed(tiny, tmp_path, capsys):
    argv = ["protect", "--arch", "mlp", "-p", "n_triggers=30", "-p", "lam=10", "--api", "none"]
    argv += ["-o", str(tmp_path / "v.safetensors"), "--keys", str(tmp_path / "v.cckeys")]
    assert main([*argv, *tiny.flags(epochs=2), "--data", "synthetic", "-q"]) == 3
    err = capsys.readouterr().err
    assert "--max-cost" in err and "lam" in err and (tmp_path / "v.cckeys").is_file()
    with pytest.raises(cc.AccuracyCostExceeded):
        cc.protect(
            tiny.splits,
            watermark_params={"n_triggers": 30, "lam": 10.0},
            api=None,
            arch="mlp",
            config=tiny.config(epochs=2),
        )
