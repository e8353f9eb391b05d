"""Load test of `copycatch serve`: concurrent clients on loopback, unprotected vs DynaMarks-protected, same run.

Two real `copycatch serve` processes answer the same model — one plain, one with `--protect` (DynaMarks) — with
API keys and a ledger on, as an owner would run them. Concurrent keep-alive clients (a lean asyncio HTTP/1.1
client, so the load generator takes as little of the shared CPU as possible) send pre-encoded batches of
Fashion-MNIST test images to *both servers at once*, so whatever else the (shared) machine does hits both modes
alike; the run is cut into slices and each slice gives one paired throughput ratio. `--control` serves the
second server unprotected too: that A/A run measures the harness's own noise.

Reported per mode: requests, inputs answered, throughput (inputs/s and requests/s), latency p50/p99, status
counts. Targets (issue 7): zero 5xx (and zero connection errors); DynaMarks throughput ≥ 95 % of unprotected
(median of the paired ratios, with a bootstrap CI). Every 25th answer is parsed and its argmax compared with the
model's own. An in-process micro-benchmark times the DynaMarks post-processor against the forward pass.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_load.py                  # 60 s of load (~2 min)
    .venv/bin/python benchmarks/serve_load.py --duration 10 --slice 2            # a quick look
    .venv/bin/python benchmarks/serve_load.py --control                          # A/A: the harness's noise

Results (configuration, this file's source, per-slice rows) go to bench-out/serve-load-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import copycatch as cc
from copycatch.serve.keys import new_key

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "data": "fashion-mnist",
    "max_train": 12000,  # the owner's model only needs to be confident, not state of the art
    "victim": {"arch": "mlp", "epochs": 3},  # a cheap forward pass makes the protection's share largest (strict)
    "dynamarks": {"n_verify": 1000},  # paper defaults otherwise (alpha 0.9, beta 1, a 0.01, b 0.19)
    "clients": 8,  # concurrent keep-alive connections per server
    "batch": 16,  # inputs per request
    "bodies": 64,  # distinct pre-encoded request bodies, cycled
    "duration": 60.0,  # seconds of load, both servers at once
    "slice": 5.0,  # seconds per slice (one throughput ratio each)
    "serve": ["--batch-wait-ms", "2", "--forward-batch", "512", "--no-access-log", "--log-level", "warning"],
    "check_every": 25,  # parse every n-th answer and compare its argmax
}


####################################################################################################################
#                                                      Setup                                                       #
####################################################################################################################


def build_victim(work: Path, data: str, seed: int) -> tuple[Path, Path, torch.Tensor]:
    splits = cc.load_splits(data, seed=seed, max_train=hyp["max_train"])
    model = cc.train(hyp["victim"]["arch"], splits, config=cc.TrainConfig(epochs=hyp["victim"]["epochs"], seed=seed))
    embedding = cc.embed("dynamarks", splits, model=model, params=hyp["dynamarks"], config=cc.TrainConfig(seed=seed))
    victim, key = work / "victim.safetensors", work / "victim.cckey"
    cc.save_model(embedding.victim, victim)
    embedding.key.save(key)
    print(
        f"victim: {hyp['victim']['arch']} on {data}, test accuracy {cc.accuracy(model, splits.test):.4f}; "
        f"DynaMarks perturbs {embedding.info['perturbed_share']:.1%} of answers",
        flush=True,
    )
    return victim, key, splits.test.x


def start_server(args: list[str], work: Path, name: str) -> tuple[subprocess.Popen, str, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COPYCATCH_PROGRESS": "0"}
    with open(work / f"{name}.log", "w") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "copycatch.cli.main", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=work,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("serving on "):
            url = line.split()[2]
            host, port = url.removeprefix("http://").rsplit(":", 1)
            return proc, host, int(port)
    proc.kill()
    raise SystemExit(f"{name} server did not start; see {work / (name + '.log')}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


####################################################################################################################
#                                                   Load client                                                    #
####################################################################################################################


class Slice:
    def __init__(self, mode: str):
        self.mode = mode
        self.latencies: list[float] = []
        self.status: dict[int, int] = {}
        self.errors = 0
        self.inputs = 0
        self.checked = 0
        self.argmax_mismatches = 0
        self.seconds = 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, await reader.readexactly(length)


async def client(
    host: str, port: int, requests: list[bytes], labels: list[list[int]], until: float, record: Slice, offset: int
) -> None:
    i = offset
    reader = writer = None
    while time.perf_counter() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            k = i % len(requests)
            started = time.perf_counter()
            writer.write(requests[k])
            await writer.drain()
            status, body = await _read_response(reader)
            record.latencies.append(time.perf_counter() - started)
            record.status[status] = record.status.get(status, 0) + 1
            if status == 200:
                record.inputs += len(labels[k])
                if i % hyp["check_every"] == 0:
                    answer = np.asarray(json.loads(body)["probabilities"]).argmax(1).tolist()
                    record.checked += 1
                    record.argmax_mismatches += answer != labels[k]
            i += 1
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError):
            record.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


async def run_paired_slice(servers: dict, requests: dict, seconds: float) -> dict[str, Slice]:
    """Load every server at once for ``seconds``: whatever else the machine does hits both modes alike."""
    records = {mode: Slice(mode) for mode in servers}
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(
            client(host, port, *requests[mode], until, records[mode], offset=17 * c)
            for mode, (_, host, port) in servers.items()
            for c in range(hyp["clients"])
        )
    )
    for record in records.values():
        record.seconds = time.perf_counter() - started
    return records


def build_requests(
    x: torch.Tensor, model: torch.nn.Module, host: str, port: int, secret: str, seed: int
) -> tuple[list[bytes], list[list[int]]]:
    rng = random.Random(seed)
    requests, labels = [], []
    for _ in range(hyp["bodies"]):
        idx = rng.sample(range(len(x)), hyp["batch"])
        batch = x[idx]
        body = json.dumps({"inputs": batch.tolist()}, separators=(",", ":")).encode()
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {secret}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        requests.append(head + body)
        with torch.no_grad():
            labels.append(model(batch).argmax(1).tolist())
    return requests, labels


####################################################################################################################
#                                                     Report                                                       #
####################################################################################################################


def summary(slices: list[Slice]) -> dict:
    lat = np.asarray([v for s in slices for v in s.latencies]) * 1000
    seconds = sum(s.seconds for s in slices)
    status: dict[int, int] = {}
    for s in slices:
        for code, count in s.status.items():
            status[code] = status.get(code, 0) + count
    return {
        "seconds": round(seconds, 2),
        "requests": len(lat),
        "inputs": sum(s.inputs for s in slices),
        "inputs_per_s": round(sum(s.inputs for s in slices) / seconds, 1),
        "requests_per_s": round(len(lat) / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "status": {str(k): v for k, v in sorted(status.items())},
        "server_errors_5xx": sum(v for k, v in status.items() if k >= 500),
        "connection_errors": sum(s.errors for s in slices),
        "answers_checked": sum(s.checked for s in slices),
        "argmax_mismatches": sum(s.argmax_mismatches for s in slices),
    }


def micro_benchmark(victim: Path, key: Path, x: torch.Tensor, repeats: int = 300) -> dict:
    """In process, no HTTP, on the oracle chains the server builds: a 512-input forward pass, the protected
    call, and the protection's post-processor alone, timed interleaved (so background load hits all three
    alike); medians in ms."""
    from copycatch.oracles.local import ModelOracle
    from copycatch.serve.service import PrevalidatedOracle, answer_validated, protected_oracle

    model = cc.load_model(victim)
    plain = PrevalidatedOracle(ModelOracle(model))  # the chains `copycatch serve` builds
    protected = protected_oracle(PrevalidatedOracle(ModelOracle(model)), key=cc.Key.load(key))
    processors = getattr(protected, "processors", [])
    batch = x[:512]
    probs = plain.query(batch)
    calls = {
        "forward": lambda: answer_validated(plain, batch),
        "protected_call": lambda: answer_validated(protected, batch),
    }
    if processors:
        calls["protection_only"] = lambda: processors[-1](probs, batch)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    out = {"batch": len(batch), **{f"{name}_ms": round(statistics.median(t) * 1000, 3) for name, t in times.items()}}
    if "protection_only_ms" in out:
        out["protection_share_of_forward"] = round(out["protection_only_ms"] / out["forward_ms"], 4)
    return out


def count_lines(path: Path) -> int:
    with open(path) as f:
        return sum(1 for _ in f)


def bootstrap_median_ci(values: list[float], seed: int = 0, draws: int = 5000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    arr = np.asarray(values)
    medians = np.median(rng.choice(arr, size=(draws, len(arr)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=hyp["data"])
    parser.add_argument("--duration", type=float, default=hyp["duration"], help="seconds of load (on both servers)")
    parser.add_argument("--slice", type=float, default=hyp["slice"], help="seconds per slice (one ratio each)")
    parser.add_argument("--clients", type=int, default=hyp["clients"], help="connections per server")
    parser.add_argument("--batch", type=int, default=hyp["batch"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out")
    parser.add_argument(
        "--control",
        action="store_true",
        help="A/A calibration: the second server is unprotected too, so the ratio shows the harness noise",
    )
    args = parser.parse_args()
    if args.duration <= 0 or args.slice <= 0 or args.clients < 1 or args.batch < 1:
        parser.error("duration, slice, clients and batch must be positive")
    hyp.update(duration=args.duration, slice=args.slice, clients=args.clients, batch=args.batch, data=args.data)
    torch.set_num_threads(1)
    os.environ.setdefault("COPYCATCH_PROGRESS", "0")

    with tempfile.TemporaryDirectory(prefix="copycatch-serve-load-") as tmp:
        work = Path(tmp)
        victim, key, test_x = build_victim(work, args.data, args.seed)
        secret = new_key(work / "keys.txt", "load-test")
        common = ["--api-keys", str(work / "keys.txt"), *hyp["serve"]]
        second = "control" if args.control else "dynamarks"  # --control: A/A, both servers unprotected
        servers = {
            "unprotected": start_server([str(victim), "--ledger", str(work / "plain.jsonl"), *common], work, "plain"),
            second: start_server(
                [
                    str(victim),
                    *([] if args.control else ["--protect", str(key)]),
                    "--ledger",
                    str(work / "dyn.jsonl"),
                    *common,
                ],
                work,
                second,
            ),
        }
        model = cc.load_model(victim)
        requests = {
            mode: build_requests(test_x, model, host, port, secret, args.seed)
            for mode, (_, host, port) in servers.items()
        }
        rounds = max(1, round(args.duration / args.slice))
        print(
            f"load: {args.clients} clients per server × {args.batch} inputs per request, both servers at once, "
            f"{rounds} slices of {args.slice:g} s",
            flush=True,
        )
        slices: dict[str, list[Slice]] = {mode: [] for mode in servers}
        try:
            for r in range(rounds):
                records = asyncio.run(run_paired_slice(servers, requests, args.slice))
                for mode, record in records.items():
                    slices[mode].append(record)
                print(
                    f"  slice {r + 1:2d}/{rounds} "
                    + "  ".join(
                        f"{mode} {rec.inputs / rec.seconds:7.1f} inputs/s p50 "
                        f"{np.percentile(rec.latencies, 50) * 1000 if rec.latencies else float('nan'):6.1f} ms "
                        f"{rec.status} err {rec.errors}"
                        for mode, rec in records.items()
                    ),
                    flush=True,
                )
        finally:
            exits = {mode: stop_server(proc) for mode, (proc, _, _) in servers.items()}
        results = {mode: summary(s) for mode, s in slices.items()}
        ratios = [
            p.inputs / p.seconds / (u.inputs / u.seconds)
            for p, u in zip(slices[second], slices["unprotected"])
            if u.inputs
        ]
        micro = micro_benchmark(victim, key, test_x)
        ledger_lines = {name: count_lines(work / f"{name}.jsonl") for name in ("plain", "dyn")}

    overall = results[second]["inputs_per_s"] / results["unprotected"]["inputs_per_s"]
    median_ratio = statistics.median(ratios)
    print("\nmode         seconds  requests    inputs  inputs/s  req/s   p50 ms   p99 ms  5xx  conn-err  argmax-ok")
    for mode, s in results.items():
        print(
            f"{mode:<12} {s['seconds']:7.1f} {s['requests']:9d} {s['inputs']:9d} {s['inputs_per_s']:9.1f} "
            f"{s['requests_per_s']:6.1f} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} {s['server_errors_5xx']:4d} "
            f"{s['connection_errors']:9d}  {s['answers_checked'] - s['argmax_mismatches']}/{s['answers_checked']}"
        )
    low, high = bootstrap_median_ci(ratios)
    print(
        f"{second} / unprotected throughput: {median_ratio:.3f} median over "
        f"{len(ratios)} paired slices (bootstrap 95 % CI {low:.3f}-{high:.3f}; min {min(ratios):.3f}, max "
        f"{max(ratios):.3f}); {overall:.3f} overall"
    )
    print(
        f"micro-benchmark, {micro['batch']} inputs (medians, interleaved): forward {micro['forward_ms']} ms, "
        f"protected call {micro['protected_call_ms']} ms, DynaMarks post-processor alone "
        f"{micro.get('protection_only_ms', float('nan'))} ms "
        f"({micro.get('protection_share_of_forward', float('nan')):.1%} of the forward pass)"
    )
    print(f"ledger lines: unprotected {ledger_lines['plain']}, {second} {ledger_lines['dyn']}; server exits {exits}")
    no_5xx = all(s["server_errors_5xx"] == 0 and s["connection_errors"] == 0 for s in results.values())
    argmax_kept = all(s["argmax_mismatches"] == 0 for s in results.values())
    within = median_ratio >= 0.95
    print(
        f"targets: zero 5xx/connection errors {'PASS' if no_5xx else 'FAIL'}; served argmax = model argmax "
        f"{'PASS' if argmax_kept else 'FAIL'}; {second} costs <= 5 % throughput {'PASS' if within else 'FAIL'} "
        f"({(1 - median_ratio) * 100:+.1f} %)"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"serve-load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "hyp": hyp,
                "results": results,
                "paired_ratios": ratios,
                "median_ratio": median_ratio,
                "overall_ratio": overall,
                "median_ratio_ci95": [low, high],
                "control": args.control,
                "micro": micro,
                "ledger_lines": ledger_lines,
                "server_exits": exits,
                "slices": {
                    m: [{"inputs": s.inputs, "seconds": s.seconds, "status": s.status, "errors": s.errors} for s in v]
                    for m, v in slices.items()
                },
                "command": sys.argv,
                "source": Path(__file__).read_text(),
            },
            indent=2,
        )
    )
    print(f"results written to {path}")
    return 0 if no_5xx and argmax_kept and within else 1


if __name__ == "__main__":
    sys.exit(main())
