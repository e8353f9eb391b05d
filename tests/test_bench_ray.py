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


def test_a_cell_whose_worker_dies_is_lost_and_the_rerun_computes_only_it(tmp_path, tiny):
    """A Ray worker dying mid-cell (as on a node that is stopped): with no retries the cell is lost — no row, the
    other cells are stored, the run ends with an error — and the rerun computes that cell alone; with a retry,
    Ray reruns the cell on a fresh worker within the run."""
    import ray

    from copycatch.bench.cell import run_cell
    from copycatch.core.errors import CopycatchError

    grid = tiny.grid(**{"seeds: [0, 1]": "seeds: [0]"})
    doomed = grid.cells[0].cell_id
    crashed = tmp_path / "crashed"

    def crash_once(task):  # shipped to the workers by value
        if task["cell_id"] == doomed and not crashed.exists():
            crashed.touch()
            os._exit(1)
        return run_cell(task)

    def executor(retries):
        ex = RayExecutor(max_retries=retries)
        ex.remote = ray.remote(num_cpus=1, max_retries=retries)(crash_once)
        return ex

    quiet = {"progress": False, "log": lambda line: None}
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        with pytest.raises(CopycatchError, match=r"1 cell\(s\) lost with their Ray worker or node"):
            run_grid(grid, tmp_path / "out", executor=executor(0), **quiet)
        with ResultsStore(tmp_path / "out", create=False) as store:
            assert {r["cell_id"] for r in store.cells()} == {c.cell_id for c in grid.cells} - {doomed}
        crashed.unlink()
        again = run_grid(grid, tmp_path / "out", executor=executor(1), **quiet)  # crashes once more, then retried
        assert crashed.exists() and (again.done_before, again.computed, again.failed) == (1, 1, 0)
    finally:
        ray.shutdown()


def test_cuda_cells_ask_ray_for_a_gpu_and_a_cluster_without_one_is_refused(monkeypatch):
    from copycatch.bench.executors import create_executor
    from copycatch.core.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="has no GPU"):  # a local Ray here has none: no task left waiting
        create_executor("ray", jobs=1, device="cuda")
    monkeypatch.setenv("COPYCATCH_RAY_GPUS_PER_CELL", "2")
    with pytest.raises(InvalidArgument, match=r"COPYCATCH_RAY_GPUS_PER_CELL must be a share of one GPU"):
        create_executor("ray", jobs=1, device="cuda:0")
    executor = create_executor("ray", jobs=1, device="cpu")
    try:
        assert executor.gpus_per_cell == 0.0
    finally:
        executor.close()
