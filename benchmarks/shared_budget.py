"""Shared budgets across replicas: inputs answered ÷ budget for a thief who spreads requests over two replicas.

Two real `copycatch serve` replicas answer a tiny model (a module:function scorer: the model is beside the point)
with API keys, a ledger each and a lifetime budget per key. 40 concurrent keep-alive clients holding one API key,
half on each replica, send batches of 1-8 inputs until each is told the budget is spent. Measured twice: with the
counts in each process (the default: each replica grants the whole budget) and with `--state redis://` (one Redis
database shared by both: one budget in all). Each mode runs `repeats` times with a fresh API key.

Reported per mode: inputs answered ÷ budget (median and range over repeats), the split between replicas, the
ledgers' total (merged as `copycatch ledger A B` does), statuses, and what the limiter costs per request (its
`quick_reject` + `admit`, timed in this process against the same Redis: the round trips a replica adds to every
request). The JSON also keeps each run's seconds, inputs/s and p50 latency, which on a shared 2-core machine say
more about the machine than about Redis; the throughput of the protected API is `serve_load.py`'s subject.

    .venv/bin/python benchmarks/shared_budget.py                 # ~40 s; needs redis-server and the redis extra
    .venv/bin/python benchmarks/shared_budget.py --repeats 1

Results (the resolved configuration, versions, per-run rows) go to bench-out/shared-budget-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import copycatch as cc
from copycatch.serve.keys import new_key
from copycatch.serve.ledger import read_ledgers
from copycatch.serve.limits import Budget, LimitState, LocalState, QueryLimiter
from copycatch.serve.redis_state import RedisState

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "budget": 1000,  # lifetime budget per API key, in inputs
    "replicas": 2,
    "clients": 40,  # concurrent clients with one API key, spread round-robin over the replicas
    "batch_sizes": [1, 2, 3, 4, 5, 6, 7, 8],  # client i sends batches of batch_sizes[i % 8] inputs
    "repeats": 3,  # runs per mode, each with a fresh API key
    "input_shape": [1, 28, 28],
    "num_classes": 10,
    "serve": ["--batch-wait-ms", "0", "--no-access-log", "--log-level", "warning"],
    "limiter_calls": 3000,  # quick_reject + admit pairs timed per state
}

MODEL = """
import numpy as np

def predict(batch):
    scores = batch.reshape(len(batch), -1)[:, :{classes}].astype(np.float64) + 1e-3
    return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)
"""


####################################################################################################################
#                                                      Setup                                                       #
####################################################################################################################


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(work: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with open(work / "redis.log", "w") as log:
        proc = subprocess.Popen([*command, "--dir", str(work)], stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"redis-server did not start; see {work / 'redis.log'}")


def start_replicas(work: Path, mode: str, state: str | None) -> list[tuple[subprocess.Popen, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(work), *sys.path])}
    shape = ",".join(map(str, hyp["input_shape"]))
    procs = []
    for i in range(hyp["replicas"]):
        command = [sys.executable, "-m", "copycatch.cli.main", "serve", "tinymodel:predict", "--port", "0"]
        command += ["--input-shape", shape, "--num-classes", str(hyp["num_classes"])]
        command += ["--api-keys", str(work / "keys.txt"), "--budget", str(hyp["budget"]), *hyp["serve"]]
        command += ["--ledger", str(work / mode / f"replica-{i}.jsonl"), *(["--state", state] if state else [])]
        out = open(work / f"{mode}-{i}.out", "w")  # noqa: SIM115  (the server process owns it)
        procs.append((subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work), i))
    started = []
    for proc, i in procs:
        path, deadline = work / f"{mode}-{i}.out", time.monotonic() + 120
        while not any(line.startswith("serving on ") for line in path.read_text().splitlines()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"replica {i} ({mode}) did not start:\n{path.read_text()}")
            time.sleep(0.1)
        url = next(line for line in path.read_text().splitlines() if line.startswith("serving on ")).split()[2]
        started.append((proc, url))
    return started


def stop_replicas(replicas: list[tuple[subprocess.Popen, str]]) -> list[int]:
    for proc, _ in replicas:
        proc.terminate()
    return [proc.wait(timeout=60) for proc, _ in replicas]


####################################################################################################################
#                                                   Measurement                                                    #
####################################################################################################################


async def flood(urls: list[str], secret: str) -> dict:
    """hyp["clients"] clients, round-robin over ``urls``, each until the budget is refused; one run's figures."""
    one = [[[0.5] * hyp["input_shape"][2]] * hyp["input_shape"][1]] * hyp["input_shape"][0]
    answered = [0] * len(urls)
    statuses: dict[str, int] = {}
    latencies: list[float] = []

    async def client(i: int, http: httpx.AsyncClient) -> None:
        replica, n = i % len(urls), hyp["batch_sizes"][i % len(hyp["batch_sizes"])]
        body = {"inputs": [one] * n}
        while True:
            sent = time.perf_counter()
            r = await http.post(urls[replica] + "/v1/predict", json=body, headers={"X-API-Key": secret})
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            if r.status_code != 200:
                return
            latencies.append(time.perf_counter() - sent)
            answered[replica] += n

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=hyp["clients"])) as http:
        await asyncio.gather(*(client(i, http) for i in range(hyp["clients"])))
    seconds = time.perf_counter() - started
    return {
        "answered": sum(answered),
        "ratio": sum(answered) / hyp["budget"],
        "per_replica": answered,
        "statuses": statuses,
        "seconds": round(seconds, 3),
        "inputs_per_s": round(sum(answered) / seconds, 1),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 2),
    }


def limiter_cost(state: LimitState) -> float:
    """Microseconds per request the limiter spends on ``state``: one ``quick_reject`` and one ``admit``."""
    limiter = QueryLimiter(budget=Budget(10**12), state=state)
    calls = hyp["limiter_calls"]
    for _ in range(calls // 10):  # warm up: connections, script cache
        limiter.admit("warm-up", 1)
    started = time.perf_counter()
    for _ in range(calls):
        limiter.quick_reject("timed")
        limiter.admit("timed", 1)
    limiter.close()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=hyp["repeats"])
    parser.add_argument("--budget", type=int, default=hyp["budget"])
    parser.add_argument("--clients", type=int, default=hyp["clients"])
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    if args.repeats < 1 or args.budget < 1 or args.clients < 1:
        parser.error("repeats, budget and clients must be positive")
    hyp.update(repeats=args.repeats, budget=args.budget, clients=args.clients)

    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="copycatch-shared-budget-") as tmp:
        work = Path(tmp)
        (work / "tinymodel.py").write_text(MODEL.format(classes=hyp["num_classes"]))
        redis_proc, port = start_redis(work)
        modes = {"in-process": None, "redis": f"redis://127.0.0.1:{port}/0"}
        secrets = {(m, r): new_key(work / "keys.txt", f"thief-{m}-{r}") for m in modes for r in range(args.repeats)}
        try:
            for mode, state in modes.items():
                replicas = start_replicas(work, mode, state)
                try:
                    urls = [url for _, url in replicas]
                    for r in range(args.repeats):
                        row = {"mode": mode, "repeat": r, **asyncio.run(flood(urls, secrets[mode, r]))}
                        runs.append(row)
                        print(json.dumps(row), flush=True)
                finally:
                    exits = stop_replicas(replicas)
                _, entries = read_ledgers(sorted((work / mode).glob("replica-*.jsonl")))
                for row in runs:
                    if row["mode"] == mode:
                        key = f"thief-{mode}-{row['repeat']}"
                        row["ledgers_answered"] = sum(
                            e["n"] for e in entries if e.get("key") == key and e.get("status") == 200
                        )
                        row["server_exits"] = exits
            costs = {"in-process": limiter_cost(LocalState()), "redis": limiter_cost(RedisState(modes["redis"]))}
            redis_version = subprocess.run(
                [shutil.which("redis-server") or "redis-server", "--version"], capture_output=True, text=True
            ).stdout.split()[2]
        finally:
            redis_proc.terminate()
            redis_proc.wait(timeout=20)

    print(f"\n{hyp['replicas']} replicas × {hyp['clients']} clients, budget {hyp['budget']} inputs per key")
    header = ["state", "answered ÷ budget (median, min–max)", "per replica", "ledgers' total", "statuses", "limiter µs"]
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|")
    for mode in modes:
        rows = [row for row in runs if row["mode"] == mode]
        ratios = [row["ratio"] for row in rows]
        split = " / ".join(
            str(round(statistics.median(r["per_replica"][i] for r in rows))) for i in range(hyp["replicas"])
        )
        codes = sorted({code for r in rows for code in r["statuses"]})
        statuses = ", ".join(f"{code}×{sum(r['statuses'].get(code, 0) for r in rows)}" for code in codes)
        print(
            f"| {mode} | {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) | {split} | "
            f"{statistics.median(r['ledgers_answered'] for r in rows):.0f} | {statuses} | {costs[mode]:.0f} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"shared-budget-{time.strftime('%Y%m%d-%H%M%S')}.json"
    versions = {"copycatch": cc.__version__, "redis-server": redis_version, "python": sys.version.split()[0]}
    results = {"hyp": hyp, "versions": versions, "runs": runs, "limiter_us_per_request": costs, "command": sys.argv}
    path.write_text(json.dumps(results, indent=2))
    print(f"results written to {path}")
    shared_ok = all(row["answered"] <= hyp["budget"] for row in runs if row["mode"] == "redis")
    return 0 if shared_ok else 1


if __name__ == "__main__":
    sys.exit(main())
