"""The query transcript: hash chain, tamper detection, bit-exact replay, resume, and the budget across sessions."""

import json

import pytest
import torch

import copycatch as cc
from copycatch.core.errors import BudgetExceeded, CorruptFile, InvalidArgument, SuspectError
from copycatch.verification.transcript import Transcript, TranscriptOracle, main, row_hashes, verify_chain

SUSPECT = {"kind": "python callable", "identity": "tests:model"}


class Flaky(cc.Oracle):
    """Answers deterministic probabilities; fails once ``fail_after`` inputs have been answered."""

    def __init__(self, fail_after=None, classes=3):
        super().__init__(classes, (1, 2, 2), name="flaky")
        self.fail_after = fail_after
        self.asked = 0

    def _answer(self, x):
        if self.fail_after is not None and self.asked + len(x) > self.fail_after:
            raise SuspectError("flaky refused the query")
        self.asked += len(x)
        logits = torch.stack([x.sum((1, 2, 3)), x.mean((1, 2, 3)) * 3, -x.sum((1, 2, 3))], 1) / 7
        return torch.softmax(logits, 1)


def _inputs(n=12, seed=0):
    return torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed))


def test_answers_are_recorded_and_replayed_bit_exactly(tmp_path):
    path = tmp_path / "t.jsonl"
    inner = Flaky()
    oracle = TranscriptOracle(inner, Transcript.create(path, SUSPECT), chunk=5)
    x = _inputs()
    first = oracle.query(x)
    assert inner.asked == 12 and first.shape == (12, 3)
    again_inner = Flaky()
    again = TranscriptOracle(again_inner, Transcript.open(path, SUSPECT, resume=True), chunk=5)
    second = again.query(x)
    assert again_inner.asked == 0 and torch.equal(first, second)
    assert again.transcript.replayed == 12 and again.queries == 12
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["header", "answers", "answers", "answers"]  # chunks of 5, 5, 2
    assert lines[1]["input_sha256"] == row_hashes(x[:5])


def test_repeated_inputs_replay_in_order_not_the_first_answer_twice(tmp_path):
    """A stochastic API answers the same input differently; the k-th repeat must get the k-th recorded answer."""
    transcript = Transcript(SUSPECT)
    x = _inputs(1).repeat(3, 1, 1, 1)
    answers = iter([torch.tensor([[0.1, 0.9]]), torch.tensor([[0.2, 0.8]]), torch.tensor([[0.3, 0.7]])])
    got = transcript.answer(x, lambda xs: torch.cat([next(answers) for _ in range(len(xs))]), chunk=1)
    transcript.save_as(tmp_path / "t.jsonl")
    replay = Transcript.load(tmp_path / "t.jsonl")
    again = replay.answer(x, lambda xs: pytest.fail("nothing should be asked"), chunk=1)
    assert torch.equal(got, again) and again[:, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_a_failure_keeps_every_answer_before_it_and_resume_asks_only_the_rest(tmp_path):
    path = tmp_path / "t.jsonl"
    oracle = TranscriptOracle(Flaky(fail_after=7), Transcript.create(path, SUSPECT), chunk=3)
    x = _inputs()
    with pytest.raises(SuspectError, match="refused"):
        oracle.query(x)
    partial = Transcript.load(path)
    assert partial.answered == 6 and partial.lines[-1]["kind"] == "error"
    assert partial.lines[-1]["pending_queries"] == 6
    healthy = Flaky()
    resumed = TranscriptOracle(healthy, partial, chunk=3)
    out = resumed.query(x)
    assert healthy.asked == 6 and partial.replayed == 6
    assert torch.allclose(out, Flaky().query(x))


@pytest.mark.parametrize("tamper", ["answer", "drop", "swap"])
def test_any_change_to_the_record_breaks_the_chain(tmp_path, tamper):
    path = tmp_path / "t.jsonl"
    oracle = TranscriptOracle(Flaky(), Transcript.create(path, SUSPECT), chunk=4)
    oracle.query(_inputs())
    lines = path.read_text().splitlines()
    if tamper == "answer":
        record = json.loads(lines[2])
        record["answers"][0][0] += 0.01
        lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    elif tamper == "drop":
        del lines[2]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptFile, match="line"):
        Transcript.load(path)
    assert main([str(path)]) == 1


def test_a_line_cut_by_a_crash_is_dropped_and_the_rest_kept(tmp_path):
    path = tmp_path / "t.jsonl"
    oracle = TranscriptOracle(Flaky(), Transcript.create(path, SUSPECT), chunk=4)
    oracle.query(_inputs())
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # the last line loses its end and its newline
    t = Transcript.load(path)
    assert t.answered == 8 and t.repairs and "truncated" in t.repairs[0]
    verify_chain(Transcript.load(path).lines)  # the repaired file is a valid chain
    assert main([str(path)]) == 0


def test_resuming_needs_the_same_suspect_and_starting_needs_a_fresh_file(tmp_path):
    path = tmp_path / "t.jsonl"
    Transcript.create(path, SUSPECT)
    with pytest.raises(InvalidArgument, match="--resume"):
        Transcript.create(path, SUSPECT)
    with pytest.raises(InvalidArgument, match="recorded for suspect"):
        Transcript.open(path, {"kind": "http", "identity": "http://elsewhere"}, resume=True)
    with pytest.raises(InvalidArgument, match="nothing to resume"):
        Transcript.open(tmp_path / "missing.jsonl", SUSPECT, resume=True)


def test_budget_on_the_transcript_oracle_counts_replayed_answers(tmp_path):
    """The budget caps a verification's total over sessions, so a resumed run cannot overspend."""
    path = tmp_path / "t.jsonl"
    TranscriptOracle(Flaky(), Transcript.create(path, SUSPECT), chunk=4).query(_inputs()[:8])
    inner = Flaky()
    resumed = TranscriptOracle(inner, Transcript.load(path), chunk=4, budget=10)
    with pytest.raises(BudgetExceeded):
        resumed.query(_inputs())
    assert inner.asked == 0
    assert resumed.query(_inputs()[:10]).shape == (10, 3) and inner.asked == 2


def test_labels_only_answers_mark_the_record(tmp_path):
    labels = cc.CallableOracle(lambda a: (a.reshape(len(a), -1).sum(1) > 2).astype("int64"), 2, input_shape=(1, 2, 2))
    oracle = TranscriptOracle(labels, Transcript(SUSPECT))
    oracle.query(_inputs())
    assert oracle.output_kind == "labels" and oracle.transcript.output_kind == "labels"
