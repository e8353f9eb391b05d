"""DAWN's record file: every watermarked answer the server gave, beside the ledger, and the join with the ledger.

When the served key (or a key-set part) is DAWN and the server keeps a ledger, each watermarked input is appended to
``<ledger>.dawn.jsonl`` before its answer leaves, one JSON line per record::

    {"time": "…Z", "digest": "<32 hex>", "shape": [1, 28, 28], "x": "<base64 of float32 little-endian bytes>",
     "o": 3, "w": 7}

``digest`` is :func:`.ledger.row_digests` of the input, so the ledger's ``inputs`` digests name the records a client
triggered. Lines are written like the ledger's: one ``os.write`` of a whole line to a file opened ``O_APPEND``, so a
crash leaves the whole line or nothing. The file is not rotated (records are a small share of the answers).

:func:`client_records` joins one API key's answered ledger entries with the record file; reading checks every line
(JSON, fields, base64, size, digest) and names the file and line of the first bad one. The records it returns are
checked once more against the key's secret by ``Dawn.with_records``: the file is never trusted.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import CorruptFile, InvalidArgument
from .ledger import ANONYMOUS, LedgerError, _utc_iso, iter_entries, row_digests

if TYPE_CHECKING:
    from ..schemes.dawn import DawnRecord

SUFFIX = ".dawn.jsonl"
_DIGEST = re.compile(r"[0-9a-f]{32}")


def records_path(ledger_path: str | os.PathLike) -> Path:
    """Where a server with this ledger writes its DAWN records."""
    path = Path(ledger_path)
    return path.with_name(path.name + SUFFIX)


class DawnRecordFile:
    """Append-only writer of DAWN records (a ``DawnPerturbation`` sink); thread-safe within one process."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(f"cannot open the DAWN record file {self.path}: {exc.strerror}") from None

    def __call__(self, records: Sequence[DawnRecord]) -> None:
        if not records:
            return
        digests = row_digests(np.stack([r.x for r in records]))
        stamp = _utc_iso(time.time())
        with self._lock:
            if self._fd < 0:
                raise LedgerError(f"DAWN record file {self.path} is closed")
            for record, digest in zip(records, digests):
                x = np.ascontiguousarray(record.x, dtype="<f4")
                line = {
                    "time": stamp,
                    "digest": digest,
                    "shape": list(x.shape),
                    "x": base64.b64encode(x.tobytes()).decode("ascii"),
                    "o": int(record.owner),
                    "w": int(record.wrong),
                }
                data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
                before = os.fstat(self._fd).st_size
                written = os.write(self._fd, data)
                if written != len(data):
                    os.ftruncate(self._fd, before)  # never leave half a line
                    raise LedgerError(f"short write to {self.path} ({written} of {len(data)} bytes; disk full?)")
            if self.fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def has_dawn(oracle: Any) -> bool:
    """Whether a DAWN post-processor is in ``oracle``'s chain."""
    from ..schemes.dawn import find_perturbations

    return bool(find_perturbations(oracle))


def attach_record_file(oracle: Any, ledger_path: str | os.PathLike, *, fsync: bool = False) -> DawnRecordFile | None:
    """Make every DAWN post-processor in ``oracle``'s chain write its records next to the ledger (and stop keeping
    them in memory); None when the chain has none."""
    from ..schemes.dawn import find_perturbations  # the schemes load on first use, as in app.protected_oracle

    perturbations = find_perturbations(oracle)
    if not perturbations:
        return None
    sink = DawnRecordFile(records_path(ledger_path), fsync=fsync)
    for p in perturbations:
        p.sink, p.remember = sink, False
    return sink


@dataclasses.dataclass
class RecordLine:
    digest: str
    x: np.ndarray
    owner: int
    wrong: int


def read_records(path: str | os.PathLike) -> list[RecordLine]:
    """Every record of a DAWN record file, each line checked; the first bad line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such DAWN record file (a server with a DAWN key writes <ledger>{SUFFIX})")
    out = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                out.append(_parse_line(raw, f"{path}:{number}"))
    return out


def _parse_line(raw: bytes, where: str) -> RecordLine:
    try:
        line = json.loads(raw)
    except ValueError:
        raise CorruptFile(f"{where}: not a JSON line") from None
    if not isinstance(line, dict):
        raise CorruptFile(f"{where}: not a JSON object")
    missing = [k for k in ("digest", "shape", "x", "o", "w") if k not in line]
    if missing:
        raise CorruptFile(f"{where}: record lacks {', '.join(missing)}")
    digest, shape, data = line["digest"], line["shape"], line["x"]
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise CorruptFile(f"{where}: digest must be 32 lowercase hex digits")
    if not isinstance(shape, list) or not shape or not all(type(v) is int and 0 < v <= 2**16 for v in shape):
        raise CorruptFile(f"{where}: shape must be a list of positive integers")
    for name in ("o", "w"):
        if type(line[name]) is not int or line[name] < 0:
            raise CorruptFile(f"{where}: {name} must be a non-negative integer")
    if not isinstance(data, str):
        raise CorruptFile(f"{where}: x must be a base64 string")
    try:
        buffer = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise CorruptFile(f"{where}: x is not valid base64") from None
    if len(buffer) != 4 * math.prod(shape):
        raise CorruptFile(f"{where}: x holds {len(buffer)} bytes, shape {shape} needs {4 * math.prod(shape)}")
    x = np.frombuffer(buffer, dtype="<f4").astype(np.float32).reshape(shape)
    if not np.isfinite(x).all():
        raise CorruptFile(f"{where}: x contains NaN or Inf")
    if row_digests(x[None])[0] != digest:
        raise CorruptFile(f"{where}: digest does not match the record's input")
    return RecordLine(digest, x, int(line["o"]), int(line["w"]))


@dataclasses.dataclass
class ClientRecords:
    """One client's DAWN records (distinct inputs) and what the ledger says it asked."""

    client: str
    x: np.ndarray
    owner: np.ndarray
    wrong: np.ndarray
    answered: int  # inputs answered to the client (ledger, status 200)
    distinct: int  # distinct inputs among them
    file_records: int  # records in the file, every client's


def client_records(
    ledger_path: str | os.PathLike, client: str, *, records: str | os.PathLike | None = None
) -> ClientRecords:
    """The records of the inputs ``client`` (an API key id; ``anonymous`` without keys) was answered."""
    asked: set[str] = set()
    answered, clients = 0, set()
    for entry in iter_entries(ledger_path):
        clients.add(str(entry.get("key", ANONYMOUS)))
        if str(entry.get("key", ANONYMOUS)) == client and entry.get("status") == 200:
            inputs = entry.get("inputs") or []
            answered += len(inputs)
            asked.update(str(d) for d in inputs)
    if not answered:
        known = ", ".join(sorted(clients)[:10]) or "none"
        raise InvalidArgument(
            f"{ledger_path}: no answered queries of client {client!r} (clients in the ledger: {known})"
        )
    lines = read_records(records if records is not None else records_path(ledger_path))
    chosen: dict[str, RecordLine] = {}
    for line in lines:
        if line.digest in asked:
            chosen.setdefault(line.digest, line)
    picked = list(chosen.values())
    x = np.stack([r.x for r in picked]) if picked else np.empty((0,), dtype=np.float32)
    return ClientRecords(
        client,
        x,
        np.array([r.owner for r in picked], dtype=np.int64),
        np.array([r.wrong for r in picked], dtype=np.int64),
        answered,
        len(asked),
        len(lines),
    )
