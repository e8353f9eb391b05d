"""Every extraction attack against one clean Fashion-MNIST victim, at several query budgets.

One row per (attack, budget), mean ± std over seeds: surrogate test accuracy, agreement with the victim on the
test set (fidelity), queries actually spent, and wall time of the attack (queries + surrogate training).

The victim is trained once (the owner's recipe below) and kept fixed; each seed changes the thief: which pool
inputs it draws, its surrogate's initialisation and its training order. The thief's pool is the attacker pool
(disjoint from the owner's data). Attacks that cannot use a budget fully say so in the "queries" column
(e.g. Jacobian augmentation spends at most seeds·2^rounds queries).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/extraction.py                       # everything (issue 4)
    .venv/bin/python benchmarks/extraction.py --attacks soft-label --budgets 1000 --seeds 0   # one cell

The resolved configuration, this file's source and every per-run row are saved to bench-out/extraction-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import copycatch as cc
from copycatch.attacks.extraction import list_extraction_attacks

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "data": "fashion-mnist",
    "split_seed": 0,
    "victim": {"arch": "cnn-small", "epochs": 10, "seed": 0},  # the clean victim every attack faces
    "thief": {"arch": "mlp", "epochs": 10, "batch_size": 128, "lr": 1e-3},
    "budgets": [1000, 5000, 20000],
    "seeds": [0, 1, 2],
    "attack_params": {},  # per attack overrides, e.g. {"knockoff": {...}}
}


def run_one(victim, splits, attack: str, budget: int, seed: int, progress: bool) -> dict:
    thief = cc.TrainConfig(
        seed=seed, epochs=hyp["thief"]["epochs"], batch_size=hyp["thief"]["batch_size"], lr=hyp["thief"]["lr"]
    )
    oracle = cc.ModelOracle(victim)
    start = time.perf_counter()
    result = cc.steal(
        oracle,
        splits.attacker_pool,
        attack=attack,
        arch=hyp["thief"]["arch"],
        params=hyp["attack_params"].get(attack, {}),
        budget=budget,
        config=thief,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    if oracle.queries > budget:  # the attack's own accounting is not trusted: the oracle counted every answer
        raise RuntimeError(f"{attack} spent {oracle.queries} queries on a budget of {budget}")
    return {
        "attack": attack,
        "budget": budget,
        "seed": seed,
        "queries": oracle.queries,
        "seconds": seconds,
        "surrogate_acc": cc.accuracy(result.surrogate, splits.test),
        "agreement": cc.agreement(result.surrogate, victim, splits.test.x),
    }


def mean_std(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def summarise(rows: list[dict], victim_acc: float) -> str:
    lines = [
        f"victim ({hyp['victim']['arch']}, clean) test accuracy {victim_acc:.4f}",
        "",
        "| attack | budget | queries spent | surrogate acc | agreement | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for attack, budget in dict.fromkeys((r["attack"], r["budget"]) for r in rows):
        rs = [r for r in rows if r["attack"] == attack and r["budget"] == budget]
        col = lambda k, rs=rs: [float(r[k]) for r in rs]  # noqa: E731
        lines.append(
            f"| {attack} | {budget} | {mean_std(col('queries'), '{:.0f}')} | "
            f"{mean_std(col('surrogate_acc'), '{:.4f}')} | {mean_std(col('agreement'), '{:.4f}')} | "
            f"{mean_std(col('seconds'), '{:.1f}')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="*", default=None, help="default: every registered extraction attack")
    parser.add_argument("--budgets", nargs="*", type=int, default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    attacks = args.attacks or list_extraction_attacks()
    budgets = args.budgets or hyp["budgets"]
    seeds = args.seeds if args.seeds is not None else hyp["seeds"]
    wall_start = time.perf_counter()
    splits = cc.load_splits(hyp["data"], seed=hyp["split_seed"])
    v = hyp["victim"]
    victim = cc.train(
        v["arch"], splits, config=cc.TrainConfig(epochs=v["epochs"], seed=v["seed"]), progress=args.progress
    )
    victim_acc = cc.accuracy(victim, splits.test)
    print(json.dumps({"victim_acc": victim_acc}), flush=True)
    rows = []
    for attack in attacks:
        for budget in budgets:
            for seed in seeds:
                row = run_one(victim, splits, attack, budget, seed, args.progress)
                rows.append(row)
                print(json.dumps(row), flush=True)
    wall = time.perf_counter() - wall_start
    table = summarise(rows, victim_acc)
    print()
    print(table)
    print(f"\nwall time {wall / 60:.1f} min on {torch.get_num_threads()} threads")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"extraction-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "hyp": hyp,
                "attacks": attacks,
                "budgets": budgets,
                "seeds": seeds,
                "rows": rows,
                "victim_acc": victim_acc,
                "table": table,
                "wall_seconds": wall,
                "versions": {"copycatch": cc.__version__, "torch": torch.__version__},
                "source": Path(__file__).read_text(),
            },
            indent=2,
            default=str,
        )
    )
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
