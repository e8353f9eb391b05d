"""Where cells run: in this process, in a local process pool, or on a Ray cluster.

Every executor takes the same task dicts and yields the finished rows as they come; the coordinator
(:func:`copycatch.bench.runner.run_grid`) writes them to the store, so a grid file runs unchanged on any of them.

* ``serial`` — in this process, one cell after another (``--jobs 1``); tracebacks are plain.
* ``local`` — a pool of ``--jobs`` worker processes (spawned, so no forked torch state); each worker keeps
  its data split in memory across cells and uses ``cores ÷ jobs`` threads unless ``OMP_NUM_THREADS`` says otherwise.
* ``ray`` — one Ray task per cell (``num_cpus=1``; with ``--device cuda`` also ``num_gpus=1``, or the share in
  ``COPYCATCH_RAY_GPUS_PER_CELL``, so Ray gives each cell its own GPU) on the cluster at ``--address`` (or a local
  Ray started here). Workers need copycatch installed and must see the data and the cache folder (a shared file system);
  the coordinator still writes the store. Ray is imported only when chosen. A cell whose worker or node dies is
  retried by Ray on another node (``COPYCATCH_RAY_MAX_RETRIES`` times, default 3); once the retries are spent the
  cell is lost — no row is written, the other cells go on, and the run ends with an error: run it again to resume.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ..core.errors import CopycatchError, InvalidArgument
from .cell import run_cell, set_threads

EXECUTORS = ("local", "serial", "ray")
RAY_MAX_RETRIES_ENV = "COPYCATCH_RAY_MAX_RETRIES"  # Ray's retries of a cell whose worker or node died
RAY_GPUS_ENV = "COPYCATCH_RAY_GPUS_PER_CELL"  # GPUs a cell asks for with --device cuda (0.5: two cells per GPU)


def threads_per_worker(jobs: int) -> int:
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


class Executor:
    name = "executor"

    def run(self, tasks: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


class SerialExecutor(Executor):
    name = "serial"

    def __init__(self, threads: int | None = None):
        self.threads = threads or threads_per_worker(1)

    def run(self, tasks):
        for task in tasks:
            yield run_cell({**task, "threads": self.threads})


def _init_worker(threads: int) -> None:
    os.environ["COPYCATCH_PROGRESS"] = "0"
    set_threads(threads)


class LocalPoolExecutor(Executor):
    name = "local"

    def __init__(self, jobs: int, threads: int | None = None):
        if jobs < 1:
            raise InvalidArgument(f"--jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self.threads = threads or threads_per_worker(jobs)
        self.pool: cf.ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return f"local pool of {self.jobs} workers × {self.threads} threads"

    def run(self, tasks):
        self.pool = cf.ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads,),
        )
        futures = [self.pool.submit(run_cell, {**task, "threads": self.threads}) for task in tasks]
        finished = False
        try:
            for future in cf.as_completed(futures):
                yield future.result()
            finished = True
        except cf.process.BrokenProcessPool:
            raise CopycatchError(
                "a worker process died (out of memory, or killed); the cells finished so far are "
                "saved: run the same command again to resume, perhaps with fewer --jobs"
            ) from None
        finally:
            self.close(stop_workers=not finished)

    def close(self, stop_workers: bool = True) -> None:
        """Shut the pool down; on an interrupt, also stop the workers mid-cell (their cells are simply not written)."""
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        # ProcessPoolExecutor has no public way to stop running calls before Python 3.14; without this, workers
        # would finish their current cell and any already queued before the process could exit.
        processes = list((getattr(pool, "_processes", None) or {}).values()) if stop_workers else []
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        local_mode: bool = False,
        max_retries: int | None = None,
        device: str = "cpu",
    ):
        try:
            import ray
        except ImportError:
            raise InvalidArgument("the ray executor needs Ray: pip install 'copycatch[ray]'") from None
        self.ray = ray
        self.address = address
        self.gpus_per_cell = _gpus_per_cell(device)
        self.owns = not ray.is_initialized()
        if self.owns:
            kwargs: dict[str, Any] = {
                "ignore_reinit_error": True,
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "ERROR",
            }
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            if local_mode:
                kwargs["local_mode"] = True
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise InvalidArgument(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
        if max_retries is None:
            env = os.environ.get(RAY_MAX_RETRIES_ENV, "3")
            if not env.isdigit():
                raise InvalidArgument(f"{RAY_MAX_RETRIES_ENV} must be a whole number >= 0, got {env!r}")
            max_retries = int(env)
        if self.gpus_per_cell and not ray.cluster_resources().get("GPU"):
            if self.owns:
                ray.shutdown()
            raise InvalidArgument(
                f"--device {device}: the Ray cluster at {address or 'this machine'} has no GPU; start its workers "
                "with GPUs (see docs/cluster.md) or run on --device cpu"
            )
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it grants, so a cell's "cuda" is its own GPU
        self.remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_cell, max_retries=max_retries)(run_cell)
        self.pending: list[Any] = []
        self.lost: list[tuple[str, str]] = []  # (cell id, why): cells whose worker or node died, not written

    def describe(self) -> str:
        where = self.address or "a local Ray instance"
        return f"ray on {where} ({int(self.ray.cluster_resources().get('CPU', 0))} CPUs)"

    def run(self, tasks):
        ray = self.ray
        cell_of = {self.remote.remote({**task, "threads": 1}): task["cell_id"] for task in tasks}
        self.pending, self.lost = list(cell_of), []
        try:
            while self.pending:
                done, self.pending = ray.wait(self.pending, num_returns=1)
                try:
                    row = ray.get(done[0])
                except ray.exceptions.RayTaskError:  # the cell raised past run_cell's handler: a bug, not a loss
                    raise
                except ray.exceptions.RayError as exc:  # its worker or node died, after Ray's retries
                    self.lost.append((cell_of[done[0]], type(exc).__name__))
                    continue
                yield row
        finally:
            self.close()
        if self.lost:
            why = ", ".join(sorted({reason for _, reason in self.lost}))
            raise CopycatchError(
                f"{len(self.lost)} cell(s) lost with their Ray worker or node ({why}); the cells finished so far "
                "are saved: run the same command again to resume"
            )

    def close(self) -> None:
        for ref in self.pending:
            with contextlib.suppress(Exception):  # already finished or gone; nothing to cancel
                self.ray.cancel(ref, force=True)
        self.pending = []
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()


def _gpus_per_cell(device: str) -> float:
    if not device.startswith("cuda"):
        return 0.0
    env = os.environ.get(RAY_GPUS_ENV, "1")
    try:
        share = float(env)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise InvalidArgument(f"{RAY_GPUS_ENV} must be a share of one GPU in (0, 1], got {env!r}")
    return share


def create_executor(name: str, *, jobs: int | None = None, address: str | None = None, device: str = "cpu") -> Executor:
    if name == "ray":
        return RayExecutor(address, num_cpus=jobs, device=device)
    if address:
        raise InvalidArgument("--address is for --executor ray")
    jobs = jobs or os.cpu_count() or 1
    if name == "serial" or (name == "local" and jobs == 1):
        return SerialExecutor()
    if name == "local":
        return LocalPoolExecutor(jobs)
    raise InvalidArgument(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
