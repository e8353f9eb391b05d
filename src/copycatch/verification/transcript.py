"""A hash-chained, resumable record of every query sent to a suspect and every answer it gave.

Verification against a paid or hostile API must survive the API failing half-way, and its record must let
another expert check that the evidence follows from what the suspect answered. A :class:`Transcript` is a
JSON Lines file:

* line 1, the header: format, creation time, package version and the suspect's fingerprint
  (:func:`copycatch.oracles.suspects.describe_suspect`);
* then one record per event: ``answers`` (a batch the suspect answered: SHA-256 of each input row, the
  answers, the output kind), ``session`` (a verification started or resumed: key digests, command line),
  ``error`` (the suspect failed: the message).

Every line carries ``prev`` (the previous line's hash) and ``hash`` = SHA-256 of its own canonical JSON
without ``hash``, so the head hash commits to the whole history: changing, dropping or reordering any line
breaks the chain, and :meth:`Transcript.load` refuses such a file (:class:`~copycatch.core.errors.CorruptFile`).
Each line is flushed and fsync'ed as soon as it is written, so a crash loses at most the line being written;
a truncated *last* line is discarded on load (and reported in :attr:`Transcript.repairs`).

Resuming: answers are replayed by input hash, the k-th query of an input in this session getting the k-th
recorded answer to it, so a re-run asks the suspect only what it has not answered yet, and re-runs are
bit-exact (answers are stored as the float32 values the suspect returned). :class:`TranscriptOracle` puts a
transcript in front of any oracle; :class:`~copycatch.oracles.http.HttpOracle` also takes one directly.

Checking a transcript by hand: ``python -m copycatch.verification.transcript FILE`` verifies the chain and prints
the head.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..core.errors import CopycatchError, CorruptFile, InvalidArgument
from ..oracles.base import Oracle

FORMAT = "copycatch.transcript/1"
GENESIS = "0" * 64


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def line_hash(record: dict[str, Any]) -> str:
    """SHA-256 of a record's canonical JSON without its own ``hash`` field."""
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"}).encode()).hexdigest()


def row_hashes(x: torch.Tensor) -> list[str]:
    """SHA-256 of each input row as float32 little-endian bytes, with its shape (so 1×8×8 ≠ 64)."""
    x = x.detach().float().cpu().contiguous()
    shape = json.dumps(list(x.shape[1:])).encode()
    raw = x.reshape(len(x), -1).numpy().astype("<f4", copy=False)
    return [hashlib.sha256(shape + row.tobytes()).hexdigest() for row in raw]


class Transcript:
    """The record of one suspect's answers; in memory (``path=None``) or appended to a file line by line."""

    def __init__(self, suspect: dict[str, Any] | None = None, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self.read_only = False  # True: records stay in memory (an offline check must not change the file it checks)
        self.lines: list[dict[str, Any]] = []
        self.repairs: list[str] = []
        self._answers: dict[str, list[torch.Tensor]] = {}
        self._used: Counter[str] = Counter()
        self.new_answers = 0  # answered by the suspect in this session
        self.replayed = 0  # answered from the record in this session
        header = {
            "kind": "header",
            "format": FORMAT,
            "created": _now(),
            "package_version": __version__,
            "suspect": suspect or {},
        }
        self._append(header, write=False)
        if self.path is not None:
            self._write_all()

    # -- files -----------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, suspect: dict[str, Any], *, overwrite: bool = False) -> Transcript:
        path = Path(path)
        if path.exists() and not overwrite:
            raise InvalidArgument(
                f"transcript {path} already exists; continue it with --resume, or remove it to start over"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(suspect, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Transcript:
        """Read and check a transcript file; later records are appended to the same file."""
        path = Path(path)
        if not path.is_file():
            raise InvalidArgument(f"{path}: no such transcript (nothing to resume)")
        text = path.read_text(encoding="utf-8")
        raw_lines = text.split("\n")
        if raw_lines and raw_lines[-1] == "":
            raw_lines.pop()
        lines: list[dict[str, Any]] = []
        repairs: list[str] = []
        for i, raw in enumerate(raw_lines):
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                if i == len(raw_lines) - 1 and i > 0 and not text.endswith("\n"):
                    # the process died while writing this line: it was never acknowledged, drop it
                    repairs.append(f"discarded a truncated last line ({len(raw)} bytes) written by an interrupted run")
                    break
                raise CorruptFile(f"{path}: line {i + 1} is not valid JSON") from None
        if not lines or lines[0].get("kind") != "header" or lines[0].get("format") != FORMAT:
            raise CorruptFile(f"{path}: not a copycatch transcript (expected a {FORMAT} header)")
        verify_chain(lines, name=str(path))
        self = cls.__new__(cls)
        self.path, self.lines, self.repairs, self.read_only = path, lines, repairs, False
        self._answers, self._used = {}, Counter()
        self.new_answers = self.replayed = 0
        for line in lines:
            if line.get("kind") == "answers":
                self._index(line)
        if repairs:
            self._write_all()
        return self

    @classmethod
    def open(cls, path: str | os.PathLike, suspect: dict[str, Any], *, resume: bool) -> Transcript:
        """Start a transcript at ``path``, or (``resume``) continue it after checking it is this suspect's."""
        if not resume:
            return cls.create(path, suspect)
        t = cls.load(path)
        t.check_suspect(suspect)
        return t

    def check_suspect(self, suspect: dict[str, Any]) -> None:
        recorded = self.suspect
        for field in ("kind", "identity"):
            if recorded.get(field) != suspect.get(field):
                raise InvalidArgument(
                    f"transcript {self.path} was recorded for suspect {recorded.get('identity')!r} "
                    f"({recorded.get('kind')}), not {suspect.get('identity')!r} ({suspect.get('kind')}); "
                    "resume with the same suspect, or start a new transcript"
                )

    def save_as(self, path: str | os.PathLike) -> Path:
        """Write an in-memory transcript to ``path`` (e.g. a partial one after a failure) and keep appending there."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_all()
        return self.path

    def _write_all(self) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".part")
        with open(tmp, "w", encoding="utf-8") as f:
            for line in self.lines:
                f.write(_canonical(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _append(self, record: dict[str, Any], *, write: bool = True) -> dict[str, Any]:
        record = dict(record)
        record["seq"] = len(self.lines)
        record["prev"] = self.lines[-1]["hash"] if self.lines else GENESIS
        record["hash"] = line_hash(record)
        self.lines.append(record)
        if write and self.path is not None and not self.read_only:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(_canonical(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return record

    # -- records ---------------------------------------------------------------------------------------------------
    @property
    def header(self) -> dict[str, Any]:
        return self.lines[0]

    @property
    def suspect(self) -> dict[str, Any]:
        return self.header.get("suspect") or {}

    @property
    def head(self) -> str:
        return self.lines[-1]["hash"]

    @property
    def answered(self) -> int:
        """Answers on record, over all sessions."""
        return sum(line["n"] for line in self.lines if line.get("kind") == "answers")

    @property
    def output_kind(self) -> str:
        kinds = {line.get("output_kind") for line in self.lines if line.get("kind") == "answers"}
        return "labels" if "labels" in kinds else "probs"

    def record_session(self, **fields: Any) -> None:
        self._append({"kind": "session", "time": _now(), **fields})

    def record_error(self, message: str, *, pending: int) -> None:
        self._append({"kind": "error", "time": _now(), "message": message, "pending_queries": pending})

    def record_answers(self, hashes: Sequence[str], answers: torch.Tensor, output_kind: str) -> None:
        answers = answers.detach().float().cpu()
        if len(hashes) != len(answers):
            raise InvalidArgument(f"{len(hashes)} input hashes for {len(answers)} answers")
        line = self._append(
            {
                "kind": "answers",
                "time": _now(),
                "n": len(hashes),
                "output_kind": output_kind,
                "input_sha256": list(hashes),
                "answers": answers.tolist(),
            }
        )
        self._index(line)

    def _index(self, line: dict[str, Any]) -> None:
        answers = torch.tensor(line["answers"], dtype=torch.float32)
        for h, row in zip(line["input_sha256"], answers):
            self._answers.setdefault(h, []).append(row)

    # -- answering -------------------------------------------------------------------------------------------------
    def answer(
        self,
        x: torch.Tensor,
        ask: Callable[[torch.Tensor], torch.Tensor],
        *,
        chunk: int = 256,
        output_kind: Callable[[], str] | str = "probs",
    ) -> torch.Tensor:
        """Answers for ``x``: replayed where on record, else asked (``chunk`` rows at a time) and recorded.

        ``ask`` must return validated N×C answers (an oracle's ``query``). If it raises, the error is recorded
        and re-raised; every chunk answered before it stays on record.
        """
        if chunk < 1:
            raise InvalidArgument(f"chunk size must be >= 1, got {chunk}")
        hashes = row_hashes(x)
        rows: list[torch.Tensor | None] = [None] * len(x)
        missing: list[int] = []
        for i, h in enumerate(hashes):
            recorded = self._answers.get(h, ())
            if self._used[h] < len(recorded):
                rows[i] = recorded[self._used[h]]
                self._used[h] += 1
                self.replayed += 1
            else:
                missing.append(i)
        for start in range(0, len(missing), chunk):
            idx = missing[start : start + chunk]
            try:
                out = ask(x[idx])
            except CopycatchError as exc:
                self.record_error(str(exc), pending=len(missing) - start)
                raise
            kind = output_kind() if callable(output_kind) else output_kind
            self.record_answers([hashes[i] for i in idx], out, kind)
            for i, row in zip(idx, out.detach().float().cpu()):
                rows[i] = row
                self._used[hashes[i]] += 1
            self.new_answers += len(idx)
        if not rows:
            return torch.empty(0, 0)
        widths = {len(r) for r in rows if r is not None}
        if len(widths) > 1:
            raise CorruptFile(
                f"transcript {self.path or '(memory)'} holds answers of different widths {sorted(widths)}"
            )
        return torch.stack([r for r in rows if r is not None])

    # -- reporting -------------------------------------------------------------------------------------------------
    def summary(self, *, chain: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "path": str(self.path) if self.path else None,
            "read_only": self.read_only,
            "lines": len(self.lines),
            "answers_on_record": self.answered,
            "answered_this_session": self.new_answers,
            "replayed_this_session": self.replayed,
            "errors": sum(1 for line in self.lines if line.get("kind") == "error"),
            "head": self.head,
            "hash_rule": "hash = SHA-256 of the line's canonical JSON (sorted keys, no spaces) without 'hash'; "
            "each line's 'prev' is the previous line's hash",
        }
        if chain:
            out["chain"] = [line["hash"] for line in self.lines]
        if self.repairs:
            out["repairs"] = list(self.repairs)
        return out


def verify_chain(lines: Iterable[dict[str, Any]], *, name: str = "transcript") -> str:
    """Check every line's hash and link; return the head hash. Raises :class:`CorruptFile` at the first break."""
    prev = GENESIS
    for i, line in enumerate(lines):
        if line.get("prev") != prev:
            raise CorruptFile(
                f"{name}: line {i + 1} does not follow line {i} (hash chain broken: a line was "
                "removed, inserted or reordered)"
            )
        if line.get("hash") != line_hash(line):
            raise CorruptFile(f"{name}: line {i + 1} was modified after it was written (hash mismatch)")
        if line.get("seq") != i:
            raise CorruptFile(f"{name}: line {i + 1} carries sequence number {line.get('seq')}")
        prev = line["hash"]
    return prev


def _replay_kind(inner: str, recorded: str) -> str:
    """What a transcript oracle answers: an encoder's embeddings stay embeddings (a transcript's recorded kind only
    tells labels from probabilities); else labels when either side gave labels, probabilities otherwise."""
    if inner == "embedding":
        return inner
    return "labels" if "labels" in (inner, recorded) else "probs"


class TranscriptOracle(Oracle):
    """Any oracle behind a transcript: recorded answers are replayed, new ones asked ``chunk`` rows at a time.

    ``queries`` counts every answer this oracle delivered (replayed ones included), so a budget set on it caps
    the verification's total over all sessions; the inner oracle counts only what the suspect really answered.
    """

    def __init__(self, inner: Oracle, transcript: Transcript, *, chunk: int = 256, budget: int | None = None):
        super().__init__(inner.num_classes, inner.input_shape, budget=budget, name=inner.name)
        if chunk < 1:
            raise InvalidArgument(f"chunk size must be >= 1, got {chunk}")
        self.inner, self.transcript, self.chunk = inner, transcript, chunk
        self.output_kind = _replay_kind(inner.output_kind, transcript.output_kind)

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.transcript.answer(
                x, self.inner.query, chunk=self.chunk, output_kind=lambda: self.inner.output_kind
            )
        finally:
            self.output_kind = _replay_kind(self.inner.output_kind, self.transcript.output_kind)

    def describe(self) -> dict[str, Any]:
        d = self.inner.describe()
        d["queries"] = self.queries
        d["transcript"] = self.transcript.summary(chain=False)
        return d


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m copycatch.verification.transcript FILE...``: check each chain, print its head and contents."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m copycatch.verification.transcript FILE...  (check a query transcript's hash chain)")
        return 0 if argv else 2
    status = 0
    for name in argv:
        try:
            t = Transcript.load(name)
        except CopycatchError as exc:
            print(f"{name}: BROKEN: {exc}")
            status = 1
            continue
        s = t.summary(chain=False)
        print(
            f"{name}: chain OK, {s['lines']} lines, {s['answers_on_record']} answers, {s['errors']} errors, "
            f"head {s['head']}"
        )
        for note in t.repairs:
            print(f"  note: {note}")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
