"""Margin's two fixed tests side by side on the margin paper grids' cached models: hits vs the rank test.

Every surrogate, innocent and clean model of the `margin` and `margin-mixup` paper grids (`make reproduce
PAPER=margin`, `PAPER=margin-mixup`; cells without a removal chain) is verified against its victim's key twice: as
it answers (probabilities: the rank test) and through the hard-label post-processor (one-hot answers: the count of
hits among misclassified triggers). Nothing is trained; the grids must have run first.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/margin_rank_test.py     # about a minute
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
from pathlib import Path

import torch

import copycatch as cc
from copycatch.bench.grid import artifact_specs, config_hash
from copycatch.schemes.margin import MarginWatermark

hyp = {"grids": ["margin", "margin-mixup"], "root": "bench-out/reproduce", "alpha": 1e-3}


def models_of(root: Path, grid: str):
    """(group, key, model) for every distinct model of the grid's margin cells without removals."""
    seen = set()
    store = sqlite3.connect(root / grid / "results.sqlite")
    for (text,) in store.execute("select config from cells where status = 'ok'"):
        config = json.loads(text)
        if config["removals"] or config["scheme"]["name"] != "margin":
            continue
        specs = artifact_specs(config)
        victim = config_hash(specs["victim"])
        for kind in ("surrogate", "innocent", "clean"):
            if specs[kind] is None or (victim, config_hash(specs[kind])) in seen:
                continue
            seen.add((victim, config_hash(specs[kind])))
            extraction = config["extraction"]
            group = f"{extraction['name']} → {extraction['arch']}" if kind == "surrogate" else "innocent and clean"
            model = cc.load_model(root / "cache" / kind / f"{config_hash(specs[kind])}.safetensors")
            yield group, cc.Key.load(root / "cache" / "victim" / f"{victim}.cckey"), model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=hyp["root"], help="where make reproduce keeps its stores and cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root, scheme, alpha = Path(args.root), MarginWatermark(), hyp["alpha"]
    results: dict[str, list[tuple[float, float]]] = {}
    for grid in hyp["grids"]:
        if not (root / grid / "results.sqlite").exists():
            print(f"no store for grid {grid!r} under {root}: run `make reproduce PAPER={grid}` first", file=sys.stderr)
            return 2
        for group, key, model in models_of(root, grid):
            scores = scheme.verify(cc.ModelOracle(model), key, alpha=alpha).p_value
            labels = scheme.verify(cc.ModelOracle(model).postprocess("hard-label"), key, alpha=alpha).p_value
            results.setdefault(group, []).append((labels, scores))
    print("| models | n | hits: proven at α | hits: median p, worst p | rank test: proven | rank: median p, worst p |")
    print("|---|---|---|---|---|---|")
    for group, pairs in sorted(results.items()):
        cells = []
        for ps in zip(*pairs):
            cells += [f"{sum(p <= alpha for p in ps)}", f"{statistics.median(ps):.2g}, {max(ps):.2g}"]
        print(f"| {group} | {len(pairs)} | " + " | ".join(cells) + " |")
    innocent = [p for _, p in results.get("innocent and clean", [])]
    print(f"\nα = {alpha:g}; smallest innocent or clean model's rank-test p: {min(innocent, default=1.0):.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
