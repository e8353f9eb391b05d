"""Dataset inference's power: how far apart the owner's model keeps its training inputs and unseen ones, and what
the blind walk proves of the model itself, of its soft-label surrogate and of innocents, per number of test inputs.

Per seed: the clean owner model of ``proof.py`` (cnn-small, 10 epochs on 10,000 Fashion-MNIST owner images) is
fingerprinted with dataset inference at each ``n_test`` (``n_fit`` the same); the model itself, a same-architecture
soft-label surrogate (one query per attacker-pool image, 20 epochs) and innocents (true labels on the thief's pool)
are verified. Reported: the model's accuracy on its training inputs and on the test split (the gap is all the test
can see), the permutation p-value of each suspect, and the paper's t-test p-value beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dataset_inference.py --seeds 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dataset_inference.py --seeds 1 --n-test 1000
    .venv/bin/python benchmarks/dataset_inference.py --table

Rows are cached under --out (default bench-out/dataset-inference); models are shared with proof.py (--models).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import copycatch as cc

sys.path.insert(0, str(Path(__file__).parent))
import proof  # the owner recipe, the split, the innocents and the model cache of the proof benchmark

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "size": 10000,  # owner_train images
    "seeds": [0],
    "n_test": [500, 1000],  # private and public test inputs each (n_fit the same)
    "thief_epochs": 20,
    "innocents": [("cnn-small", 300), ("cnn-small", 301), ("mlp", 310), ("lenet", 320)],
    "alpha": 1e-3,
}


def _models(models: Path, seed: int) -> dict:
    splits = proof.splits_for(hyp["size"], seed)
    clean = proof.cached_model(
        models / f"clean-{hyp['size']}-{seed}.safetensors",
        lambda: cc.train("cnn-small", splits, config=proof.owner_config(seed), progress=False),
    )
    surrogate = proof.cached_model(
        models / f"di-soft-surrogate-{hyp['size']}-{seed}.safetensors",
        lambda: (
            cc.steal(
                clean,
                splits.attacker_pool,
                attack="soft-label",
                config=cc.TrainConfig(seed=seed + 100, epochs=hyp["thief_epochs"]),
                progress=False,
            ).surrogate
        ),
    )
    suspects = {"owner's model": clean, "soft surrogate": surrogate}
    for arch, model_seed in hyp["innocents"]:
        suspects[f"innocent {arch} {model_seed}"] = proof.innocent_model(models, arch, model_seed)
    return {"splits": splits, "clean": clean, "suspects": suspects}


def task(out: Path, models: Path, seed: int, n_test: int) -> dict:
    made = _models(models, seed)
    splits, clean = made["splits"], made["clean"]
    row = {
        "seed": seed,
        "n_test": n_test,
        "train_acc": cc.accuracy(clean, splits.owner_train),
        "test_acc": cc.accuracy(clean, splits.test),
    }
    params = {"n_fit": n_test, "n_test": n_test}
    embedding = cc.embed("dataset-inference", splits, model=clean, params=params, config=proof.owner_config(seed),
                         progress=False, max_cost=None)  # fmt: skip
    row["suspects"] = {}
    for name, model in made["suspects"].items():
        evidence = cc.verify(model, embedding.key, sequential=False, alpha=hyp["alpha"]).evidences[0]
        row["suspects"][name] = {
            "p": evidence.p_value,
            "t_test_p": evidence.metrics["paper_t_test_p"],
            "queries": evidence.queries,
        }
    return row


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    if not rows:
        return "no rows yet"
    names = list(rows[0]["suspects"])
    lines = [
        "| seed | test inputs (private + public) | queries | train acc | test acc | "
        + " | ".join(f"p {n} (t-test)" for n in names)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for r in sorted(rows, key=lambda r: (r["seed"], r["n_test"])):
        queries = max(s["queries"] for s in r["suspects"].values())
        ps = " | ".join(f"{r['suspects'][n]['p']:.2g} ({r['suspects'][n]['t_test_p']:.2g})" for n in names)
        lines.append(
            f"| {r['seed']} | {r['n_test']} + {r['n_test']} | {queries} | {r['train_acc']:.4f} | {r['test_acc']:.4f} "
            f"| {ps} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/dataset-inference"))
    ap.add_argument("--models", type=Path, default=Path("bench-out/proof/models"), help="model cache (shared)")
    ap.add_argument("--seeds", type=int, nargs="+", default=hyp["seeds"])
    ap.add_argument("--n-test", type=int, nargs="+", default=hyp["n_test"], help="test inputs per group")
    ap.add_argument("--table", action="store_true", help="print the table from the cached rows and stop")
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
        return
    hyp.update(seeds=args.seeds, n_test=args.n_test)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(hyp, indent=1, default=str))
    tasks = [(f"di-{s}-{n}", task, (args.models, s, n)) for s in args.seeds for n in hyp["n_test"]]
    proof.run(args.out, tasks, 1)
    print(table(args.out))


if __name__ == "__main__":
    os.environ.setdefault("COPYCATCH_PROGRESS", "0")
    torch.set_num_threads(1)
    main()
