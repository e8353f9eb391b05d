"""A tiny grid on a two-node Ray cluster on this machine: a worker node stopped mid-run, a rerun, and a local run.

1. a **local** run: ``copycatch bench GRID --executor serial`` into its own store (the reference);
2. a **cluster**: ``ray start --head`` (1 CPU, resource ``head``) and a second node, ``ray start --address=HEAD``
   (1 CPU, resource ``worker``), both on this machine, in a temporary ``--temp-dir`` and on free ports, so they
   collide with no other Ray here. Two nodes on one host are supported by ``ray start`` (each raylet gets its own
   node id; ``ray.cluster_utils.Cluster`` does the same for Ray's own tests);
3. ``copycatch bench GRID --executor ray --address HEAD`` (a subprocess, as a user would run it); once the worker
   node has finished ``kill_after_worker_rows`` cells, the worker node is **stopped** mid-cell: ``ray stop`` would
   stop every Ray node of this host (both nodes, and other users' Ray), so the script does what it does to one node
   only — SIGTERM to that node's processes (its ``ray start --block``, raylet, agents and Ray workers: the process
   group and the descendants of its ``ray start``), SIGKILL to those left after ``stop_grace`` seconds;
4. with ``COPYCATCH_RAY_MAX_RETRIES=0`` (``retries`` below) Ray does not retry the cell that was running on the
   stopped node: it is lost (no row), the other cells finish on the head node, and the bench exits non-zero asking
   for a rerun. (With Ray's default of 3 retries, the lost cell reruns on the head node within the same run.);
5. the same command again (a **rerun**, on the head node alone) computes only the missing cells;
6. every cell of the cluster's store is compared with the local store's: same cell ids, same status and config,
   and equal metrics and evidence once the fields that measure the run rather than the model are dropped (any key
   naming ``seconds``, ``cached_*``, ``peak_rss_*``, and ``key_digest``, which hashes the key with its ``created``
   time; the row's worker and times are not compared). Training on CPU with fixed seeds is expected to be
   bit-reproducible, so "equal" means ``==`` on every float; and every model and key the two runs cached (victims,
   clean models, surrogates, innocent models; key tensors and parameters) is compared bit for bit.

The cluster is always torn down (``finally``), and the temporary folder removed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_cluster.py

Prints a summary and writes benchmarks/results/ray_cluster.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

config: dict[str, Any] = {
    # 4 seeds × 2 extraction budgets = 8 cells; the surrogate's 1,500 epochs make a cell last ~10 s on one core, so
    # the stop lands mid-cell
    "grid": """
name: ray-cluster-tiny
seeds: [0, 1, 2, 3]
alpha: 0.01
data: {name: synthetic, fractions: {owner_train: 0.45, owner_holdout: 0.1, attacker_pool: 0.45}}
victim: {arch: mlp, arch_kwargs: {hidden: 128}, train: {epochs: 30, batch_size: 64}}
schemes:
  - {name: margin, params: {n_triggers: 30, trigger_batch: 10, lam: 1}}
attacks:
  - extraction: {name: soft-label, arch: mlp, arch_kwargs: {hidden: 32}, train: {epochs: 1500},
                 sweep: {budget: [300, 600]}}
""",
    "head": {"num_cpus": 1, "resources": {"head": 1}},
    "worker": {"num_cpus": 1, "resources": {"worker": 1}},
    "retries": 0,  # COPYCATCH_RAY_MAX_RETRIES of the cluster runs
    "kill_after_worker_rows": 2,  # stop the worker node once it has finished this many cells ...
    "kill_delay": 3.0,  # ... and this many seconds more (it is then inside its next cell)
    "stop_grace": 5.0,  # SIGTERM, then SIGKILL what is left after this many seconds
    "node_timeout": 90.0,  # seconds for the nodes to come up
    "run_timeout": 600.0,  # seconds for one bench run
    # keys that measure the run, not the model; key_digest hashes the key with its `created` time (the keys'
    # tensors and parameters are compared instead, with every model, in the two runs' caches)
    "volatile": ("seconds", "cached_", "peak_rss", "key_digest"),
}

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULT = Path(__file__).resolve().parent / "results" / "ray_cluster.json"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    "COPYCATCH_PROGRESS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # a loopback cluster of this script's own; without this, a token in ~/.ray makes `ray start --head` require
    # token authentication that the second node and the bench (mode unset) do not send
    "RAY_AUTH_MODE": "disabled",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Free ports for every server of a node, so neither node takes Ray's defaults (used by other Ray here)."""
    flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port"]
    flags += ["--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    return [arg for flag in flags for arg in (flag, str(free_port()))]


class Node:
    """One ``ray start --block`` in its own session, its output in a log file; stopped by signals to its processes."""

    def __init__(self, name: str, args: list[str], log: Path, spec: dict[str, Any]):
        self.name = name
        cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
        cmd += ["--num-cpus", str(spec["num_cpus"]), "--resources", json.dumps(spec["resources"]), *args]
        cmd += node_ports()
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.node_id: str | None = None

    def processes(self) -> set[int]:
        """This node's processes: its process group and every descendant of its ``ray start`` (Ray workers
        start sessions of their own)."""
        children: dict[int, list[int]] = {}
        group: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid, pgid = int(entry.name), int(fields[1]), int(fields[2])
            children.setdefault(ppid, []).append(pid)
            if pgid == self.proc.pid:
                group.add(pid)
        found, todo = set(), [self.proc.pid, *group]
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo += children.get(pid, [])
        return found

    def stop(self, grace: float) -> list[int]:
        """What ``ray stop`` does, to this node only: SIGTERM, then SIGKILL after ``grace`` seconds."""
        pids = self.processes()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.time() + wait
            while time.time() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return sorted(pids)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for_nodes(address: str, nodes: list[Node], timeout: float) -> None:
    """Block until both nodes are alive in the cluster; record each one's node id (from its custom resource)."""
    import ray

    deadline = time.time() + timeout
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        while time.time() < deadline:
            alive = [n for n in ray.nodes() if n["Alive"]]
            for node in nodes:
                node.node_id = next((n["NodeID"] for n in alive if node.name in n["Resources"]), None)
            if all(node.node_id for node in nodes):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Ray nodes did not come up in {timeout:.0f} s; see {[str(n.log) for n in nodes]}")
    finally:
        ray.shutdown()


def bench(grid: Path, results: Path, log: Path, *extra: str, retries: int | None = None) -> subprocess.Popen:
    cmd = [str(BIN / "copycatch"), "bench", str(grid), "-o", str(results), *extra]
    env = {**ENV, **({"COPYCATCH_RAY_MAX_RETRIES": str(retries)} if retries is not None else {})}
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def rows(results: Path) -> dict[str, dict[str, Any]]:
    db = results / "results.sqlite"
    if not db.exists():
        return {}
    con = sqlite3.connect(db, timeout=30)
    try:
        cur = con.execute("SELECT cell_id, status, config, metrics, evidence, worker, run_id FROM cells")
        names = [d[0] for d in cur.description]
        out = {}
        for values in cur.fetchall():
            row = dict(zip(names, values))
            for key in ("config", "metrics", "evidence"):
                row[key] = json.loads(row[key]) if row[key] else None
            out[row["cell_id"]] = row
        return out
    except sqlite3.OperationalError:  # the store is being created
        return {}
    finally:
        con.close()


def deterministic(obj: Any) -> Any:
    """``obj`` without the keys that measure the run (time, cache hits, memory)."""
    if isinstance(obj, dict):
        return {k: deterministic(v) for k, v in obj.items() if not any(mark in k for mark in config["volatile"])}
    if isinstance(obj, list):
        return [deterministic(v) for v in obj]
    return obj


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ (floats: exactly; NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only on one side" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def compare(local: dict[str, dict[str, Any]], cluster: dict[str, dict[str, Any]]) -> dict[str, Any]:
    diffs: dict[str, list[str]] = {}
    for cell_id in sorted(set(local) & set(cluster)):
        a, b = local[cell_id], cluster[cell_id]
        found = differences(
            {k: deterministic(a[k]) for k in ("status", "config", "metrics", "evidence")},
            {k: deterministic(b[k]) for k in ("status", "config", "metrics", "evidence")},
        )
        if found:
            diffs[cell_id] = found[:5]
    sample = next(iter(local.values()))
    compared = sorted(deterministic(sample["metrics"]))
    return {
        "same_cell_ids": set(local) == set(cluster),
        "cells_compared": len(set(local) & set(cluster)),
        "cells_equal": len(set(local) & set(cluster)) - len(diffs),
        "differences": diffs,
        "metrics_compared": compared,
        "metrics_ignored": sorted(set(sample["metrics"]) - set(compared)),
    }


def compare_artifacts(local: Path, cluster: Path) -> dict[str, Any]:
    """Every model (weights) and key (tensors, scheme, parameters) both runs cached, compared bit for bit."""
    import torch
    from safetensors.torch import load_file

    from copycatch.core.key import Key

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    counts: dict[str, int] = {}
    unequal: list[str] = []
    for path in sorted(local.glob("*/*.safetensors")) + sorted(local.glob("*/*.cckey")):
        other = cluster / path.relative_to(local)
        if not other.exists():
            continue
        kind = f"{path.parent.name}{path.suffix}"
        counts[kind] = counts.get(kind, 0) + 1
        if path.suffix == ".cckey":
            a, b = Key.load(path), Key.load(other)
            equal = a.scheme == b.scheme and a.params == b.params and same(a.tensors, b.tensors)
        else:
            equal = same(load_file(path), load_file(other))
        if not equal:
            unequal.append(str(path.relative_to(local)))
    return {"compared": counts, "unequal": unequal}


def node_of(row: dict[str, Any], nodes: list[Node]) -> str:
    return next((n.name for n in nodes if n.node_id and row["worker"].endswith(f"@{n.node_id}")), "?")


def tail(path: Path, lines: int = 6) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:]


def main() -> int:
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="ccray-"))
    grid = tmp / "grid.yaml"
    grid.write_text(config["grid"])
    result: dict[str, Any] = {"config": {k: v for k, v in config.items() if k != "volatile"}}
    nodes: list[Node] = []
    runs: list[subprocess.Popen] = []
    try:
        import ray

        result["versions"] = {"ray": ray.__version__, "python": platform.python_version(), "cpus": os.cpu_count()}

        # 1. the reference: a local, serial run
        t = time.perf_counter()
        runs.append(bench(grid, tmp / "local", tmp / "local.log", "--executor", "serial"))
        code = runs[-1].wait(timeout=config["run_timeout"])
        local = rows(tmp / "local")
        result["local"] = {"exit": code, "cells": len(local), "seconds": time.perf_counter() - t}
        if code != 0:
            raise RuntimeError(f"the local run failed: {tail(tmp / 'local.log')}")

        # 2. the cluster: a head node and a worker node on this machine
        t = time.perf_counter()
        port = free_port()
        address = f"127.0.0.1:{port}"
        head_args = ["--head", "--port", str(port), "--temp-dir", str(tmp / "ray")]
        head_args += ["--include-dashboard", "false", "--dashboard-port", str(free_port())]
        nodes.append(Node("head", head_args, tmp / "head.log", config["head"]))
        nodes.append(Node("worker", ["--address", address], tmp / "worker.log", config["worker"]))
        worker = nodes[1]
        wait_for_nodes(address, nodes, config["node_timeout"])
        result["cluster"] = {
            "address": address,
            "node_ids": {n.name: n.node_id for n in nodes},
            "start_seconds": time.perf_counter() - t,
        }

        # 3. the bench on the cluster; stop the worker node mid-run
        t = time.perf_counter()
        cluster_dir = tmp / "cluster"
        runs.append(
            bench(grid, cluster_dir, tmp / "run1.log", "--executor", "ray", "--address", address,
                  retries=config["retries"])
        )  # fmt: skip
        run, stopped = runs[-1], None
        deadline = time.time() + config["run_timeout"]
        while run.poll() is None and time.time() < deadline:
            now = rows(cluster_dir)
            on_worker = [r for r in now.values() if node_of(r, nodes) == "worker"]
            if stopped is None and len(on_worker) >= config["kill_after_worker_rows"]:
                time.sleep(config["kill_delay"])
                before = rows(cluster_dir)
                kill_at = time.perf_counter() - t
                pids = worker.stop(config["stop_grace"])
                stopped = {"at_seconds": kill_at, "cells_stored_before": len(before), "processes": len(pids)}
            time.sleep(0.3)
        if run.poll() is None:
            raise RuntimeError("the cluster run did not finish in time")
        first = rows(cluster_dir)
        lost = sorted(set(local) - set(first))
        result["run1"] = {
            "exit": run.returncode,
            "seconds": time.perf_counter() - t,
            "stopped_worker": stopped,
            "cells_written": len(first),
            "cells_per_node": {n.name: sum(node_of(r, nodes) == n.name for r in first.values()) for n in nodes},
            "lost_cells": lost,
            "log_tail": tail(tmp / "run1.log", 3),
        }

        # 4. the rerun: the same command, on what is left of the cluster (the head node)
        t = time.perf_counter()
        runs.append(
            bench(grid, cluster_dir, tmp / "run2.log", "--executor", "ray", "--address", address,
                  retries=config["retries"])
        )  # fmt: skip
        code = runs[-1].wait(timeout=config["run_timeout"])
        final = rows(cluster_dir)
        rerun_rows = [r for r in final.values() if r["run_id"] != first.get(r["cell_id"], {}).get("run_id")]
        result["rerun"] = {
            "exit": code,
            "seconds": time.perf_counter() - t,
            "cells_computed": len(rerun_rows),
            "computed_exactly_the_lost": sorted(r["cell_id"] for r in rerun_rows) == lost,
            "cells_per_node": {n.name: sum(node_of(r, nodes) == n.name for r in rerun_rows) for n in nodes},
            "log_tail": tail(tmp / "run2.log", 2),
        }
        result["final_cells_per_node"] = {
            n.name: sum(node_of(r, nodes) == n.name for r in final.values()) for n in nodes
        }

        # 5. cell by cell against the local run
        result["comparison"] = compare(local, final)
        result["artifacts"] = compare_artifacts(tmp / "local" / "cache", cluster_dir / "cache")
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
        for node in reversed(nodes):
            node.stop(config["stop_grace"])
        deadline = time.time() + 10  # SIGKILLed processes take a moment to go
        while time.time() < deadline and any(_alive(p) for n in nodes for p in n.processes()):
            time.sleep(0.5)
        result["leftover_processes"] = sorted({pid for n in nodes for pid in n.processes() if _alive(pid)})
        shutil.rmtree(tmp, ignore_errors=True)
        result["wall_seconds"] = time.perf_counter() - started
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=2, default=str) + "\n")

    report(result)
    c, r1, r2 = result["comparison"], result["run1"], result["rerun"]
    ok = (
        all(r1["cells_per_node"].values())
        and r1["stopped_worker"] is not None
        and (r1["exit"] == 0 or (r1["lost_cells"] and r2["computed_exactly_the_lost"]))
        and r2["exit"] == 0
        and c["same_cell_ids"]
        and c["cells_equal"] == c["cells_compared"] == result["local"]["cells"]
        and result["artifacts"]["compared"]
        and not result["artifacts"]["unequal"]
        and not result["leftover_processes"]
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def report(result: dict[str, Any]) -> None:
    r1, r2, c = result["run1"], result["rerun"], result["comparison"]
    stop = r1["stopped_worker"] or {}
    print(f"ray {result['versions']['ray']}, {result['versions']['cpus']} CPUs; cluster {result['cluster']['address']}")
    print(f"local serial run: {result['local']['cells']} cells in {result['local']['seconds']:.0f} s")
    print(
        f"cluster run: cells per node {r1['cells_per_node']}; worker node stopped at {stop.get('at_seconds', 0):.0f} s "
        f"({stop.get('processes', 0)} processes) with {stop.get('cells_stored_before', 0)} cells stored; "
        f"exit {r1['exit']}, {r1['cells_written']} cells written, lost {r1['lost_cells']} ({r1['seconds']:.0f} s)"
    )
    print(f"  {r1['log_tail'][-1] if r1['log_tail'] else ''}")
    print(
        f"rerun: exit {r2['exit']}, computed {r2['cells_computed']} cells {r2['cells_per_node']}, exactly the lost: "
        f"{r2['computed_exactly_the_lost']} ({r2['seconds']:.0f} s)"
    )
    print(
        f"against the local run: same cell ids {c['same_cell_ids']}; {c['cells_equal']}/{c['cells_compared']} cells "
        f"equal on {len(c['metrics_compared'])} metrics + status, config, evidence"
    )
    for cell_id, diffs in c["differences"].items():
        print(f"  {cell_id}: {diffs}")
    a = result["artifacts"]
    print(f"cached models and keys compared bit for bit: {a['compared']}; unequal: {a['unequal'] or 'none'}")
    print(f"leftover Ray processes: {result['leftover_processes']}; wall {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
