"""DAWN on tiny data: keyed selection of wrongly answered inputs, records checked against the secret, the exact
binomial null, the server's record file and the ``key dawn-records`` join with the ledger."""

import base64
import hashlib
import json

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.cli.main import main
from copycatch.core.errors import CorruptFile, InvalidArgument
from copycatch.core.key import Key
from copycatch.models.io import weights_digest
from copycatch.oracles.base import Oracle
from copycatch.schemes.dawn import Dawn, DawnPerturbation, DawnRecord, find_perturbations, select
from copycatch.serve import ServeConfig, create_app, serve_in_thread
from copycatch.serve.dawn_records import DawnRecordFile, read_records, records_path
from copycatch.serve.keys import new_key
from copycatch.serve.ledger import read_ledger

C = 4


@pytest.fixture(scope="module")
def victim(tiny):
    return cc.train("mlp", tiny.splits, config=tiny.config(epochs=5))


def embed(tiny, victim, **params):
    """No accuracy limit: the test fractions (up to 1/2) cost the API that share of its answers."""
    return cc.embed("dawn", tiny.splits, model=victim, params=params, config=tiny.config(epochs=5), max_cost=None)


@pytest.fixture(scope="module")
def embedded(tiny, victim):
    return embed(tiny, victim, fraction=0.05)


class Lookup(Oracle):
    """A thief's copy that memorised the API's answers: answers looked up by input (nearest stored input)."""

    def __init__(self, inputs, answers):
        super().__init__(answers.shape[1], tuple(inputs.shape[1:]))
        self.inputs, self.answers = inputs.flatten(1), answers

    def _answer(self, x):
        return self.answers[torch.cdist(x.flatten(1), self.inputs).argmin(1)]


class RandomLabels(Oracle):
    """Labels drawn from a hash of the input (and a seed): independent of every secret."""

    def __init__(self, seed, shape=(1, 8, 8)):
        super().__init__(C, shape)
        self.seed = seed

    def _answer(self, x):
        rows = x.numpy().astype(np.float32).reshape(len(x), -1)
        labels = [hashlib.sha256(bytes([self.seed]) + r.tobytes()).digest()[0] % C for r in rows]
        return torch.nn.functional.one_hot(torch.tensor(labels), C).float()


def thief_queries(embedded, x):
    """The protected API answering ``x`` and the key carrying the records it made."""
    api = Dawn().protect(cc.ModelOracle(embedded.victim), embedded.key)
    answers = api.query(x)
    (perturbation,) = find_perturbations(api)
    r = perturbation.records
    key = Dawn(**embedded.key.params).with_records(
        embedded.key, np.stack([a.x for a in r]), [a.owner for a in r], [a.wrong for a in r]
    )
    return answers, key, perturbation


def test_embed_leaves_the_weights_untouched_and_the_key_holds_only_the_secret(tiny, victim):
    before = weights_digest(victim)
    result = embed(tiny, victim)
    assert weights_digest(result.victim) == before == result.key.meta["victim_sha256"]
    assert set(result.key.tensors) == {"secret"} and result.key["secret"].dtype == torch.uint8
    assert result.key["secret"].numel() == 32 and result.info["weights_untouched"]
    scheme = Dawn()
    with pytest.raises(InvalidArgument, match="dawn-records"):
        scheme.verification_inputs(result.key)
    assert scheme.attainable_p_value(result.key, C) == 1.0 and scheme.key_items(result.key) == 0
    again = embed(tiny, victim)
    assert torch.equal(again.key["secret"], result.key["secret"])  # seeded by the training seed


def test_selection_is_deterministic_and_falsifies_the_fraction(tiny, victim):
    key = embed(tiny, victim).key  # fraction 0.005, the paper's
    x = torch.rand(5000, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    raw = cc.ModelOracle(victim).query(x)
    api = Dawn().protect(cc.ModelOracle(victim), key)
    answers = api.query(x)
    (perturbation,) = find_perturbations(api)
    selected, offset = select(Dawn().secret(key), x, 0.005, C)
    k, n = int(selected.sum()), len(x)
    assert abs(k - n * 0.005) <= 4 * np.sqrt(n * 0.005 * 0.995) and k > 0
    assert perturbation.falsified == k and perturbation.answered == n
    assert perturbation.falsified_share == pytest.approx(k / n)
    sel = torch.from_numpy(selected)
    owner, wrong = raw.argmax(1), (raw.argmax(1) + torch.from_numpy(offset)) % C
    assert torch.equal(answers[~sel], raw[~sel])  # everything else untouched
    assert torch.equal(answers[sel].argmax(1), wrong[sel]) and (wrong[sel] != owner[sel]).all()
    assert torch.allclose(answers[sel].sum(1), torch.ones(k), atol=1e-6)
    assert [r.wrong for r in perturbation.records] == wrong[sel].tolist()
    assert [r.owner for r in perturbation.records] == owner[sel].tolist()
    # the same input, alone or in another batch, gets the same answer: nothing to average away
    # (the model's own float rounding may differ by batch, in the last bits: compare the labels and closely)
    for again, first in [(api.query(x[sel][:3]), answers[sel][:3]), (api.query(x.flip(0)).flip(0), answers)]:
        assert torch.equal(again.argmax(1), first.argmax(1)) and torch.allclose(again, first, atol=1e-6)


def test_wrong_labels_are_uniform_over_the_other_classes(tiny, victim):
    key = embed(tiny, victim, fraction=0.5).key
    x = torch.rand(3000, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    selected, offset = select(Dawn().secret(key), x, 0.5, C)
    counts = np.bincount(offset[selected], minlength=C)
    assert counts[0] == 0 and all(abs(c - selected.sum() / 3) < 4 * np.sqrt(selected.sum() * 2 / 9) for c in counts[1:])


def test_one_hot_answers_become_the_wrong_one_hot(embedded):
    api = cc.ModelOracle(embedded.victim).postprocess("hard-label")
    api = Dawn().protect(api, embedded.key)
    x = torch.rand(2000, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    answers = api.query(x)
    assert ((answers == 0) | (answers == 1)).all() and (answers.sum(1) == 1).all()
    (perturbation,) = find_perturbations(api)
    rows = torch.tensor([r.wrong for r in perturbation.records])
    assert len(rows) > 50 and api.output_kind == "labels"
    assert set(answers.argmax(1).tolist()) >= set(rows.tolist())


def test_a_copy_of_the_api_is_proven_and_innocents_are_not(embedded, tiny, innocent):
    x = tiny.splits.attacker_pool.x
    answers, key, perturbation = thief_queries(embedded, x)
    assert key.meta["dawn_records"]["records"] == perturbation.falsified >= 20
    copy = cc.verify(Lookup(x, answers), key, sequential=False).evidence
    assert copy.verdict == "stolen" and copy.exact and copy.p_value <= 1e-3
    m = copy.metrics
    assert m["matches"] == m["records"] == m["not_owner_label"] and m["watermark_accuracy"] == 1.0
    assert m["null_rate"] == pytest.approx(1 / 3)
    assert copy.p_value == pytest.approx(Dawn().smallest_p_value(key, C)) == pytest.approx((1 / 3) ** m["records"])
    labels = cc.verify(Lookup(x, answers).postprocess("hard-label"), key, sequential=False).evidence
    assert labels.verdict == "stolen"  # labels suffice
    sequential = cc.verify(Lookup(x, answers), key).evidence
    assert sequential.verdict == "stolen"
    owner = cc.verify(embedded.victim, key, sequential=False).evidence  # answers o everywhere: no evidence
    assert owner.p_value == 1.0 and owner.metrics["not_owner_label"] == 0 and owner.verdict == "not stolen"
    for suspect in (RandomLabels(1), innocent):
        evidence = cc.verify(suspect, key, alpha=0.05, sequential=False).evidence
        assert evidence.verdict == "not stolen" and evidence.p_value >= 0.05, evidence.summary()


def test_the_null_is_exact_over_random_secrets(embedded):
    """200 secrets against one fixed suspect: the share of p-values <= u is at most u (binomial: conservative)."""
    base = embedded.key
    g = torch.Generator().manual_seed(7)
    x = torch.rand(80, 1, 8, 8, generator=g)
    owner = torch.randint(C, (80,), generator=g)
    # the suspect: the owner's label half the time, else a label of its own (fixed, secret-independent)
    own = torch.randint(C, (80,), generator=g)
    suspect = torch.where(torch.rand(80, generator=g) < 0.5, owner, own)
    answers = torch.nn.functional.one_hot(suspect, C).float()
    scheme = Dawn(fraction=0.5, min_records=1)
    p = []
    for _ in range(200):
        secret = torch.randint(256, (32,), generator=g, dtype=torch.uint8)
        key = Key("dawn", scheme.params.to_dict(), {"secret": secret}, dict(base.meta))
        selected, offset = select(bytes(secret.tolist()), x, 0.5, C)
        sel = torch.from_numpy(selected)
        wrong = (owner + torch.from_numpy(offset)) % C
        key = scheme.with_records(key, x[sel], owner[sel], wrong[sel])
        p.append(scheme.evidence_from_answers(answers[sel], key, alpha=0.05, queries=0).p_value)
    p = np.array(p)
    for u in (0.01, 0.05, 0.1, 0.25, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / len(p)), u
    assert np.mean(p <= 0.5) >= 0.2, "p-values piled up at 1: the test would have no power"


def test_tampered_records_are_refused(embedded, tiny):
    x = tiny.splits.attacker_pool.x[:600]
    _, key, perturbation = thief_queries(embedded, x)
    r = perturbation.records
    xs, owner, wrong = np.stack([a.x for a in r]), np.array([a.owner for a in r]), np.array([a.wrong for a in r])
    scheme = Dawn(**embedded.key.params)
    tampered = wrong.copy()
    tampered[2] = (tampered[2] + 1) % C
    with pytest.raises(InvalidArgument, match="do not match the key's secret"):
        scheme.with_records(embedded.key, xs, owner, tampered)
    forged = xs.copy()
    forged[0] = np.clip(forged[0] + 1e-3, 0, 1)  # an input the secret (almost surely) did not select
    with pytest.raises(InvalidArgument, match="record 0"):
        scheme.with_records(embedded.key, forged, owner, wrong)
    other = Key("dawn", embedded.key.params, {"secret": torch.zeros(32, dtype=torch.uint8)}, dict(embedded.key.meta))
    with pytest.raises(InvalidArgument, match="another key"):
        scheme.with_records(other, xs, owner, wrong)
    with pytest.raises(InvalidArgument, match="labels must be in"):
        scheme.with_records(embedded.key, xs, owner, wrong + C)
    # repeated queries are one draw: kept once
    doubled = scheme.with_records(embedded.key, np.concatenate([xs, xs]), np.tile(owner, 2), np.tile(wrong, 2))
    assert scheme.key_items(doubled) == len(xs) and torch.equal(doubled["verify_x"], key["verify_x"])


def test_too_few_records_are_refused_at_verification(embedded, tiny):
    _, key, perturbation = thief_queries(embedded, tiny.splits.attacker_pool.x[:100])
    assert 0 < perturbation.falsified < 20
    with pytest.raises(InvalidArgument, match="fewer than min_records=20"):
        Dawn().verify(cc.ModelOracle(embedded.victim), key)
    with pytest.raises(cc.CopycatchError, match="fewer than min_records=20"):
        cc.verify(embedded.victim, key, sequential=False)
    with pytest.raises(InvalidArgument, match="fraction"):
        Dawn(fraction=0.6)
    with pytest.raises(InvalidArgument, match="min_records"):
        Dawn(min_records=0)


def test_the_record_file_round_trips_and_refuses_garbled_lines(tmp_path):
    path = tmp_path / "ledger.jsonl.dawn.jsonl"
    sink = DawnRecordFile(path)
    g = torch.Generator().manual_seed(0)
    records = [DawnRecord(torch.rand(1, 8, 8, generator=g).numpy(), i % C, (i + 1) % C) for i in range(5)]
    sink(records[:2])
    sink(records[2:])
    sink.close()
    back = read_records(path)
    assert [(r.owner, r.wrong) for r in back] == [(r.owner, r.wrong) for r in records]
    assert all(np.array_equal(a.x, b.x) and a.x.dtype == np.float32 for a, b in zip(back, records))
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["shape"] == [1, 8, 8] for line in lines)
    bad = json.loads(lines[3])
    data = bytearray(base64.b64decode(bad["x"]))
    data[0] ^= 1  # one bit of the input changed: the digest no longer fits
    bad["x"] = base64.b64encode(bytes(data)).decode()
    for text, message in [
        ('{"digest": ', "ledger.jsonl.dawn.jsonl:4: not a JSON line"),
        (json.dumps(bad), ":4: digest does not match"),
        (json.dumps({**bad, "o": "3"}), ":4: o must be"),
        (json.dumps({**bad, "x": "***"}), ":4: x is not valid base64"),
    ]:
        path.write_text("\n".join([*lines[:3], text, lines[4]]) + "\n")
        with pytest.raises(CorruptFile, match=message):
            read_records(path)
    with pytest.raises(InvalidArgument, match="no such DAWN record file"):
        read_records(tmp_path / "missing.jsonl")


def test_the_server_records_and_the_cli_joins_them_with_the_ledger(tiny, victim, tmp_path, capsys):
    key = embed(tiny, victim, fraction=0.25).key
    key_path = key.save(tmp_path / "dawn.cckey")
    keys = tmp_path / "keys.txt"
    alice, bob = new_key(keys, "alice"), new_key(keys, "bob")
    ledger = tmp_path / "ledger.jsonl"
    x = tiny.splits.attacker_pool.x[:300]
    app = create_app(victim, ServeConfig.from_dict({"ledger": str(ledger)}), key=str(key_path), keyring=str(keys))
    import httpx

    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        answers = []
        for start in range(0, 200, 100):
            r = client.post(
                "/v1/predict", json={"inputs": x[start : start + 100].tolist()}, headers={"X-API-Key": alice}
            )
            assert r.status_code == 200
            answers.append(torch.tensor(r.json()["probabilities"]))
        r = client.post("/v1/predict", json={"inputs": x[200:].tolist()}, headers={"X-API-Key": bob})
        assert r.status_code == 200
    answers = torch.cat(answers)
    selected, _ = select(Dawn().secret(key), x, 0.25, C)
    assert len(read_records(records_path(ledger))) == selected.sum()  # alice's and bob's
    assert len(read_ledger(ledger).entries) == 3
    out = tmp_path / "alice.cckey"
    code = main(["key", "dawn-records", "--key", str(key_path), "--ledger", str(ledger), "--client", "alice",
                 "-o", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    alice_selected = int(selected[:200].sum())
    assert f"{alice_selected} of the {int(selected.sum())} DAWN records are theirs" in text
    verification = Key.load(out)
    assert Dawn().key_items(verification) == alice_selected >= 20
    sel = torch.from_numpy(selected[:200])
    assert torch.equal(verification["verify_x"], x[:200][sel])
    assert torch.equal(verification["verify_wrong"], answers[sel].argmax(1))
    stolen = cc.verify(Lookup(x[:200], answers), verification, sequential=False).evidence
    assert stolen.verdict == "stolen" and stolen.metrics["watermark_accuracy"] == 1.0
    # mistakes at the boundary: one line, exit 2
    for argv, message in [
        (["--ledger", str(tmp_path / "none.jsonl"), "--client", "alice"], "no such ledger"),
        (["--ledger", str(ledger), "--client", "carol"], "no answered queries of client 'carol'"),
        (["--ledger", str(ledger), "--client", "alice", "--records", str(tmp_path / "no")], "no such DAWN record"),
    ]:
        code = main(["key", "dawn-records", "--key", str(key_path), *argv, "-o", str(tmp_path / "x.cckey")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    records = records_path(ledger)
    records.write_text(records.read_text() + "garbage\n")
    code = main(["key", "dawn-records", "--key", str(key_path), "--ledger", str(ledger), "--client", "alice",
                 "-o", str(tmp_path / "x.cckey")])  # fmt: skip
    err = capsys.readouterr().err
    total = int(selected.sum())
    assert code == 2 and f"{records}:{total + 1}: not a JSON line" in err


def test_registry_contract(embedded):
    assert Dawn.acts_at == "api" and Dawn.needs == "labels" and Dawn.sequential
    assert DawnPerturbation.name == "dawn" and "dawn" in cc.list_schemes()


def test_serving_a_dawn_key_without_a_ledger_is_refused(tiny, victim, tmp_path):
    # without a ledger no record says which client asked what: the evidence would be lost without a word
    key_path = embed(tiny, victim).key.save(tmp_path / "dawn.cckey")
    with pytest.raises(InvalidArgument, match="without a query ledger"):
        create_app(victim, ServeConfig(), key=str(key_path))
    create_app(victim, ServeConfig(ledger=str(tmp_path / "ledger.jsonl")), key=str(key_path))  # with one it serves
