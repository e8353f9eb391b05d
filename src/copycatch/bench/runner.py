"""Run a grid: skip finished cells, schedule the rest on an executor, write each row as it arrives.

Resuming is the normal case: the store says which cells are finished (``ok``), and only the others run. A cell
is written in one transaction when it finishes, so killing a run (Ctrl-C, ``kill``, a power cut) loses at
most the cells in flight, and never corrupts what is stored. Trained models are cached by configuration hash
(:mod:`copycatch.bench.cache`), so a re-run also skips training models that finished cells already made.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..core.runtime import progress_enabled
from .cell import versions
from .executors import Executor, create_executor
from .grid import Cell, Grid, artifact_specs, config_hash, describe_cell
from .store import ResultsStore

CACHE_DIR = "cache"


@dataclasses.dataclass
class RunSummary:
    grid: str
    results: str
    run_id: str
    planned: int
    done_before: int
    computed: int = 0
    failed: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # summed over the cells computed in this run (workers' CPU time)
    executor: str = ""
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    interrupted: bool = False

    @property
    def remaining(self) -> int:
        return self.planned - self.done_before - self.computed


def schedule(cells: list[Cell]) -> list[Cell]:
    """Round-robin over victims: parallel workers start on different victims instead of queueing on one lock."""
    groups: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[config_hash(artifact_specs(cell.config)["victim"])].append(cell)
    queues = list(groups.values())
    out: list[Cell] = []
    while queues:
        out += [q.pop(0) for q in queues]
        queues = [q for q in queues if q]
    return out


def run_grid(
    grid: Grid,
    results: str | os.PathLike,
    *,
    executor: str | Executor = "local",
    jobs: int | None = None,
    address: str | None = None,
    device: str = "cpu",
    data_dir: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    retry_failed: bool = True,
    limit: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run every unfinished cell of ``grid`` into the store under ``results``; returns what happened."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    # absolute, because workers (Ray's above all) need not share our working directory
    cache_dir = (Path(cache_dir) if cache_dir is not None else results / CACHE_DIR).resolve()
    data_dir = str(Path(data_dir).resolve()) if data_dir else None
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    start = time.perf_counter()
    with ResultsStore(results) as store:
        cells = grid.cells
        store.set_plan(grid.name, {exp: [c.cell_id for c in cs] for exp, cs in grid.experiments.items()})
        pending, done_before = _pending(cells, store, retry_failed=retry_failed, limit=limit)
        if isinstance(executor, str):
            executor = _open_executor(executor, jobs, address, len(pending), device)
        summary = _start_run(store, grid, results, executor, len(cells), done_before)
        if not pending:
            store.finish_run(summary.run_id, computed=0, failed=0)
            return summary
        tasks = [
            {
                "cell_id": c.cell_id,
                "config": c.config,
                "cache_dir": str(cache_dir),
                "data_dir": data_dir,
                "device": device,
            }
            for c in pending
        ]
        bar = _bar(len(pending), grid.name, progress)
        try:
            _collect(executor.run(tasks), store, summary, {c.cell_id: c for c in pending}, bar, log)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            executor.close()
            if bar is not None:
                bar.close()
            summary.seconds = time.perf_counter() - start
            store.finish_run(summary.run_id, computed=summary.computed, failed=summary.failed)
        return summary


def _start_run(
    store: ResultsStore, grid: Grid, results: Path, executor: Executor | None, planned: int, done_before: int
) -> RunSummary:
    """Record the run's start (grid, executor, versions) in the store; the summary to fill in as cells finish."""
    described = executor.describe() if executor else "none"
    run_id = store.start_run(
        grid.name,
        grid_file=grid.path,
        grid_text=grid.text,
        executor=described,
        planned=planned,
        done_before=done_before,
        versions={**versions(), **_git()},
    )
    return RunSummary(grid.name, str(results), run_id, planned, done_before, executor=described)


def _pending(
    cells: list[Cell], store: ResultsStore, *, retry_failed: bool, limit: int | None
) -> tuple[list[Cell], int]:
    """The cells to run, in schedule order (at most ``limit``), and how many were finished before this run."""
    done = store.finished_ids()
    failed_before = {r["cell_id"] for r in store.cells(status="failed")}
    pending = [c for c in cells if c.cell_id not in done and (retry_failed or c.cell_id not in failed_before)]
    pending = schedule(pending)
    if limit is not None:
        pending = pending[: max(0, limit)]
    return pending, sum(c.cell_id in done for c in cells)


def _open_executor(
    name: str, jobs: int | None, address: str | None, pending: int, device: str = "cpu"
) -> Executor | None:
    """The named executor with no more workers than cells to run; None when there is nothing to run."""
    if not pending:
        return None
    jobs = min(jobs or os.cpu_count() or 1, max(1, pending))
    return create_executor(name, jobs=jobs, address=address, device=device)


def _collect(
    rows: Iterable[dict[str, Any]],
    store: ResultsStore,
    summary: RunSummary,
    by_id: dict[str, Cell],
    bar: Any,
    log: Callable[[str], None],
) -> None:
    """Store each finished cell's row as it arrives, count it in ``summary`` and show it (bar or log line)."""
    for row in rows:
        store.write_cell(row, run_id=summary.run_id)
        cell = by_id[row["cell_id"]]
        if row["status"] == "ok":
            summary.computed += 1
            summary.cpu_seconds += row["metrics"].get("cpu_seconds_cell", 0.0)
        else:
            summary.failed += 1
            first = (row.get("error") or "").splitlines()[0] if row.get("error") else "unknown error"
            summary.failures.append((row["cell_id"], first))
        line = _line(summary, len(by_id), cell, row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"ok {summary.computed} failed {summary.failed}", refresh=False)
            if row["status"] != "ok":
                bar.write(line, file=sys.stderr)
        else:
            log(line)


def _line(summary: RunSummary, total: int, cell: Cell, row: dict[str, Any]) -> str:
    n = summary.computed + summary.failed
    if row["status"] != "ok":
        first = (row.get("error") or "").splitlines()[0]
        return f"[{n}/{total}] FAILED {cell.cell_id} {describe_cell(cell.config)}: {first}"
    m = row["metrics"]
    return (
        f"[{n}/{total}] ok {cell.cell_id} {describe_cell(cell.config)}: suspect acc {m['suspect_acc']:.3f}, "
        f"p={m['suspect_p']:.2g}, innocent p={m.get('innocent_p', float('nan')):.2g} ({row['seconds']:.0f}s)"
    )


def _bar(total: int, name: str, progress: bool | None):
    if not progress_enabled(progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"bench {name}", unit="cell", dynamic_ncols=True, file=sys.stderr)


def _git() -> dict[str, str]:
    """The commit of the source tree copycatch runs from, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    return {"git_commit": out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")}
