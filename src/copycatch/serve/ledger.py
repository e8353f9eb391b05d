"""The query ledger: an append-only record of who asked what, one JSON line per request.

Every ``POST /v1/predict`` (answered or refused) becomes one line::

    {"time": "2025-01-01T12:00:00.123Z", "t": 1735732800.123, "request": "5f1c…", "key": "alice",
     "client": "127.0.0.1", "status": 200, "output": "probs", "n": 2,
     "inputs": ["<digest>", "<digest>"], "outputs": ["<digest>", "<digest>"], "ms": 3.1}

Digests are the first 32 hex digits (128 bits) of SHA-256 over each example's float32 bytes
(:func:`row_digests`), so an owner can later check whether a given image was queried without storing
the images. Secrets (API keys, watermark parameters) are never written.

Crash safety: each line is written with a single ``os.write`` of the complete line to a file opened with
``O_APPEND``, so lines never interleave and an exception leaves either the whole line or nothing; a short
write (disk full) is rolled back with ``ftruncate`` before the error is raised. A process killed by
``SIGKILL`` in the middle of a write can leave the *last* line cut short (Linux stops copying a write at a
page boundary once a fatal signal is pending); readers count that tail as one unreadable line, and the next
:class:`Ledger` opened on the file ends it with a newline so that every later line stands alone.
``fsync`` policy: ``always`` (after every line), ``interval`` (a background thread syncs dirty data every
``fsync_interval`` seconds; the default) or ``never`` (leave it to the OS). Only an operating-system crash can lose
lines the kernel already holds, and then only the unsynced tail — never half a line in the middle.

Rotation by size: when the live file would exceed ``max_bytes`` it is renamed to ``<name>.<seq>``
(``seq`` increasing, 6 digits) and a fresh file is started. Rotated files are kept (it is an audit log)
unless ``keep`` limits how many. A lock file stops two servers from appending to one ledger.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.errors import CopycatchError, CorruptFile, InvalidArgument

FsyncPolicy = Literal["always", "interval", "never"]
DIGEST_HEX = 32
ANONYMOUS = "anonymous"


class LedgerError(CopycatchError):
    """The ledger cannot be opened or written (in use by another server, disk full, no permission)."""


def row_digests(rows: Any) -> list[str]:
    """Per-example digests: SHA-256 over each row's C-contiguous bytes (float32 inputs/answers, int64 labels)."""
    arr = np.ascontiguousarray(rows.numpy() if hasattr(rows, "numpy") else np.asarray(rows))
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    flat = arr.reshape(len(arr), -1) if arr.ndim > 1 else arr.reshape(len(arr), 1)
    return [hashlib.sha256(row.tobytes()).hexdigest()[:DIGEST_HEX] for row in flat]


def _utc_iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _rotated_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(path.name) + r"\.(\d{6,})$")


def ledger_files(path: str | os.PathLike) -> list[Path]:
    """The ledger's files oldest first: rotated ``<name>.<seq>`` in sequence order, then the live file."""
    path = Path(path)
    pattern = _rotated_pattern(path)
    parent = path.parent if str(path.parent) else Path(".")
    rotated = []
    if parent.is_dir():
        for entry in parent.iterdir():
            m = pattern.match(entry.name)
            if m and entry.is_file():
                rotated.append((int(m.group(1)), entry))
    files = [p for _, p in sorted(rotated)]
    if path.is_file():
        files.append(path)
    return files


class Ledger:
    """Append-only JSON-lines ledger with size rotation; thread-safe within one process."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_bytes: int = 64 * 2**20,
        keep: int | None = None,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
    ):
        if max_bytes < 4096:
            raise InvalidArgument(f"ledger max_bytes must be >= 4096, got {max_bytes}")
        if keep is not None and keep < 0:
            raise InvalidArgument(f"ledger keep must be >= 0 rotated files, got {keep}")
        if fsync not in ("always", "interval", "never"):
            raise InvalidArgument(f"fsync policy must be always, interval or never, got {fsync!r}")
        if fsync_interval <= 0:
            raise InvalidArgument(f"fsync interval must be > 0 seconds, got {fsync_interval}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.keep = keep
        self.fsync = fsync
        self.fsync_interval = float(fsync_interval)
        self._lock = threading.Lock()
        self._dirty = False
        self._closed = False
        self._fd = -1
        self._lock_fd = -1
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger folder {self.path.parent}: {exc.strerror}") from None
        check_ledger_file(self.path)  # never append audit lines to somebody else's file
        self._acquire_file_lock()
        self._open()
        self._syncer: threading.Thread | None = None
        self._stop = threading.Event()
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="ledger-fsync", daemon=True)
            self._syncer.start()

    # -- files -----------------------------------------------------------------------------------------------------
    def _acquire_file_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(f"cannot open the ledger lock {lock_path}: {exc.strerror}") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX; single-writer is then the user's duty
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise LedgerError(
                f"ledger {self.path} is in use by another server; give each server its own ledger"
            ) from None

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc.strerror}") from None
        self._size = os.fstat(self._fd).st_size
        if self._size and not self._ends_with_newline():
            # A foreign writer (or an OS crash) left an unterminated tail: end it so the next line stands alone;
            # readers count the tail as one corrupt line.
            self._write_all(b"\n")

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        existing = [
            int(_rotated_pattern(self.path).match(p.name).group(1))  # type: ignore[union-attr]
            for p in ledger_files(self.path)
            if p != self.path
        ]
        seq = max(existing, default=0) + 1
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{seq:06d}"))
        if self.keep is not None:
            rotated = [p for p in ledger_files(self.path) if p != self.path]
            for old in rotated[: max(0, len(rotated) - self.keep)]:
                old.unlink(missing_ok=True)
        self._open()

    def _write_all(self, data: bytes) -> None:
        before = self._size
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            raise LedgerError(f"cannot write ledger {self.path}: {exc.strerror}") from None
        if written != len(data):
            # Never leave half a line: roll the file back to where this line began.
            os.ftruncate(self._fd, before)
            raise LedgerError(f"short write to ledger {self.path} ({written} of {len(data)} bytes; disk full?)")
        self._size = before + written

    # -- writing ---------------------------------------------------------------------------------------------------
    def record(self, entry: dict[str, Any]) -> None:
        """Append one entry as one line (``time`` and ``t`` are filled in when absent)."""
        t = entry.get("t")
        if t is None:
            t = time.time()
            entry = {"time": _utc_iso(t), "t": round(t, 6), **entry}
        line = (json.dumps(entry, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n").encode()
        with self._lock:
            if self._closed:
                raise LedgerError(f"ledger {self.path} is closed")
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._write_all(line)
            if self.fsync == "always":
                os.fsync(self._fd)
            else:
                self._dirty = True

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            self.sync()

    def sync(self) -> None:
        with self._lock:
            if self._dirty and self._fd >= 0:
                os.fsync(self._fd)
                self._dirty = False

    def close(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(timeout=5)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd >= 0:
                if self.fsync != "never":
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # closing releases the flock
                self._lock_fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LedgerRead:
    """Entries of a ledger plus how many lines could not be read (torn or foreign)."""

    entries: list[dict[str, Any]]
    corrupt_lines: int
    files: list[Path]


def iter_entries(path: str | os.PathLike, *, corrupt: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Entries oldest first over the rotated files and the live file; unreadable lines are counted in
    ``corrupt[0]`` (when given) and skipped."""
    files = ledger_files(path)
    if not files:
        raise InvalidArgument(f"{path}: no such ledger (nor rotated files {Path(path).name}.NNNNNN)")
    for file in files:
        with open(file, "rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw)
                    if not isinstance(entry, dict) or not raw.endswith(b"\n"):
                        raise ValueError
                except ValueError:
                    if corrupt is not None:
                        corrupt[0] += 1
                    continue
                yield entry


def read_ledger(path: str | os.PathLike) -> LedgerRead:
    corrupt = [0]
    entries = list(iter_entries(path, corrupt=corrupt))
    return LedgerRead(entries, corrupt[0], ledger_files(path))


def _time_of(entry: dict[str, Any]) -> float:
    t = entry.get("t")
    return float(t) if isinstance(t, (int, float)) else 0.0


def read_ledgers(paths: Sequence[str | os.PathLike]) -> tuple[list[LedgerRead], list[dict[str, Any]]]:
    """Several replicas' ledgers (each with its rotated files): each one read, and all their entries in one time
    order (``t``; lines without it first). Each replica keeps its own ledger, so a ledger named twice would count
    its requests twice: that is refused."""
    seen: dict[Path, str] = {}
    for path in paths:
        real = Path(path).resolve()
        if real in seen:
            raise InvalidArgument(f"ledger {path} is given twice (as {seen[real]}); name each replica's ledger once")
        seen[real] = str(path)
    reads = [read_ledger(path) for path in paths]
    return reads, sorted((e for r in reads for e in r.entries), key=_time_of)


def spent_by_key(path: str | os.PathLike, *, since: float | None = None) -> dict[str, int]:
    """Queries answered per key (status 200), optionally only those at or after unix time ``since``;
    used to carry budgets over a server restart."""
    if not ledger_files(path):
        return {}
    spent: dict[str, int] = {}
    for entry in iter_entries(path):
        if entry.get("status") == 200 and (since is None or float(entry.get("t", 0)) >= since):
            key = str(entry.get("key", ANONYMOUS))
            spent[key] = spent.get(key, 0) + int(entry.get("n", 0))
    return spent


@dataclasses.dataclass
class KeySummary:
    key: str
    requests: int = 0
    answered: int = 0
    refused: dict[str, int] = dataclasses.field(default_factory=dict)  # status code → requests
    queries: int = 0  # inputs answered
    unique_inputs: int = 0
    first: str = ""
    last: str = ""
    outputs: list[str] = dataclasses.field(default_factory=list)
    clients: list[str] = dataclasses.field(default_factory=list)

    @property
    def repeat_rate(self) -> float:
        """Share of answered inputs that had been asked before by this key (averaging attacks repeat queries)."""
        return 0.0 if not self.queries else 1.0 - self.unique_inputs / self.queries

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["repeat_rate"] = round(self.repeat_rate, 4)
        return d


def summarize(
    entries: Iterable[dict[str, Any]], *, since: float | None = None, keys: Sequence[str] | None = None
) -> list[KeySummary]:
    """Per-key totals, busiest key first."""
    by_key: dict[str, KeySummary] = {}
    seen: dict[str, set[str]] = {}
    outputs: dict[str, set[str]] = {}
    clients: dict[str, set[str]] = {}
    wanted = set(keys) if keys else None
    for e in entries:
        t = e.get("t")
        if since is not None and (not isinstance(t, (int, float)) or t < since):
            continue
        key = str(e.get("key", ANONYMOUS))
        if wanted is not None and key not in wanted:
            continue
        s = by_key.get(key)
        if s is None:
            s = by_key[key] = KeySummary(key)
            seen[key], outputs[key], clients[key] = set(), set(), set()
        s.requests += 1
        stamp = str(e.get("time", ""))
        s.first = s.first or stamp
        s.last = stamp or s.last
        status = e.get("status")
        if status == 200:
            s.answered += 1
            n = int(e.get("n", 0))
            s.queries += n
            seen[key].update(e.get("inputs") or ())
            if e.get("output"):
                outputs[key].add(str(e["output"]))
        else:
            code = str(status)
            s.refused[code] = s.refused.get(code, 0) + 1
        if e.get("client"):
            clients[key].add(str(e["client"]))
    for key, s in by_key.items():
        s.unique_inputs = len(seen[key])
        s.outputs = sorted(outputs[key])
        s.clients = sorted(clients[key])
    return sorted(by_key.values(), key=lambda s: (-s.queries, -s.requests, s.key))


def check_ledger_file(path: str | os.PathLike) -> None:
    """Raise :class:`CorruptFile` if ``path`` exists but is not a JSON-lines file at all (first line unreadable)."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return
    with open(p, "rb") as f:
        first = f.readline()
    try:
        json.loads(first)
    except ValueError:
        raise CorruptFile(f"{p}: not a copycatch ledger (first line is not JSON)") from None
