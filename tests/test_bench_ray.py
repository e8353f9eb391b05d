"""The tiny benchmark grid under the Ray executor (a local Ray with one CPU); skipped when Ray is not installed."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ray")

from copycatch.bench import ResultsStore, run_grid
from copycatch.bench.executors import RayExecutor


def test_tiny_grid_runs_on_ray_and_resumes(tmp_path, tiny):
    grid = tiny.grid(**{"seeds: [0, 1]": "seeds: [0]"})
    executor = RayExecutor(num_cpus=1)
    assert executor.describe() == "ray on a local Ray instance (1 CPUs)"
    summary = run_grid(grid, tmp_path, executor=executor, progress=False, log=lambda line: None)
    assert summary.computed == 2 and summary.failed == 0, summary.failures
    with ResultsStore(tmp_path, create=False) as store:
        rows = list(store.cells())
    assert {r["cell_id"] for r in rows} == {c.cell_id for c in grid.cells}
    assert all(f":{os.getpid()}" not in r["worker"] for r in rows)  # ran in Ray worker processes
    for r in rows:
        m = r["metrics"]
        assert m["victim_decision"] and not m["innocent_decision"] and m["extraction_queries"] in (300, 600)
    again = run_grid(grid, tmp_path, executor="serial", progress=False, log=lambda line: None)
    assert again.done_before == 2 and again.computed == 0  # the same store and grid work under any executor
