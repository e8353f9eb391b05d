"""The results store: one SQLite file (WAL), one row per finished cell, written in one transaction.

Only the coordinating process writes; workers return their rows. A cell is written when it is finished and
never before, inside a single transaction, so a run killed at any moment leaves either the whole row or
nothing — never half a cell. Cells whose status is ``ok`` are never recomputed; ``failed`` cells are retried.

Tables::

    cells  (cell_id PK, status ok|failed, config, metrics, evidence, versions, error, run_id, worker,
            started_at, finished_at, seconds)      -- JSON in the text columns
    plan   (grid, experiment, cell_id, position)   -- which cells a grid's experiments hold (latest run wins)
    runs   (run_id PK, grid, grid_file, grid_text, executor, started_at, finished_at, planned, done_before,
            computed, failed, versions, host)
    meta   (key PK, value)                         -- format
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from ..core.errors import CorruptFile, InvalidArgument

STORE_FORMAT = "copycatch.bench.store/1"
STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    config TEXT NOT NULL,
    metrics TEXT,
    evidence TEXT,
    versions TEXT,
    error TEXT,
    run_id TEXT,
    worker TEXT,
    started_at REAL,
    finished_at REAL,
    seconds REAL
);
CREATE TABLE IF NOT EXISTS plan (
    grid TEXT NOT NULL,
    experiment TEXT NOT NULL,
    cell_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (grid, experiment, cell_id)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    grid TEXT NOT NULL,
    grid_file TEXT,
    grid_text TEXT,
    executor TEXT,
    started_at REAL,
    finished_at REAL,
    planned INTEGER,
    done_before INTEGER,
    computed INTEGER,
    failed INTEGER,
    versions TEXT,
    host TEXT
);
"""


def store_path(results: str | os.PathLike) -> Path:
    """``results`` may be the results folder or the SQLite file inside it."""
    p = Path(results)
    return p if p.suffix in (".sqlite", ".db") or p.is_file() else p / STORE_NAME


class ResultsStore:
    """Open (creating if needed) a results store; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = store_path(path)
        if not self.path.exists():
            if not create:
                raise InvalidArgument(f"{self.path}: no results store here (run `copycatch bench GRID -o DIR` first)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60.0)
            if create:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                with self.conn:
                    self.conn.executescript(_SCHEMA)
                    if self.conn.execute("SELECT value FROM meta WHERE key='format'").fetchone() is None:
                        self.conn.execute("INSERT INTO meta VALUES ('format', ?)", (STORE_FORMAT,))
            # readers (the report) write nothing, so they can read while a run is writing
            row = self.conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise CorruptFile(f"{self.path}: not a copycatch results store ({exc})") from None
        if row is None or row[0] != STORE_FORMAT:
            found = row[0] if row else None
            self.conn.close()
            raise CorruptFile(f"{self.path}: results store format {found!r}, expected {STORE_FORMAT!r}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- cells -----------------------------------------------------------------------------------------------------
    def finished_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT cell_id FROM cells WHERE status='ok'")}

    def write_cell(self, row: dict[str, Any], *, run_id: str | None = None) -> None:
        """Insert a finished (or failed) cell in one transaction; an ``ok`` row is never replaced."""
        values = (
            row["cell_id"],
            row["status"],
            _dump(row["config"]),
            _dump(row.get("metrics")),
            _dump(row.get("evidence")),
            _dump(row.get("versions")),
            row.get("error"),
            run_id,
            row.get("worker"),
            row.get("started_at"),
            row.get("finished_at"),
            row.get("seconds"),
        )
        with self.conn:
            self.conn.execute(
                "INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(cell_id) DO UPDATE SET status=excluded.status, config=excluded.config, "
                "metrics=excluded.metrics, evidence=excluded.evidence, versions=excluded.versions, "
                "error=excluded.error, run_id=excluded.run_id, worker=excluded.worker, started_at=excluded.started_at, "
                "finished_at=excluded.finished_at, seconds=excluded.seconds WHERE cells.status != 'ok'",
                values,
            )

    def cells(self, cell_ids: Iterable[str] | None = None, *, status: str | None = "ok") -> Iterator[dict[str, Any]]:
        query = (
            "SELECT cell_id, status, config, metrics, evidence, versions, error, run_id, worker, started_at, "
            "finished_at, seconds FROM cells"
        )
        clauses, args = [], []
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        wanted = set(cell_ids) if cell_ids is not None else None
        names = (
            "cell_id",
            "status",
            "config",
            "metrics",
            "evidence",
            "versions",
            "error",
            "run_id",
            "worker",
            "started_at",
            "finished_at",
            "seconds",
        )
        with closing(self.conn.execute(query, args)) as cursor:
            for values in cursor:
                if wanted is not None and values[0] not in wanted:
                    continue
                row = dict(zip(names, values))
                for key in ("config", "metrics", "evidence", "versions"):
                    row[key] = _load(row[key], self.path, row["cell_id"])
                yield row

    def count(self, status: str = "ok") -> int:
        return self.conn.execute("SELECT COUNT(*) FROM cells WHERE status=?", (status,)).fetchone()[0]

    # -- plans and runs --------------------------------------------------------------------------------------------
    def set_plan(self, grid: str, experiments: dict[str, Sequence[str]]) -> None:
        """Record which cells each experiment of ``grid`` holds (replacing an earlier plan of that grid)."""
        with self.conn:
            self.conn.execute("DELETE FROM plan WHERE grid=?", (grid,))
            self.conn.executemany(
                "INSERT OR IGNORE INTO plan VALUES (?,?,?,?)",
                [(grid, exp, cid, i) for exp, ids in experiments.items() for i, cid in enumerate(ids)],
            )

    def plan(self, grid: str | None = None) -> dict[str, dict[str, list[str]]]:
        """``{grid: {experiment: [cell ids in order]}}``."""
        out: dict[str, dict[str, list[str]]] = {}
        query = "SELECT grid, experiment, cell_id FROM plan"
        args: tuple = ()
        if grid is not None:
            query += " WHERE grid=?"
            args = (grid,)
        # experiments keep the order of their first cell's position in the grid file
        for g, exp, cid in self.conn.execute(query + " ORDER BY grid, rowid", args):
            out.setdefault(g, {}).setdefault(exp, []).append(cid)
        return out

    def start_run(
        self,
        grid: str,
        *,
        grid_file: str | None,
        grid_text: str,
        executor: str,
        planned: int,
        done_before: int,
        versions: dict[str, Any],
    ) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    grid,
                    grid_file,
                    grid_text,
                    executor,
                    time.time(),
                    None,
                    planned,
                    done_before,
                    0,
                    0,
                    _dump(versions),
                    socket.gethostname(),
                ),
            )
        return run_id

    def finish_run(self, run_id: str, *, computed: int, failed: int) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE runs SET finished_at=?, computed=?, failed=? WHERE run_id=?",
                (time.time(), computed, failed, run_id),
            )

    def runs(self) -> list[dict[str, Any]]:
        names = [d[1] for d in self.conn.execute("PRAGMA table_info(runs)")]
        return [dict(zip(names, r)) for r in self.conn.execute("SELECT * FROM runs ORDER BY started_at")]

    def integrity(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]


def _dump(obj: Any) -> str | None:
    if obj is None:
        return None
    return json.dumps(obj, sort_keys=True, default=_json_default, allow_nan=True)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _load(text: str | None, path: Path, cell_id: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise CorruptFile(f"{path}: cell {cell_id} holds invalid JSON") from None
