"""Trust in the claim itself: forged keys make innocent models look stolen, and key commitments refuse them.

Forgeries (copycatch.attacks.forgery) build a key of an existing scheme's format from a model's own answers; the
tests show they work (a tiny p-value for a model the forger never trained), then that a key committed when it was
made verifies, and that a key changed after its commitment, re-derived from another seed, committed for another
model, or committed after the suspect was first seen, is refused before any query.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
import torch

import copycatch as cc
from copycatch.attacks.forgery import FORGERIES, forge
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_ERROR, EXIT_STOLEN
from copycatch.core.commitment import (
    SEED_TENSOR,
    Commitment,
    CommitmentRefused,
    check_key_seed,
    commitment_path,
    key_seed_of,
)
from copycatch.core.errors import InvalidArgument
from copycatch.core.key import Key
from copycatch.data.base import TensorData
from copycatch.models.io import weights_digest
from copycatch.schemes.commitment import commit_key, public_params

SEED = "5eed" * 16  # a fixed secret key seed (256 bits) so the tests are reproducible


def _noisy(data: TensorData, seed: int = 0) -> TensorData:
    """The forger's own inputs: the test images under heavy noise, so that even a perfect toy model errs on some."""
    noise = torch.randn(data.x.shape, generator=torch.Generator().manual_seed(seed))
    return TensorData((data.x + 0.8 * noise).clamp(0, 1), data.y)


@pytest.fixture(scope="module")
def committed(tiny, tmp_path_factory):
    """A trigger-set victim embedded with a secret key seed; the key and its commitment written side by side."""
    folder = tmp_path_factory.mktemp("committed")
    key_path = folder / "victim.cckey"
    embedding = cc.embed(
        "trigger-set",
        tiny.splits,
        arch="mlp",
        params=tiny.params("trigger-set", lam=1),
        config=tiny.config(epochs=5),
        max_cost=None,
        key_path=key_path,
        key_seed=SEED,
    )
    cc.save_model(embedding.victim, folder / "victim.safetensors")
    return embedding, key_path


def test_a_forged_trigger_set_key_makes_an_innocent_model_look_stolen(innocent, splits):
    """The attack works: without a commitment check, an innocent model is 'stolen' at p = (1/(C-1))^n."""
    key = forge("trigger-set", innocent, _noisy(splits.test), n_triggers=20)
    run = cc.verify(innocent, key, sequential=False, alpha=1e-3)
    assert key.scheme == "trigger-set" and run.verdict == "stolen"
    assert run.p_value == pytest.approx((1 / 3) ** 20)
    assert run.evidence.details["commitment"]["status"] == "none" and "no commitment" in run.evidence.notes[-1]
    with pytest.raises(CommitmentRefused, match="no commitment"):
        cc.verify(innocent, key, sequential=False, require_commitment=True)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("adversarial-margin", {"n_triggers": 20, "eps": 0.3}),
        ("adversarial-frontier", {"key_length": 20, "n_control": 20, "eps": 0.3}),
        ("mea-combined", {"n_verify": 60, "n_false_per_group": 20}),
    ],
)
def test_every_forgery_gives_a_key_that_verify_accepts_with_its_smallest_p(innocent, splits, name, params):
    key = forge(name, innocent, splits.test, **params)
    run = cc.verify(innocent, key, sequential=False, alpha=1e-3)
    assert run.verdict == "stolen"
    assert run.p_value == pytest.approx(run.evidence.metrics["smallest_attainable_p"])


def test_forgeries_name_their_bad_values(innocent, splits, trained):
    assert set(FORGERIES.list()) == {"trigger-set", "adversarial-margin", "adversarial-frontier", "mea-combined"}
    with pytest.raises(ValueError, match="n_triggers=0"):
        forge("trigger-set", innocent, splits.test, n_triggers=0)
    with pytest.raises(ValueError, match="misclassifies 0 of"):
        forge("trigger-set", innocent, splits.test, n_triggers=5)  # a perfect model makes no mistake to forge from
    with pytest.raises(ValueError, match="key_length=7"):
        forge("adversarial-frontier", innocent, splits.test, key_length=7)
    with pytest.raises(ValueError, match=r"rule must be one of .*'stripes'"):
        forge("mea-combined", innocent, splits.test, rule="stripes")
    with pytest.raises(ValueError, match="eps must be > 0"):
        forge("adversarial-margin", trained, splits.test, eps=0.0)


def test_a_committed_key_verifies_and_its_evidence_states_the_commitment(committed):
    embedding, key_path = committed
    path = commitment_path(key_path)
    commitment = Commitment.load(path)
    assert commitment.id == hashlib.sha256(path.read_bytes()).hexdigest()  # what `sha256sum` prints
    record = commitment.record
    assert record["key_digest"] == embedding.key.digest and record["seed"] == "secret"
    assert record["victim_sha256"] == weights_digest(embedding.victim) == embedding.key.meta["victim_sha256"]
    assert SEED not in path.read_text()  # only its digest is public
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    run = cc.verify(embedding.victim, key_path, sequential=False, alpha=1e-3, suspect_since=later)
    stated = run.evidence.details["commitment"]
    assert run.verdict == "stolen" and stated["status"] == "matches" and stated["admissible"] is True
    assert stated["id"] == commitment.id and run.evidence.notes[-1].startswith("admissible")


def test_a_key_changed_after_commitment_is_refused(committed, tmp_path, capsys):
    embedding, key_path = committed
    changed = Key.load(key_path)
    changed.tensors["trigger_label"][0] = (changed.tensors["trigger_label"][0] + 1) % 4
    path = tmp_path / "victim.cckey"
    changed.save(path)
    commitment_path(path).write_bytes(commitment_path(key_path).read_bytes())
    with pytest.raises(CommitmentRefused, match="changed after it was committed"):
        cc.verify(embedding.victim, path, sequential=False)
    victim = key_path.with_name("victim.safetensors")
    code = main(["verify", "--key", str(path), "--suspect", str(victim), "--fixed"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and "does not match its commitment" in err and len(err.strip().splitlines()) == 1
    assert main(["verify", "--key", str(key_path), "--suspect", str(victim), "--fixed", "-q"]) == EXIT_STOLEN


def test_a_commitment_for_another_model_or_seed_or_after_the_suspect_is_refused(committed, innocent, tiny):
    embedding, key_path = committed
    other_model = commit_key(embedding.key, weights_digest(innocent))
    with pytest.raises(CommitmentRefused, match="the commitment is for another model"):
        cc.verify(embedding.victim, key_path, sequential=False, commitments=[other_model])
    reseeded = cc.embed(
        "trigger-set",
        tiny.splits,
        arch="mlp",
        params=tiny.params("trigger-set", lam=1),
        config=tiny.config(epochs=1),
        max_cost=None,
        key_seed="ab" * 32,
    ).key
    reseeded.meta["victim_sha256"] = embedding.key.meta["victim_sha256"]
    original = Commitment.load(commitment_path(key_path))
    with pytest.raises(CommitmentRefused, match="derived from another seed"):
        cc.verify(embedding.victim, reseeded, sequential=False, commitments=[original])
    before = original.created - dt.timedelta(seconds=1)
    with pytest.raises(CommitmentRefused, match="not before the suspect was first seen"):
        cc.verify(embedding.victim, key_path, sequential=False, suspect_since=before)


def test_a_forger_who_commits_after_the_suspect_appeared_is_refused(innocent, splits):
    suspect_seen = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    key = forge("trigger-set", innocent, _noisy(splits.test), n_triggers=20)
    commitment = commit_key(key)  # made now, for the model the forger claims: the target itself
    assert commitment.record["victim_sha256"] == weights_digest(innocent)
    assert cc.verify(innocent, key, sequential=False, commitments=[commitment]).verdict == "stolen"
    with pytest.raises(CommitmentRefused, match="not before the suspect"):
        cc.verify(innocent, key, sequential=False, commitments=[commitment], suspect_since=suspect_seen)


def test_the_secret_seed_makes_the_key_and_stays_secret(committed, tiny):
    embedding, key_path = committed
    assert key_seed_of(embedding.key) == SEED and embedding.key.meta["key_seed"] == "secret"
    summary = json.dumps(Key.load(key_path).summary())
    assert SEED not in summary and SEED_TENSOR in summary  # listed as a secret tensor, values hidden

    def trigger_labels(seed):
        scheme = cc.create_scheme("trigger-set", n_triggers=40)
        scheme.key_seed = seed
        return scheme.make_trigger_set(tiny.splits, scheme.key_generator(0, 104729))[2]

    assert torch.equal(trigger_labels(SEED), trigger_labels(SEED))
    assert not torch.equal(trigger_labels(SEED), trigger_labels("ab" * 32))
    assert not torch.equal(trigger_labels(SEED), trigger_labels(None))  # the public derivation is not the secret one
    with pytest.raises(InvalidArgument, match=r"32 to 128 hexadecimal digits.*got 5 characters") as caught:
        check_key_seed("12345")
    assert "12345" not in str(caught.value)


def test_cli_embed_draws_a_random_secret_seed_and_key_commit_prints_the_record(tmp_path, capsys, monkeypatch, tiny):
    monkeypatch.delenv("COPYCATCH_KEY_SEED", raising=False)
    key = tmp_path / "victim.cckey"
    argv = ["embed", "--scheme", "trigger-set", "--arch", "mlp", "-p", "n_triggers=40", "-p", "trigger_batch=10"]
    argv += ["--max-cost", "none", "-o", str(tmp_path / "victim.safetensors"), "--key", str(key)]
    assert main([*argv, *tiny.flags(epochs=1), "--data", "synthetic", "-q"]) == 0
    out = capsys.readouterr().out
    assert "commitment written to" in out and key_seed_of(Key.load(key)) is not None
    assert main(["key", "commit", str(key)]) == 0
    printed = capsys.readouterr().out
    commitment = Commitment.load(commitment_path(key))
    assert json.loads(printed[: printed.rindex("}") + 1]) == commitment.record and commitment.id in printed
    commitment_path(key).unlink()
    assert main(["key", "commit", str(key), "--json"]) == 0  # without one, a record is made now and written
    assert json.loads(capsys.readouterr().out)["key_digest"] == Key.load(key).digest
    assert commitment_path(key).is_file()


def test_the_public_record_hides_a_schemes_secret_parameters():
    key = Key("mea-defender", {"source_a": 0, "source_b": 1, "target": 2, "rule": "merge", "n_verify": 10}, {})
    shown = public_params(key)
    assert shown["target"] == shown["rule"] == "(secret)" and shown["n_verify"] == 10


def test_protect_commits_the_key_set_with_one_secret_seed_per_part(tiny, tmp_path):
    path = tmp_path / "victim.cckeys"
    protection = cc.protect(
        tiny.splits,
        arch="mlp",
        watermark_params=tiny.params("margin"),
        api_params=tiny.params("dynamarks"),
        config=tiny.config(epochs=2),
        max_cost=None,
        keys=path,
        key_seed=SEED,
    )
    record = Commitment.load(commitment_path(path)).record
    assert record["kind"] == "key set" and record["key_digest"] == protection.keyset.digest
    seeds = [key_seed_of(k) for k in protection.keyset]
    assert seeds[0] == SEED and seeds[1] not in (None, SEED)  # the API part's own seed, derived from the secret
    assert [p["seed_sha256"] for p in record["parts"]] == [
        hashlib.sha256(f"copycatch.key-seed.commitment/1/{s}".encode()).hexdigest() for s in seeds
    ]
    run = cc.verify(protection.victim, path, sequential=False, alpha=0.05)
    assert [e.details["commitment"]["status"] for e in run.evidences] == ["matches", "matches"]
