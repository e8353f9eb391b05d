"""Sequential vs fixed verification on stolen surrogates: same decision, fewer queries.

For each seed and each scheme with per-query outcomes (the sequential hook; default: all of them), the owner
embeds a watermark, thieves steal the victim through its API (soft-label and hard-label extraction, surrogate
architectures of their choice), and every surrogate is verified twice: the fixed test on the whole key and the
sequential test (`copycatch verify` default). Printed: one row per surrogate, then per scheme the mean queries
of each test, the mean saving and whether the decisions agree. Target (issue 5): the same decision on every
stolen surrogate and ≥ 40 % fewer queries on average over 3 seeds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sequential_savings.py
    .venv/bin/python benchmarks/sequential_savings.py --seeds 0 --schemes margin --max-train 6000   # quick look

The resolved configuration, this file's source and every row are saved to bench-out/sequential-<time>.json.
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
from copycatch.oracles.local import ModelOracle
from copycatch.schemes import SCHEMES
from copycatch.verification.sequential import SequentialPlan, verify_sequential

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "data": "fashion-mnist",
    "split_seed": 0,
    "max_train": 20000,  # owner/thief data drawn from this many training images
    "owner": {"arch": "cnn-small", "epochs": 6},
    "thieves": [  # (attack, surrogate arch, epochs)
        {"attack": "soft-label", "arch": "mlp", "epochs": 15},
        {"attack": "soft-label", "arch": "cnn-small", "epochs": 8},
        {"attack": "hard-label", "arch": "mlp", "epochs": 15},
    ],
    "alpha": 1e-3,
    "plan": {"batch_size": 10, "early_share": 0.2},  # the `copycatch verify` defaults
    "seeds": [0, 1, 2],
    "scheme_params": {},  # per-scheme overrides; default: the paper's
}


def hooked_schemes() -> list[str]:
    """The schemes that declare per-query outcomes (``Scheme.sequential``): the ones the sequential test can stop."""
    return [n for n in SCHEMES.list() if SCHEMES.get(n).factory.sequential]


def run_seed(scheme: str, seed: int, splits, progress: bool) -> list[dict]:
    owner = cc.TrainConfig(seed=seed, epochs=hyp["owner"]["epochs"])
    embedding = cc.embed(
        scheme,
        splits,
        arch=hyp["owner"]["arch"],
        params=hyp["scheme_params"].get(scheme, {}),
        config=owner,
        progress=progress,
    )
    victim, key = embedding.victim, embedding.key
    sch = cc.scheme_for_key(key)
    plan = SequentialPlan.from_dict(hyp["plan"])
    rows = []
    suspects = [("victim", "-", victim)]
    for i, thief in enumerate(hyp["thieves"]):
        stolen = cc.steal(
            sch.protect(ModelOracle(victim), key),
            splits.attacker_pool,
            attack=thief["attack"],
            arch=thief["arch"],
            config=cc.TrainConfig(seed=seed + 100 + i, epochs=thief["epochs"]),
            progress=progress,
        )
        suspects.append((f"{thief['attack']}→{thief['arch']}", stolen.queries, stolen.surrogate))
    for name, theft_queries, model in suspects:
        fixed = sch.verify(ModelOracle(model), key, alpha=hyp["alpha"])
        seq = verify_sequential(sch, ModelOracle(model), key, alpha=hyp["alpha"], plan=plan)
        rows.append(
            {
                "scheme": scheme,
                "seed": seed,
                "suspect": name,
                "theft_queries": theft_queries,
                "test_acc": cc.accuracy(model, splits.test),
                "fixed_queries": fixed.queries,
                "fixed_p": fixed.p_value,
                "fixed_verdict": fixed.verdict,
                "seq_queries": seq.queries,
                "seq_p": seq.p_value,
                "seq_verdict": seq.verdict,
                "stop": seq.details["sequential"]["stop_reason"],
                "watermark_accuracy": fixed.metrics.get("watermark_accuracy"),
            }
        )
    return rows


def summarise(rows: list[dict]) -> str:
    lines = [
        "| scheme | seed | suspect | test acc | wm acc | fixed: queries, p, verdict | sequential: queries, p, "
        "verdict, stop | saved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        saved = 1 - r["seq_queries"] / r["fixed_queries"]
        wm = f"{r['watermark_accuracy']:.2f}" if r["watermark_accuracy"] is not None else "-"
        lines.append(
            f"| {r['scheme']} | {r['seed']} | {r['suspect']} | {r['test_acc']:.3f} | {wm} | "
            f"{r['fixed_queries']}, {r['fixed_p']:.2g}, {r['fixed_verdict']} | {r['seq_queries']}, "
            f"{r['seq_p']:.2g}, {r['seq_verdict']}, {r['stop']} | {saved:.0%} |"
        )
    lines += [
        "",
        "| scheme | stolen surrogates | same decision | fixed queries (mean) | sequential queries (mean ± std) "
        "| saved (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        rs = [r for r in rows if r["scheme"] == scheme and r["suspect"] != "victim"]
        seq = [r["seq_queries"] for r in rs]
        fixed = [r["fixed_queries"] for r in rs]
        same = sum(r["seq_verdict"] == r["fixed_verdict"] for r in rs)
        saved = 1 - sum(seq) / sum(fixed)
        lines.append(
            f"| {scheme} | {len(rs)} | {same}/{len(rs)} | {statistics.mean(fixed):.1f} | "
            f"{statistics.mean(seq):.1f} ± {statistics.pstdev(seq):.1f} | {saved:.0%} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", nargs="*", default=None, help="default: every scheme with the sequential hook")
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    schemes = args.schemes or hooked_schemes()
    seeds = args.seeds if args.seeds is not None else hyp["seeds"]
    if args.max_train is not None:
        hyp["max_train"] = args.max_train
    splits = cc.load_splits(hyp["data"], seed=hyp["split_seed"], max_train=hyp["max_train"])
    rows: list[dict] = []
    start = time.perf_counter()
    for scheme in schemes:
        for seed in seeds:
            for row in run_seed(scheme, seed, splits, args.progress):
                rows.append(row)
                print(json.dumps(row), flush=True)
    wall = time.perf_counter() - start
    table = summarise(rows)
    print()
    print(table)
    print(f"\nwall time {wall / 60:.1f} min on {torch.get_num_threads()} thread(s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sequential-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "hyp": hyp,
                "schemes": schemes,
                "seeds": seeds,
                "rows": rows,
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
