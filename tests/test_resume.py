"""Resumable long runs: ``embed``, ``protect`` and ``steal`` interrupted after an epoch and resumed with ``--resume``
reach the same weights as an uninterrupted run, bit for bit on a CPU, and a resumed ``steal`` buys no answer twice.

Interruptions are injected, not timed: :meth:`RunCheckpoint.save_stage` is wrapped to raise KeyboardInterrupt (what
Ctrl-C raises) right after the n-th checkpoint write, or the victim raises it in the middle of the queries. One test
kills a real ``copycatch embed`` process with SIGKILL as soon as its first checkpoint is on disk.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import classifier_entries

import copycatch as cc
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_ERROR
from copycatch.core import checkpoint as ckpt
from copycatch.core.errors import CorruptFile, InvalidArgument
from copycatch.models.io import load_model
from copycatch.schemes import SCHEMES

CLASSIFIER_SCHEMES = classifier_entries(SCHEMES)

DATA = ["--data", "synthetic", "-q"]
SEED_A, SEED_B = "ab" * 16, "cd" * 16  # two key seeds (32 hex digits each)
INTERRUPTED = 130  # the CLI's exit status after KeyboardInterrupt


class Interrupter:
    """Wraps :meth:`RunCheckpoint.save_stage`: after :meth:`after` ``(n)``, the n-th checkpoint write of the runs
    that follow raises KeyboardInterrupt once it is on disk, as if the user pressed Ctrl-C right after that epoch
    (``n = 0``: never). ``writes`` lists the writes since: True for a finished stage, False for an epoch."""

    def __init__(self, monkeypatch):
        self.n, self.writes = 0, []
        original = ckpt.RunCheckpoint.save_stage

        def save_stage(checkpoint, index, record):
            original(checkpoint, index, record)
            self.writes.append(record["done"])
            if len(self.writes) == self.n:
                raise KeyboardInterrupt

        monkeypatch.setattr(ckpt.RunCheckpoint, "save_stage", save_stage)

    def after(self, n: int) -> None:
        self.n, self.writes = n, []


@pytest.fixture
def interrupt(monkeypatch):
    return Interrupter(monkeypatch)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def embed_argv(output: Path, *extra: str) -> list[str]:
    key = output.with_suffix(".cckey")
    return ["embed", "--scheme", "margin", "--arch", "mlp", "-p", "n_triggers=30", "--max-cost", "none",
            "--epochs", "3", "-o", str(output), "--key", str(key), *DATA, *extra]  # fmt: skip


def test_embed_resumes_to_the_same_victim_and_key(capsys, tmp_path, interrupt):
    """Ctrl-C after epoch 1; a rerun without --resume refuses to start over; --resume (without --key-seed: the
    checkpoint keeps the interrupted run's) gives the uninterrupted run's victim bit for bit, and the same key."""
    assert run(capsys, *embed_argv(tmp_path / "whole.safetensors", "--key-seed", SEED_A))[0] == 0
    resumed = tmp_path / "resumed.safetensors"
    checkpoint = ckpt.checkpoint_path(resumed)
    interrupt.after(1)
    assert run(capsys, *embed_argv(resumed, "--key-seed", SEED_A))[0] == INTERRUPTED
    assert (checkpoint / ckpt.STATE).is_file() and not resumed.exists()
    code, _, err = run(capsys, *embed_argv(resumed, "--key-seed", SEED_A))
    assert code == EXIT_ERROR and "--resume" in err and "delete it" in err and checkpoint.exists()
    interrupt.after(0)  # no more interruptions
    code, out, _ = run(capsys, *embed_argv(resumed, "--resume"))
    assert code == 0 and "resumed from" in out and "1 epoch(s) restored" in out
    assert not checkpoint.exists()
    assert same_weights(load_model(tmp_path / "whole.safetensors"), load_model(resumed))
    whole, again = cc.Key.load(tmp_path / "whole.cckey"), cc.Key.load(tmp_path / "resumed.cckey")
    assert whole.tensors.keys() == again.tensors.keys()
    assert all(torch.equal(whole.tensors[k], again.tensors[k]) for k in whole.tensors)


def test_resume_with_other_arguments_is_refused(capsys, tmp_path, interrupt):
    """Another recipe or another key seed than the checkpoint's is refused, naming what differs (the seed only by
    its digest), and the checkpoint is kept; --resume with no checkpoint is an error, not a fresh start."""
    output = tmp_path / "victim.safetensors"
    interrupt.after(1)
    assert run(capsys, *embed_argv(output, "--key-seed", SEED_A))[0] == INTERRUPTED
    interrupt.after(0)
    code, _, err = run(capsys, *embed_argv(output, "--resume", "--epochs", "4"))
    assert code == EXIT_ERROR and "other arguments" in err and "config.epochs" in err
    code, _, err = run(capsys, *embed_argv(output, "--resume", "--key-seed", SEED_B))
    assert code == EXIT_ERROR and "secrets_sha256.key_seed" in err and SEED_A not in err
    assert ckpt.checkpoint_path(output).exists()  # refused, not overwritten
    code, _, err = run(capsys, *embed_argv(tmp_path / "never.safetensors", "--resume"))
    assert code == EXIT_ERROR and "no checkpoint to resume" in err


def test_protect_resumes_to_the_same_victim(splits, tmp_path, interrupt):
    def protect(name: str, *, resume: bool = False) -> cc.Protection:
        return cc.protect(
            splits,
            watermark="trigger-set",
            watermark_params={"n_triggers": 30},
            api="dynamarks",
            api_params={"n_verify": 100, "range_choices": 4},
            arch="mlp",
            config=cc.TrainConfig(epochs=3, seed=2),
            output=tmp_path / name,
            max_cost=None,
            key_seed=None if resume else SEED_A,
            resume=resume,
        )

    whole = protect("whole.safetensors")
    interrupt.after(2)
    with pytest.raises(KeyboardInterrupt):
        protect("resumed.safetensors")
    interrupt.after(0)
    resumed = protect("resumed.safetensors", resume=True)
    assert resumed.info["resumed"]["epochs_restored"] == 2
    assert same_weights(whole.victim, resumed.victim)
    assert [k.tensors.keys() for k in whole.keyset] == [k.tensors.keys() for k in resumed.keyset]
    for a, b in zip(whole.keyset, resumed.keyset):
        assert all(torch.equal(a.tensors[name], b.tensors[name]) for name in a.tensors)


# ---------------------------------------------------------------------------------------------------------------------
# steal: no answer bought twice
# ---------------------------------------------------------------------------------------------------------------------

ATTACKS = {
    # every query bought up front, then one training stage
    "soft-label": {},
    # queries between training rounds: each round's new points come from the surrogate the previous round trained
    "jacobian": {"seeds": 40, "rounds": 3},
    # an online training step after every round of queries (short stages trained again on resume, not saved)
    "knockoff": {"policy": "adaptive", "budget": 300, "round_size": 50},
}


@pytest.fixture(scope="module")
def victim(tiny):
    return cc.train("mlp", tiny.splits, config=tiny.config(), hidden=64)


def steal(victim, oracle, splits, output: Path, attack: str, *, resume: bool = False, **options):
    return cc.steal(
        oracle,
        splits.attacker_pool,
        attack=attack,
        params=ATTACKS[attack],
        arch="mlp",
        config=cc.TrainConfig(epochs=3, seed=1),
        splits=splits,
        output=output,
        resume=resume,
        **options,
    )


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_steal_resumes_without_buying_twice(splits, victim, tmp_path, interrupt, attack):
    """Interrupted after the first epoch of its last training stage, resumed: the two runs together ask the victim
    exactly what one uninterrupted run asks, and the surrogate is the same bit for bit."""
    whole_oracle = cc.as_oracle(victim)
    whole = steal(victim, whole_oracle, splits, tmp_path / "whole.safetensors", attack)
    # the first epoch of the last stage (jacobian: 3 rounds of 3 epochs, each round's last save the finished stage)
    saves = {"soft-label": 1, "jacobian": 7, "knockoff": 1}[attack]
    first, second = cc.as_oracle(victim), cc.as_oracle(victim)
    interrupt.after(saves)
    with pytest.raises(KeyboardInterrupt):
        steal(victim, first, splits, tmp_path / "resumed.safetensors", attack)
    interrupt.after(0)
    resumed = steal(victim, second, splits, tmp_path / "resumed.safetensors", attack, resume=True)
    assert first.queries > 0 and second.queries == whole_oracle.queries - first.queries
    assert resumed.queries == whole.queries == whole_oracle.queries
    assert resumed.info["resumed"]["answers_replayed"] == first.queries
    assert same_weights(whole.surrogate, resumed.surrogate)
    assert same_weights(load_model(tmp_path / "whole.safetensors"), load_model(tmp_path / "resumed.safetensors"))


def interrupting_oracle(victim, after: int):
    """The victim, but Ctrl-C arrives when ``after`` queries have been answered: a kill in the middle of buying."""
    oracle = cc.as_oracle(victim)
    answer = oracle.query

    def query(x):
        if oracle.queries >= after:
            raise KeyboardInterrupt
        return answer(x)

    oracle.query = query
    return oracle


def test_steal_interrupted_while_buying(splits, victim, tmp_path):
    """Killed after 512 of its 864 answers (two batches of 256): the resumed run buys only the 352 missing ones, and
    a batch torn by the kill in the middle of its write is dropped and bought again."""
    whole_oracle = cc.as_oracle(victim)
    whole = steal(victim, whole_oracle, splits, tmp_path / "whole.safetensors", "soft-label")
    first = interrupting_oracle(victim, after=512)
    output = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        steal(victim, first, splits, output, "soft-label")
    assert first.queries == 512 and whole_oracle.queries == 864
    second = cc.as_oracle(victim)
    resumed = steal(victim, second, splits, output, "soft-label", resume=True)
    assert second.queries == 864 - 512 and resumed.info["resumed"]["answers_replayed"] == 512
    assert same_weights(whole.surrogate, resumed.surrogate)

    torn = tmp_path / "torn.safetensors"
    with pytest.raises(KeyboardInterrupt):
        steal(victim, interrupting_oracle(victim, after=512), splits, torn, "soft-label")
    answers = ckpt.checkpoint_path(torn) / ckpt.ANSWERS
    with open(answers, "r+b") as f:  # the second batch's write cut short
        f.truncate(answers.stat().st_size - 100)
    third = cc.as_oracle(victim)
    again = steal(victim, third, splits, torn, "soft-label", resume=True)
    assert third.queries == 864 - 256 and again.info["resumed"]["answers_replayed"] == 256
    assert same_weights(whole.surrogate, again.surrogate)


def test_resumed_replay_checks_the_inputs(splits, victim, tmp_path):
    """A recorded answer is only given back to the very inputs it answered: a run that asks other inputs (here: the
    record's first batch rewritten with another digest) stops with a clear error instead of using it."""
    output = tmp_path / "stolen.safetensors"
    with pytest.raises(KeyboardInterrupt):
        steal(victim, interrupting_oracle(victim, after=256), splits, output, "soft-label")
    answers = ckpt.checkpoint_path(output) / ckpt.ANSWERS
    data = answers.read_bytes()
    start = data.index(b'"inputs": "') + len(b'"inputs": "')
    answers.write_bytes(data[:start] + (b"0" if data[start : start + 1] != b"0" else b"1") + data[start + 1 :])
    with pytest.raises(CorruptFile, match="other inputs than the recorded ones"):
        steal(victim, cc.as_oracle(victim), splits, output, "soft-label", resume=True)


def test_a_hostile_checkpoint_is_never_unpickled(splits, victim, tmp_path):
    """state.pt is read with torch.load(weights_only=True): a pickle whose payload would create a file is refused."""
    output = tmp_path / "stolen.safetensors"
    folder = ckpt.checkpoint_path(output)
    folder.mkdir()
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / ckpt.STATE).write_bytes(pickle.dumps({"format": ckpt.FORMAT, "stages": Payload()}, protocol=2))
    with pytest.raises(CorruptFile, match="unreadable"):
        steal(victim, cc.as_oracle(victim), splits, output, "soft-label", resume=True)
    assert not marker.exists()
    with pytest.raises(InvalidArgument, match="resuming needs the output path"):
        cc.steal(victim, splits.attacker_pool, arch="mlp", resume=True)


@pytest.mark.slow  # a new Python process imports torch: several seconds on a loaded machine
def test_embed_killed_with_sigkill_resumes(capsys, tmp_path):
    """A real ``copycatch embed`` process killed with SIGKILL as soon as its first epoch is checkpointed (no chance
    to clean up): ``--resume`` in a new process reaches the uninterrupted run's weights."""
    argv = embed_argv(tmp_path / "killed.safetensors", "--key-seed", SEED_A, "--epochs", "15")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COPYCATCH_PROGRESS": "0"}  # the same arithmetic as this process
    process = subprocess.Popen([sys.executable, "-m", "copycatch.cli", *argv], env=env, stderr=subprocess.PIPE)
    state = ckpt.checkpoint_path(tmp_path / "killed.safetensors") / ckpt.STATE
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL and state.exists()
    assert not (tmp_path / "killed.safetensors").exists()
    whole = tmp_path / "whole.safetensors"
    assert run(capsys, *embed_argv(whole, "--key-seed", SEED_A, "--epochs", "15"))[0] == 0
    code, out, _ = run(capsys, *embed_argv(tmp_path / "killed.safetensors", "--resume", "--epochs", "15"))
    assert code == 0 and "resumed from" in out
    assert same_weights(load_model(whole), load_model(tmp_path / "killed.safetensors"))


def comparable(value):
    """``Embedding.info`` without what differs between any two runs: timings, and what the resumed run adds."""
    if isinstance(value, dict):
        drop = ("resumed", "commitment")
        return {k: comparable(v) for k, v in value.items() if "seconds" not in k and k not in drop}
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, float) and value != value:
        return "nan"
    return value


@pytest.mark.parametrize("scheme", CLASSIFIER_SCHEMES)
def test_every_scheme_resumes_to_the_same_embedding(tiny, tmp_path, interrupt, scheme):
    """Generated over the registry, so that a scheme whose training hook leaves part of its changing state out of
    ``state_attrs`` fails here. Interrupted after the last epoch saved in the middle of a stage (the stage that
    trains the mark, with its hooks, where there is one) and resumed: the victim, the key's tensors and the
    embedding's record are the uninterrupted run's."""
    splits, data = tiny.splits, SCHEMES.get(scheme).factory.tiny_data
    if data:  # the scheme's own tiny data, as the registry tests use
        dataset = cc.load_dataset("synthetic", **{"n": 2400, "num_classes": 4, "size": 8, **data})
        splits = cc.make_splits(dataset, seed=0, fractions=splits.fractions)

    def embed(name: str, *, resume: bool = False) -> cc.Embedding:
        output = tmp_path / name
        config = tiny.config()
        return cc.embed(
            scheme, splits, arch="mlp", params=tiny.params(scheme), config=config, output=output, max_cost=None,
            resume=resume,
        )  # fmt: skip

    whole = embed("whole.safetensors")
    mid_stage = [i + 1 for i, done in enumerate(interrupt.writes) if not done]
    assert mid_stage, "every stage of 3 epochs saves two epochs before it finishes"
    interrupt.after(mid_stage[-1])
    with pytest.raises(KeyboardInterrupt):
        embed("resumed.safetensors")
    interrupt.after(0)
    resumed = embed("resumed.safetensors", resume=True)
    assert resumed.info["resumed"]["epochs_restored"] >= 1
    assert same_weights(whole.victim, resumed.victim)
    assert whole.key.tensors.keys() == resumed.key.tensors.keys()
    assert all(torch.equal(whole.key.tensors[k], resumed.key.tensors[k]) for k in whole.key.tensors)
    assert comparable(whole.info) == comparable(resumed.info)


@pytest.mark.parametrize(
    ("lr", "epochs", "epochs_run"),
    [
        (0.05, 6, 6),  # holdout accuracy rises every epoch: what epochs 4-6 do shows in the final weights
        (0.2, 8, 5),  # it peaks at epoch 3 and early stopping ends the run at epoch 5 with epoch 3's weights
    ],
)
def test_training_resumes_its_optimiser_schedule_dropout_and_early_stopping(
    tiny, tmp_path, interrupt, lr, epochs, epochs_run
):
    """The training loop itself, inside a checkpoint, interrupted after epoch 3: SGD momentum, a cosine schedule,
    dropout (the global torch generator) and early stopping (best weights, patience) continue where they were
    saved; a resumed run that forgot the best epoch would not stop at epoch 5."""
    config = tiny.config(epochs=epochs, optimizer="sgd", lr=lr, schedule="cosine", patience=2)

    def train(*, resume: bool = False) -> cc.Classifier:
        checkpoint = ckpt.RunCheckpoint(tmp_path / "train.ckpt", {"config": config}, resume=resume)
        with ckpt.checkpointing(checkpoint):
            model = cc.train("cnn", tiny.splits, config=config, width=8, hidden=32)  # it has dropout
        checkpoint.remove()
        return model

    whole = train()
    interrupt.after(3)
    with pytest.raises(KeyboardInterrupt):
        train()
    interrupt.after(0)
    resumed = train(resume=True)
    assert whole.provenance["epochs_run"] == epochs_run
    assert same_weights(whole, resumed)
    assert comparable(whole.provenance) == comparable(resumed.provenance)
