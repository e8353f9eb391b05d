"""Performance ratios, measured side by side in one run on Fashion-MNIST (1 thread).

1. embedding ÷ clean training: every registered scheme's ``api.embed`` against ``api.train`` with the same
   architecture, data, epochs and seed (a pretrain scheme's figure includes the clean training it starts from), at
   the victim recipe of benchmarks/schemes.py (owner_train 30,000 images, 10 epochs);
2. training loop ÷ bare PyTorch loop: ``copycatch.fit`` against a minimal loop on the same model, batches and
   optimiser (samples per second);
3. extraction throughput: queries per second of the victim API alone, and end to end for every extraction attack
   (query + train the surrogate);
4. verification cost: queries and seconds each scheme's ``verify`` needs to reach its decision on its victim;
5. scaling: time and peak memory of training and of margin embedding at N, 2N and 4N training examples (each
   size in a fresh process so the peak RSS is its own);
6. memory: peak resident memory of ``copycatch embed --scheme S --epochs 1`` on all of Fashion-MNIST, every
   scheme, each in a child process (its whole life, loading included: ``ru_maxrss`` from ``wait4``).

Timings are CPU seconds of this process (``time.process_time``; one thread) — the machine is shared, and CPU time
is what the work costs whoever else is running; wall seconds are printed next to them. Each ratio is the median
over ``repeats`` interleaved rounds (A, B, B, A, …) so drifts in machine speed hit both sides.

Targets (issue 6): training loop ≥ 0.9× the bare loop; embedding ≤ 1.5× clean training for margin, frontier
stitching and feature-sharing, ≤ 2.5× for MEA-Defender and EWE, ≤ 1.05× for DynaMarks; peak RSS of an embed
≤ 400 MB.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/perf.py                 # everything (≈ 100 CPU-minutes)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/perf.py --only loop embed --schemes margin dynamarks
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/perf.py --only memory --schemes margin ewe

Results (and this file's hyper-parameters) are saved to bench-out/perf-<time>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("COPYCATCH_PROGRESS", "0")

import torch
import torch.nn.functional as F

import copycatch as cc
from copycatch.attacks.extraction import EXTRACTION_ATTACKS
from copycatch.oracles.base import query_all
from copycatch.schemes import SCHEMES
from copycatch.verification.session import fixed_test

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "data": "fashion-mnist",
    "max_train": 12000,  # owner 6,000 · holdout 1,200 · thief 4,800 (the test split stays 10,000)
    "fractions": {"owner_train": 0.5, "owner_holdout": 0.1, "attacker_pool": 0.4},
    "arch": "cnn-small",
    # Embedding at the victim recipe of benchmarks/schemes.py (all 60,000 training images, so owner_train 30,000;
    # 10 epochs). Several schemes have costs that do not grow with the data or the epochs (FGSM key search, trigger
    # optimisation, key building, a fine-tuning bounded in epochs): at 6,000 images × 5 epochs those dominate and
    # the ratios say more about the toy size than about the scheme (--embed-max-train 12000 --embed-epochs 5).
    "embed": {"max_train": None, "epochs": 10},
    "loop": {"archs": ["cnn-small", "mlp"], "epochs": 2, "batch_size": 128},
    "extraction": {"budget": 2000, "epochs": 2, "surrogate": "mlp"},
    "scaling": {"sizes": [4000, 8000, 16000], "epochs": 1},  # owner_train examples: N, 2N, 4N
    "memory": {"epochs": 1},  # `copycatch embed --epochs 1` on all of Fashion-MNIST, the CLI's defaults otherwise
    "repeats": 3,
    # extra embedding rows: label -> (scheme, params); "margin:free" is the margin scheme's amortised ascent
    "variants": {"margin:free": ("margin", {"ascent": "free"})},
    "targets": {
        "loop": 0.9,
        "margin": 1.5,
        "margin:free": 1.5,
        "frontier-stitching": 1.5,
        "feature-sharing": 1.5,
        "mea-defender": 2.5,
        "ewe": 2.5,
        "dynamarks": 1.05,
        "memory_mb": 400,
    },
}


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, CPU seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def splits_for(max_train: int):
    return cc.load_splits(
        hyp["data"], seed=0, max_train=max_train, fractions=cc.SplitFractions.from_dict(hyp["fractions"])
    )


# ---------------------------------------------------------------------------------------------------------------------
# 1 + 4: embedding cost and verification cost
# ---------------------------------------------------------------------------------------------------------------------


def bench_embedding(splits, schemes: list[str]) -> list[dict[str, Any]]:
    """Embed ÷ clean, CPU seconds. A pretrain scheme's embedding is the clean training it starts from plus its own
    step (exactly what ``api.embed`` does from an architecture name); the step alone is reported too. The other
    schemes embed with ``max_cost=None``: the accuracy-cost guard would otherwise train a clean reference model
    inside the timed embed (one more clean training: +1.0×), which is the guard's price, not the scheme's."""
    rows = []
    arch = hyp["arch"]
    config = cc.TrainConfig(epochs=hyp["embed"]["epochs"], seed=0)
    for label in schemes:
        scheme, params = hyp["variants"].get(label, (label, {}))
        cls = SCHEMES.get(scheme).factory
        ratios, steps, clean_cpu, embed_cpu = [], [], [], []
        embedding = None
        for r in range(hyp["repeats"]):
            if cls.pretrain:
                clean, c_cpu, _ = timed(lambda: cc.train(arch, splits, config=config, progress=False))
                embedding, s_cpu, _ = timed(
                    lambda scheme=scheme, clean=clean, params=params: cc.embed(
                        scheme, splits, model=copy.deepcopy(clean), config=config, params=params, progress=False
                    )
                )
                e_cpu = c_cpu + s_cpu
                steps.append(s_cpu / c_cpu)
            else:
                order = ("clean", "embed") if r % 2 == 0 else ("embed", "clean")
                got = {}
                for what in order:
                    if what == "clean":
                        _, got[what], _ = timed(lambda: cc.train(arch, splits, config=config, progress=False))
                    else:
                        embedding, got[what], _ = timed(
                            lambda scheme=scheme, params=params: cc.embed(
                                scheme, splits, arch=arch, config=config, params=params, progress=False, max_cost=None
                            )
                        )
                c_cpu, e_cpu = got["clean"], got["embed"]
            clean_cpu.append(c_cpu)
            embed_cpu.append(e_cpu)
            ratios.append(e_cpu / c_cpu)
        victim, key = embedding.victim, embedding.key
        oracle = cc.scheme_for_key(key).protect(cc.ModelOracle(victim), key)
        # the scheme's fixed test on the whole key, no transcript (what cc.verify(..., sequential=False) runs
        # inside its session): the figures stay comparable with earlier runs
        evidence, v_cpu, v_wall = timed(lambda oracle=oracle, key=key: fixed_test(oracle, key, alpha=1e-3))
        row = {
            "scheme": label,
            "params": params,
            "pretrain": cls.pretrain,
            "acts_at": cls.acts_at,
            "clean_cpu_s": statistics.median(clean_cpu),
            "embed_cpu_s": statistics.median(embed_cpu),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "step_ratio": statistics.median(steps) if steps else None,
            "target": hyp["targets"].get(label),
            "verify_queries": evidence.queries,
            "verify_cpu_s": v_cpu,
            "verify_wall_s": v_wall,
            "verify_p": evidence.p_value,
            "verify_decision": evidence.decision,
            "victim_acc": cc.accuracy(victim, splits.test),
        }
        rows.append(row)
        step = f", its own step {row['step_ratio']:.2f}×" if steps else ""
        print(
            f"  embed {label:<20} {row['ratio']:.2f}× clean (CPU {row['embed_cpu_s']:.0f}s vs "
            f"{row['clean_cpu_s']:.0f}s{step}); verify: {evidence.queries} queries, {v_cpu:.2f} CPU s, "
            f"p={evidence.p_value:.2g}",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 2: training loop vs a bare loop
# ---------------------------------------------------------------------------------------------------------------------


def bare_loop(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, seed: int
) -> None:
    """The minimal PyTorch loop: same permutation, optimiser and loss as ``fit``."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()


def bench_loop(splits) -> list[dict[str, Any]]:
    p = hyp["loop"]
    data = splits.owner_train
    samples = p["epochs"] * len(data)
    rows = []
    for arch in p["archs"]:
        # warm up: the first convolutions of a process pay for oneDNN's primitive creation and the allocator
        bare_loop(cc.create_for(arch, splits, seed=0), data.x[:1024], data.y[:1024], 1, p["batch_size"], 0)
        ratios, fit_cpu, bare_cpu = [], [], []
        for r in range(hyp["repeats"]):
            order = ("fit", "bare") if r % 2 == 0 else ("bare", "fit")
            got = {}
            for what in order:
                model = cc.create_for(arch, splits, seed=0)
                if what == "fit":
                    config = cc.TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], seed=0)
                    _, cpu, _ = timed(lambda model=model, config=config: cc.fit(model, data, config, progress=False))
                else:
                    _, cpu, _ = timed(
                        lambda model=model: bare_loop(model, data.x, data.y, p["epochs"], p["batch_size"], 0)
                    )
                got[what] = cpu
            fit_cpu.append(got["fit"]), bare_cpu.append(got["bare"])
            ratios.append((samples / got["fit"]) / (samples / got["bare"]))
        row = {
            "arch": arch,
            "samples": samples,
            "fit_samples_per_cpu_s": samples / statistics.median(fit_cpu),
            "bare_samples_per_cpu_s": samples / statistics.median(bare_cpu),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "target": hyp["targets"]["loop"],
        }
        rows.append(row)
        print(
            f"  loop {arch:<10} fit {row['fit_samples_per_cpu_s']:.0f} vs bare {row['bare_samples_per_cpu_s']:.0f} "
            f"samples/CPU-s: {row['ratio']:.3f}×",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 3: extraction throughput
# ---------------------------------------------------------------------------------------------------------------------


def bench_extraction(splits) -> dict[str, Any]:
    p = hyp["extraction"]
    victim = cc.train(hyp["arch"], splits, config=cc.TrainConfig(epochs=1, seed=0), progress=False)
    x = splits.attacker_pool.x
    api = {}
    for name, make in (
        ("model", lambda: cc.ModelOracle(victim)),
        ("model + round:decimals=2", lambda: cc.ModelOracle(victim).postprocess("round:decimals=2")),
    ):
        oracle = make()
        _, cpu, wall = timed(lambda oracle=oracle: query_all(oracle, x, batch_size=256))
        api[name] = {"queries": len(x), "queries_per_cpu_s": len(x) / cpu, "queries_per_wall_s": len(x) / wall}
        print(f"  API {name:<26} {len(x) / cpu:,.0f} queries/CPU-s", flush=True)
    attacks = []
    for attack in EXTRACTION_ATTACKS.list():
        oracle = cc.ModelOracle(victim)
        config = cc.TrainConfig(epochs=p["epochs"], seed=1)
        try:
            result, cpu, wall = timed(
                lambda oracle=oracle, attack=attack, config=config: cc.steal(
                    oracle,
                    splits.attacker_pool,
                    attack=attack,
                    arch=p["surrogate"],
                    budget=p["budget"],
                    config=config,
                    progress=False,
                )
            )
        except cc.CopycatchError as exc:  # an attack whose budget semantics do not fit; say so and go on
            print(f"  extraction {attack:<18} skipped: {exc}", flush=True)
            attacks.append({"attack": attack, "error": str(exc)})
            continue
        row = {
            "attack": attack,
            "queries": result.queries,
            "cpu_s": cpu,
            "wall_s": wall,
            "queries_per_cpu_s": result.queries / cpu,
            "surrogate_acc": cc.accuracy(result.surrogate, splits.test),
        }
        attacks.append(row)
        print(
            f"  extraction {attack:<18} {result.queries} queries in {cpu:.1f} CPU s (query + {p['epochs']} epochs): "
            f"{row['queries_per_cpu_s']:,.0f} queries/CPU-s end to end",
            flush=True,
        )
    return {"api": api, "attacks": attacks}


# ---------------------------------------------------------------------------------------------------------------------
# 5: scaling with data size (one process per size)
# ---------------------------------------------------------------------------------------------------------------------


def scaling_child(owner_train: int) -> dict[str, Any]:
    """Runs in a fresh process: train and margin-embed on ``owner_train`` examples (each twice, the faster run
    counts: the first pays for warm-up); report CPU time and the peak resident memory of that work — on Linux the
    high-water mark is reset after the data are loaded, so it is the work's own peak, not the loading's."""
    import resource

    fractions = hyp["fractions"]
    splits = splits_for(round(owner_train / fractions["owner_train"]))
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        Path("/proc/self/clear_refs").write_text("5")
        source = "VmHWM"
    except OSError:
        source = "ru_maxrss"
    config = cc.TrainConfig(epochs=hyp["scaling"]["epochs"], seed=0)
    train_cpu = min(timed(lambda: cc.train(hyp["arch"], splits, config=config, progress=False))[1] for _ in range(2))
    embed_cpu = min(
        timed(lambda: cc.embed("margin", splits, arch=hyp["arch"], config=config, progress=False))[1] for _ in range(2)
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if source == "VmHWM":
        peak = next(
            int(line.split()[1]) / 1024
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
    return {
        "owner_train": len(splits.owner_train),
        "train_cpu_s": train_cpu,
        "embed_cpu_s": embed_cpu,
        "loading_peak_rss_mb": loaded_rss,
        "peak_rss_mb": peak,
        "peak_rss_source": source,
    }


def bench_scaling() -> list[dict[str, Any]]:
    rows = []
    for n in hyp["scaling"]["sizes"]:
        out = subprocess.run(
            [sys.executable, __file__, "--scaling-child", str(n)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"  N={row['owner_train']:>6}: train {row['train_cpu_s']:.1f} CPU s, margin {row['embed_cpu_s']:.1f} "
            f"CPU s, peak RSS of that work {row['peak_rss_mb']:.0f} MB ({row['peak_rss_source']}; loading the data "
            f"peaked at {row['loading_peak_rss_mb']:.0f} MB)",
            flush=True,
        )
    base = rows[0]
    for row in rows:
        row["train_time_ratio"] = row["train_cpu_s"] / base["train_cpu_s"]
        row["embed_time_ratio"] = row["embed_cpu_s"] / base["embed_cpu_s"]
        row["peak_rss_ratio"] = row["peak_rss_mb"] / base["peak_rss_mb"]
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 6: peak memory of an embed (one child process per scheme)
# ---------------------------------------------------------------------------------------------------------------------


def embed_peak_rss(scheme: str, work: Path) -> dict[str, Any]:
    """``copycatch embed --scheme`` in a child process; its peak RSS over its whole life (``ru_maxrss`` of that child
    alone, from ``wait4``) and its CPU seconds. The exit status is recorded, not judged: an embed that exceeds its
    accuracy-cost limit still writes its files and its memory figure stands."""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from copycatch.cli.main import main; sys.exit(main())",
        "embed",
        "--scheme",
        scheme,
        "-o",
        str(work / f"{scheme}.safetensors"),
        "--key",
        str(work / f"{scheme}.cckey"),
        "--epochs",
        str(hyp["memory"]["epochs"]),
        "-q",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "scheme": scheme,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "exit_status": child.returncode,
        "stderr_tail": stderr.strip().splitlines()[-3:],
        "command": " ".join(["copycatch", *cmd[3:]]),
        "target": hyp["targets"]["memory_mb"],
    }


def bench_memory(schemes: list[str]) -> list[dict[str, Any]]:
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for scheme in schemes:
            row = embed_peak_rss(scheme, Path(work))
            rows.append(row)
            print(
                f"  embed {scheme:<20} peak RSS {row['peak_rss_mb']:.0f} MB ({row['cpu_s']:.0f} CPU s, "
                f"exit {row['exit_status']})",
                flush=True,
            )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------------


def verdict(value: float, target: float | None, *, at_least: bool = False) -> str:
    if target is None:
        return "(no target)"
    ok = value >= target if at_least else value <= target
    return f"{'PASS' if ok else 'FAIL'} ({'≥' if at_least else '≤'} {target:g})"


def summary_table(results: dict[str, Any]) -> str:
    lines = ["| measure | ratio / value | target |", "|---|---|---|"]
    for row in results.get("loop", []):
        lines.append(
            f"| training loop ÷ bare loop, {row['arch']} (samples/CPU-s) | {row['ratio']:.3f}× | "
            f"{verdict(row['ratio'], row['target'], at_least=True)} |"
        )
    for row in results.get("embed", []):
        step = f" (its own step: {row['step_ratio']:.2f}×)" if row.get("step_ratio") is not None else ""
        lines.append(
            f"| embed ÷ clean training, {row['scheme']} ({hyp['embed']['epochs']} epochs"
            f"{'; clean pretraining + its step' if row['pretrain'] else ''}) | {row['ratio']:.2f}×{step} | "
            f"{verdict(row['ratio'], row['target'])} |"
        )
    for row in results.get("embed", []):
        lines.append(
            f"| verification cost, {row['scheme']} | {row['verify_queries']} queries, "
            f"{row['verify_cpu_s']:.2f} CPU s (p = {row['verify_p']:.2g}) | — |"
        )
    ext = results.get("extraction")
    if ext:
        for name, row in ext["api"].items():
            lines.append(f"| API throughput, {name} | {row['queries_per_cpu_s']:,.0f} queries/CPU-s | — |")
        for row in ext["attacks"]:
            if "error" not in row:
                lines.append(
                    f"| extraction end to end, {row['attack']} ({row['queries']} queries, "
                    f"{hyp['extraction']['epochs']} epochs) | {row['queries_per_cpu_s']:,.0f} queries/CPU-s | — |"
                )
    for row in results.get("memory", []):
        lines.append(
            f"| peak RSS, copycatch embed --scheme {row['scheme']} --epochs {hyp['memory']['epochs']} (whole process) "
            f"| {row['peak_rss_mb']:.0f} MB | {verdict(row['peak_rss_mb'], row['target'])} |"
        )
    for row in results.get("scaling", []):
        lines.append(
            f"| scaling N={row['owner_train']}: time ÷ time(N), train / margin; peak RSS of the work | "
            f"{row['train_time_ratio']:.2f}× / {row['embed_time_ratio']:.2f}×; {row['peak_rss_mb']:.0f} MB "
            f"({row['peak_rss_ratio']:.2f}×) | — |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=["loop", "embed", "extraction", "scaling", "memory"], default=None)
    parser.add_argument(
        "--schemes", nargs="*", default=None, help="default: every registered scheme and the variants in hyp"
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--embed-max-train",
        type=int,
        default=None,
        metavar="N",
        help="embedding rows on N training images instead of all of them (quick looks)",
    )
    parser.add_argument("--embed-epochs", type=int, default=None, metavar="E", help="embedding rows at E epochs")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--scaling-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.scaling_child is not None:
        print(json.dumps(scaling_child(args.scaling_child)))
        return 0
    if args.repeats:
        hyp["repeats"] = args.repeats
    if args.embed_max_train:
        hyp["embed"]["max_train"] = args.embed_max_train
    if args.embed_epochs:
        hyp["embed"]["epochs"] = args.embed_epochs
    parts = args.only or ["loop", "embed", "extraction", "scaling", "memory"]
    start = time.perf_counter()
    splits = splits_for(hyp["max_train"])
    print(
        f"data: {splits.summary()}; {torch.get_num_threads()} thread; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    results: dict[str, Any] = {}
    if "loop" in parts:
        print("training loop vs bare loop:", flush=True)
        results["loop"] = bench_loop(splits)
    if "embed" in parts:
        print("embedding vs clean training, and verification cost:", flush=True)
        embed_splits = splits_for(hyp["embed"]["max_train"])
        print(f"  on {embed_splits.summary()}, {hyp['embed']['epochs']} epochs", flush=True)
        results["embed"] = bench_embedding(embed_splits, args.schemes or [*cc.list_schemes(), *hyp["variants"]])
    if "extraction" in parts:
        print("extraction throughput:", flush=True)
        results["extraction"] = bench_extraction(splits)
    if "scaling" in parts:
        print("scaling with data size:", flush=True)
        results["scaling"] = bench_scaling()
    if "memory" in parts:
        print("peak memory of a Fashion-MNIST embed:", flush=True)
        results["memory"] = bench_memory(args.schemes or cc.list_schemes())
    table = summary_table(results)
    wall = time.perf_counter() - start
    print()
    print(table)
    print(f"\nwall time {wall / 60:.1f} min; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"perf-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "hyp": hyp,
                "results": results,
                "table": table,
                "wall_seconds": wall,
                "versions": {"copycatch": cc.__version__, "torch": torch.__version__},
            },
            indent=2,
            default=str,
        )
    )
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
