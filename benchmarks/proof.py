"""Proof after extraction at every data size: accuracy cost of each scheme's defaults and the p-value of a thief.

Per owner data size × seed: a clean model and each scheme's victim trained the same way on the owner's data (the
standard Fashion-MNIST split, owner_train subsampled to the size; the thief's pool and the test split stay the
standard ones), then a same-architecture soft-label surrogate stolen with one query per pool image. Innocent
models (trained on the thief's pool with true labels, several architectures and seeds) are verified against every
key. A second table (--thieves) steals the strongest schemes' victims with every kind of thief; a third
(--removals) launders the leaked victim itself with removal attacks (no extraction) and verifies it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/proof.py                      # everything (hours: see README)
    .venv/bin/python benchmarks/proof.py --schemes margin --sizes 4000 --seeds 0 # one cell
    .venv/bin/python benchmarks/proof.py --table                                # tables from the cached rows
    .venv/bin/python benchmarks/proof.py --sizes 10000 --thieves --thieves-size 10000 --removals  # all three

Every trained model, key and result row is cached under --out (default bench-out/proof): re-running resumes.
The resolved configuration is saved with the rows; tables print mean ± std over seeds and worst-seed p-values.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

import copycatch as cc
from copycatch.core.keyset import KeySet, load_key_file, open_keys
from copycatch.core.stats import binomial_greater
from copycatch.data.base import to_float
from copycatch.oracles.base import query_all
from copycatch.schemes import create_scheme
from copycatch.schemes.ewe import LayerTap
from copycatch.schemes.protection import part_seed, stack_params

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

SAME_ARCH = "soft, same arch, 27k"

hyp = {
    "data": "fashion-mnist",
    "split_seed": 0,
    "sizes": [4000, 10000, 30000],  # owner_train images
    "seeds": [0, 1, 2],
    "owner": {"epochs": 10, "batch_size": 128, "lr": 1e-3},  # clean and protected models, the same recipe
    "schemes": [
        "margin",
        "trigger-set",
        "patch-backdoor",
        "frontier-stitching",
        "feature-sharing",
        "ewe",
        "mea-defender",
        "dynamarks",
        "stack",  # cc.protect: the margin watermark (the margin row's victim, same seed) + DynaMarks at the API
    ],
    "scheme_params": {},  # per-scheme overrides of the defaults (none: the defaults are what is measured)
    "thief": {"arch": "victim", "epochs": 20},  # soft-label, one query per attacker-pool image
    # the second table: every kind of thief against the strongest schemes' victims at one size (same recipe)
    "thieves": {
        "size": 30000,
        "schemes": ["margin", "stack", "mea-defender", "dynamarks"],
        "kinds": {
            SAME_ARCH: {"attack": "soft-label"},  # the first table's thief
            "soft, mlp": {"attack": "soft-label", "arch": "mlp"},
            "soft, wider cnn": {"attack": "soft-label", "arch": "cnn"},
            "hard labels": {"attack": "hard-label"},
            "hinton T=20 α=0.7": {"attack": "distillation", "params": {"temperature": 20.0, "alpha": 0.7}},
            "quantised (10 levels)": {"attack": "quantized", "params": {"levels": 10}},
            "soft, 5k queries": {"attack": "soft-label", "budget": 5000},
            "soft, 1k queries": {"attack": "soft-label", "budget": 1000},
        },
    },
    # innocents: true labels on the thief's pool; (arch, seed) each, shared by every key
    "innocents": {
        "epochs": 3,
        "models": [("cnn-small", s) for s in range(300, 308)]
        + [("mlp", s) for s in range(310, 316)]
        + [("lenet", s) for s in range(320, 323)]
        + [("cnn", s) for s in range(330, 333)],
    },
    # the third table: the leaked victim itself (no extraction) laundered by removal attacks on the thief's pool
    "removals": {
        "size": 10000,
        "chains": {
            "none": [],
            "prune 50 %": ["prune:rate=0.5"],
            "fine-tune 2 epochs": ["fine-tune:epochs=2"],
            "prune 50 % + fine-tune 2 epochs": ["prune:rate=0.5", "fine-tune:epochs=2"],
        },
    },
    "alpha": 1e-3,
    "workers": 2,
}

_SPLITS: dict = {}


def splits_for(size: int, seed: int):
    """The standard split with owner_train subsampled to ``size`` (seeded); the thief's pool and test unchanged."""
    if (size, seed) not in _SPLITS:
        full = _SPLITS.setdefault("full", cc.load_splits(hyp["data"], seed=hyp["split_seed"]))
        if size >= len(full.owner_train):
            part = full
        else:
            pick = torch.randperm(len(full.owner_train), generator=torch.Generator().manual_seed(10_000 + seed))
            part = dataclasses.replace(full, owner_train=full.owner_train.subset(pick[:size]))
        _SPLITS[size, seed] = part
    return _SPLITS[size, seed]


def owner_config(seed: int) -> cc.TrainConfig:
    return cc.TrainConfig(seed=seed, **hyp["owner"])


def cached_model(path: Path, make):
    if path.exists():
        return cc.load_model(path)
    model = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    cc.save_model(model, path)
    return model


def clean_task(out: Path, size: int, seed: int) -> dict:
    splits = splits_for(size, seed)
    t = time.process_time()
    model = cached_model(
        out / "models" / f"clean-{size}-{seed}.safetensors",
        lambda: cc.train("cnn-small", splits, config=owner_config(seed), progress=False),
    )
    return {"clean_acc": cc.accuracy(model, splits.test), "clean_cpu": time.process_time() - t}


def protect(scheme: str, splits, seed: int, params: dict):
    """The victim and its key (a key set for the stack), as ``copycatch embed`` / ``copycatch protect`` make them."""
    if scheme == "stack":
        protection = cc.protect(
            splits, watermark_params=params, config=owner_config(seed), progress=False, max_cost=None
        )
        return protection.victim, protection.keyset
    embedding = cc.embed(scheme, splits, params=params, config=owner_config(seed), progress=False, max_cost=None)
    return embedding.victim, embedding.key


def scheme_task(out: Path, scheme: str, size: int, seed: int) -> dict:
    """Embed, measure the cost, steal with the standard thief, verify the surrogate."""
    splits = splits_for(size, seed)
    clean = cc.load_model(out / "models" / f"clean-{size}-{seed}.safetensors")
    params = hyp["scheme_params"].get(scheme, {})
    t = time.process_time()
    victim, key = protect(scheme, splits, seed, params)
    row = {"scheme": scheme, "size": size, "seed": seed, "params": params, "embed_cpu": time.process_time() - t}
    row["resolved_params"] = [k.params for k in key.keys] if scheme == "stack" else key.params
    key.save(key_file(out, scheme, size, seed))
    cc.save_model(victim, out / "models" / f"{scheme}-{size}-{seed}.safetensors")
    row.update(clean_acc=cc.accuracy(clean, splits.test), victim_acc=cc.accuracy(victim, splits.test))
    row["cost"] = 100 * (row["clean_acc"] - row["victim_acc"])
    thief_arch = victim.arch if hyp["thief"]["arch"] == "victim" else hyp["thief"]["arch"]
    surrogate_file = out / "models" / f"surrogate-{scheme}-{size}-{seed}.safetensors"
    row.update(steal_and_verify(victim, key, splits, seed, surrogate_file, attack="soft-label", arch=thief_arch))
    return row


def steal_and_verify(
    victim, key, splits, seed: int, surrogate_file: Path, *, attack: str, arch: str, params=None, budget=None
) -> dict:
    stolen = cc.steal(
        victim,
        splits.attacker_pool,
        attack=attack,
        arch=arch,
        params=params,
        budget=budget,
        key=key,  # the API-time part(s) of the key act on the served answers
        config=cc.TrainConfig(seed=seed + 100, epochs=hyp["thief"]["epochs"]),
        progress=False,
    )
    cc.save_model(stolen.surrogate, surrogate_file)  # kept so that --reverify can re-test it with a changed statistic
    return {
        "surrogate_acc": cc.accuracy(stolen.surrogate, splits.test),
        "surrogate_file": surrogate_file.name,
        **verify_surrogate(stolen.surrogate, key),
    }


def verify_surrogate(surrogate, key) -> dict:
    run = cc.verify(surrogate, key, sequential=False, alpha=hyp["alpha"])
    return {
        "surrogate_p": run.p_value,
        "surrogate_queries": run.queries,
        "surrogate_parts": {e.scheme: e.p_value for e in run.evidences},
        "surrogate_metrics": [_plain(e.metrics) for e in run.evidences],
    }


def reverify(out: Path) -> None:
    """Verify every saved surrogate again with today's code (its key unchanged) and rewrite the p-values of its row."""
    for path in sorted((out / "rows").glob("*.json")):
        row = json.loads(path.read_text())
        if "surrogate_file" not in row:
            continue
        surrogate = cc.load_model(out / "models" / row["surrogate_file"])
        row.update(verify_surrogate(surrogate, key_file(out, row["scheme"], row["size"], row["seed"])))
        path.write_text(json.dumps(row, indent=1, default=str))
        print(f"re-verified {path.stem}: p={row['surrogate_p']:.3g}", flush=True)


def restack_task(out: Path, size: int, seed: int) -> dict:
    """The saved stack row with its API-time key made again with today's protect parameters, then stolen and
    verified again. The victim and its watermark key stay: protect trains them first, and the API-time part neither
    changes them nor depends on them beyond the victim's answers, so the row is what protect makes today."""
    row = json.loads((out / "rows" / f"scheme-stack-{size}-{seed}.json").read_text())
    victim = cc.load_model(out / "models" / f"stack-{size}-{seed}.safetensors")
    path = key_file(out, "stack", size, seed)
    old = load_key_file(path)
    splits, keys = splits_for(size, seed), list(old.keys)
    for part, key in enumerate(keys):
        if part and cc.scheme_for_key(key).acts_at == "api":
            scheme = create_scheme(key.scheme, **(stack_params(key.scheme, None) or {}))
            config = owner_config(seed).replace(seed=part_seed(seed, part, key.scheme))
            keys[part] = scheme.embed(victim, splits, train=config, progress=False).key
    keyset = KeySet(keys, {k: v for k, v in old.meta.items() if k not in ("created", "package_version")})
    (out / "keys-before-restack").mkdir(exist_ok=True)
    path.rename(out / "keys-before-restack" / path.name)
    keyset.save(path)
    row["resolved_params"] = [k.params for k in keys]
    row["restacked"] = "API-time key made again on the saved victim with the protect parameters of its run"
    surrogate_file = out / "models" / f"surrogate-stack-{size}-{seed}.safetensors"
    row.update(steal_and_verify(victim, keyset, splits, seed, surrogate_file, attack="soft-label", arch=victim.arch))
    for stale in (out / "rows").glob(f"thief-stack-*-{size}-{seed}.json"):  # stolen through the old API-time key
        stale.unlink()
    return row


def dynamarks_power(out: Path, queries=(200, 500, 1000, 2000, 5000)) -> str:
    """The DynaMarks part's p-value on the first k of its key's inputs, from the same answers of each saved surrogate
    (``Scheme.power_curve``): how many queries its proof needs."""
    lines = ["| surrogate of | " + " | ".join(f"{k} queries" for k in queries) + " |", "|---|" + "---|" * len(queries)]
    for path in sorted((out / "rows").glob("scheme-*.json")):
        row = json.loads(path.read_text())
        if row["scheme"] not in ("dynamarks", "stack") or "surrogate_file" not in row:
            continue
        keys, _ = open_keys(key_file(out, row["scheme"], row["size"], row["seed"]))
        key = next(k for k in keys if k.scheme == "dynamarks")
        scheme = cc.scheme_for_key(key)
        oracle = cc.ModelOracle(cc.load_model(out / "models" / row["surrogate_file"]))
        answers = query_all(oracle, scheme.verification_inputs(key), progress=False)
        curve = scheme.power_curve(answers, key, alpha=hyp["alpha"], sizes=queries)
        p_at = dict(zip(curve["queries"], curve["p"]))
        cells = [f"{p_at[k]:.2g}" if k in p_at else "–" for k in queries]
        lines.append(f"| {row['scheme']} {row['size']} seed {row['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ewe_entanglement(out: Path, n_test: int = 3000) -> str:
    """Whether each EWE victim's triggers share the target class's features (the SNNL's purpose) and whether its
    surrogate inherited the mark: per saved row, the share of triggers whose nearest class centroid (cosine, over
    ``n_test`` test images) in the last SNNL layer is the target class, for the victim and for the surrogate."""
    lines = [
        "| owner images | seed | surrogate p | surrogate watermark accuracy | victim: triggers nearest the target "
        "| surrogate: triggers nearest the target |",
        "|---|---|---|---|---|---|",
    ]
    test = cc.load_splits(hyp["data"], seed=hyp["split_seed"]).test
    x, y = test.batch(slice(0, n_test))
    rows = [json.loads(path.read_text()) for path in (out / "rows").glob("scheme-ewe-*.json")]
    for row in sorted(rows, key=lambda r: (r["size"], r["seed"])):
        key = load_key_file(key_file(out, "ewe", row["size"], row["seed"]))
        target, triggers = int(key["target_class"]), to_float(key["trigger_x"])
        shares = []
        for name in (f"ewe-{row['size']}-{row['seed']}", row["surrogate_file"].removesuffix(".safetensors")):
            model = cc.load_model(out / "models" / f"{name}.safetensors").eval()
            tap = LayerTap(model, (key.meta["layers"][-1],))
            try:
                with torch.no_grad():
                    on_triggers, on_test = (
                        torch.nn.functional.normalize(tap.run(model, inputs)[1][0].flatten(1), dim=1)
                        for inputs in (triggers, x)
                    )
            finally:
                tap.remove()
            centroids = torch.stack([on_test[y == c].mean(0) for c in range(int(y.max()) + 1)])
            nearest = (on_triggers @ torch.nn.functional.normalize(centroids, dim=1).T).argmax(1)
            shares.append(float((nearest == target).float().mean()))
        accuracy = row["surrogate_metrics"][0]["watermark_accuracy"]
        lines.append(
            f"| {row['size']} | {row['seed']} | {row['surrogate_p']:.2g} | {accuracy:.2f} | {shares[0]:.2f} "
            f"| {shares[1]:.2f} |"
        )
    return "\n".join(lines)


def key_file(out: Path, scheme: str, size: int, seed: int) -> Path:
    """Where the victim's key of one row lives (a key set for the stack)."""
    return out / "keys" / f"{scheme}-{size}-{seed}.{'cckeys' if scheme == 'stack' else 'cckey'}"


def thief_task(out: Path, scheme: str, kind: str, size: int, seed: int) -> dict:
    """The scheme row's victim and key (made by scheme_task) stolen by one kind of thief."""
    splits = splits_for(size, seed)
    victim = cc.load_model(out / "models" / f"{scheme}-{size}-{seed}.safetensors")
    key_path = key_file(out, scheme, size, seed)
    thief = hyp["thieves"]["kinds"][kind]
    row = {"scheme": scheme, "thief": kind, "size": size, "seed": seed}
    arch = thief.get("arch", victim.arch)
    surrogate_file = out / "models" / f"surrogate-{scheme}-{re.sub('[^a-z0-9]+', '-', kind)}-{size}-{seed}.safetensors"
    row.update(
        steal_and_verify(
            victim,
            key_path,
            splits,
            seed,
            surrogate_file,
            attack=thief["attack"],
            arch=arch,
            params=thief.get("params"),
            budget=thief.get("budget"),
        )
    )
    return row


def innocent_model(models: Path, arch: str, seed: int):
    """An innocent: trained with true labels on the thief's pool (the same pool at every owner size and seed)."""
    splits = splits_for(max(hyp["sizes"]), 0)
    config = cc.TrainConfig(seed=seed, epochs=hyp["innocents"]["epochs"])
    return cached_model(
        models / f"innocent-{arch}-{seed}.safetensors",
        lambda: cc.train(arch, splits, on="attacker_pool", config=config, progress=False),
    )


def innocent_task(out: Path, arch: str, seed: int) -> dict:
    """One innocent model verified against every key made so far."""
    splits = splits_for(max(hyp["sizes"]), 0)
    model = innocent_model(out / "models", arch, seed)
    results = {}
    for path in sorted((out / "keys").glob("*.cckey*")):
        results[path.stem] = cc.verify(model, path, sequential=False, alpha=hyp["alpha"]).p_value
    return {"arch": arch, "seed": seed, "acc": cc.accuracy(model, splits.test), "p_values": results}


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _init_worker() -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("COPYCATCH_PROGRESS", "0")


def run(out: Path, tasks: list[tuple], workers: int) -> None:
    """Run tasks (name, fn, args) whose row file is missing, ``workers`` at a time; rows land in out/rows."""
    todo = [(name, fn, args) for name, fn, args in tasks if not (out / "rows" / f"{name}.json").exists()]
    print(f"{len(tasks) - len(todo)} done before, {len(todo)} to run", flush=True)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    with cf.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        futures = {pool.submit(fn, out, *args): name for name, fn, args in todo}
        for future in cf.as_completed(futures):
            name = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # one failure must not lose the others; it is reported and retried next run
                print(f"FAILED {name}: {type(exc).__name__}: {exc}", flush=True)
                continue
            (out / "rows" / f"{name}.json").write_text(json.dumps(row, indent=1, default=str))
            print(f"done {name}: {_brief(row)}", flush=True)


def _brief(row: dict) -> str:
    keys = ("clean_acc", "victim_acc", "cost", "surrogate_p", "acc")
    return ", ".join(f"{k}={row[k]:.4g}" for k in keys if isinstance(row.get(k), float))


def mean_std(values: list[float], fmt: str = "{:.4f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("scheme-*.json"))]
    innocents = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("innocent-*.json"))]
    lines = [
        "| scheme | owner images | clean acc | protected acc | cost (points) | surrogate p (worst seed) "
        "| proven (p ≤ α) | hit count's p (worst seed) | innocents accused / verified | innocent p (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scheme in hyp["schemes"]:
        for size in hyp["sizes"]:
            rs = [r for r in rows if r["scheme"] == scheme and r["size"] == size]
            if not rs:
                continue
            mine = re.compile(rf"{scheme}-{size}-\d+")  # this row's keys (not a backup beside them)
            ps = [p for inn in innocents for k, p in inn["p_values"].items() if mine.fullmatch(k)]
            accused = sum(p <= hyp["alpha"] for p in ps)
            lines.append(
                f"| {scheme} | {size} | {mean_std([r['clean_acc'] for r in rs])} | "
                f"{mean_std([r['victim_acc'] for r in rs])} | {mean_std([r['cost'] for r in rs], '{:.2f}')} | "
                f"{max(r['surrogate_p'] for r in rs):.2g} | {sum(r['surrogate_p'] <= hyp['alpha'] for r in rs)}/"
                f"{len(rs)} | {hit_count_p(rs)} | {accused}/{len(ps)} | {min(ps, default=float('nan')):.2g} |"
            )
    return "\n".join(lines)


def hit_count_p(rows: list[dict]) -> str:
    """Worst seed's p-value of the margin hit count (the label-only test) from the recorded metrics: what the test
    gave before it read the surrogate's scores (margin, trigger-set and the stack's margin part); – for others."""
    ps = [
        binomial_greater(m["hits"], m["misclassified"], m["null_hit_rate"])
        for r in rows
        for m in r.get("surrogate_metrics", [])[:1]
        if {"hits", "misclassified", "null_hit_rate"} <= set(m)
    ]
    return f"{max(ps):.2g}" if len(ps) == len(rows) else "–"


def removal_task(out: Path, scheme: str, chain: str, size: int, seed: int) -> dict:
    """The scheme row's victim, leaked as a file and laundered by one removal chain; verified with its key."""
    splits = splits_for(size, seed)
    victim = cc.load_model(out / "models" / f"{scheme}-{size}-{seed}.safetensors")
    key_path = key_file(out, scheme, size, seed)
    attacks = hyp["removals"]["chains"][chain]
    model, suspect = victim, victim
    if attacks:
        laundering = cc.remove(victim, attacks, splits, config=cc.TrainConfig(seed=seed + 200), progress=False)
        model, suspect = laundering.model, laundering.oracle if laundering.evasions else laundering.model
    run = cc.verify(suspect, key_path, sequential=False, alpha=hyp["alpha"])
    return {
        "scheme": scheme,
        "chain": chain,
        "size": size,
        "seed": seed,
        "suspect_acc": cc.accuracy(model, splits.test),
        "suspect_p": run.p_value,
        "suspect_parts": {e.scheme: e.p_value for e in run.evidences},
    }


def cell(rows: list[dict], p_key: str, acc_key: str) -> str:
    """Worst-seed p-value, seeds proven at α, and accuracy (mean ± std) of the rows of one table cell."""
    if not rows:
        return "–"
    proven = sum(r[p_key] <= hyp["alpha"] for r in rows)
    accuracy = mean_std([r[acc_key] for r in rows], "{:.3f}")
    return f"{max(r[p_key] for r in rows):.2g} ({proven}/{len(rows)}; acc {accuracy})"


def removals_table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("removal-*.json"))]
    chains = list(hyp["removals"]["chains"])
    lines = ["| scheme | " + " | ".join(f"leaked, {c}" for c in chains) + " |", "|---|" + "---|" * len(chains)]
    for scheme in hyp["schemes"]:
        cells = [
            cell([r for r in rows if r["scheme"] == scheme and r["chain"] == c], "suspect_p", "suspect_acc")
            for c in chains
        ]
        if any(c != "–" for c in cells):
            lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def thieves_table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("thief-*.json"))]
    size, kinds = hyp["thieves"]["size"], list(hyp["thieves"]["kinds"])
    same_arch = [json.loads(p.read_text()) for p in sorted((out / "rows").glob(f"scheme-*-{size}-*.json"))]
    rows += [dict(r, thief=SAME_ARCH) for r in same_arch]
    lines = ["| scheme | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for scheme in hyp["thieves"]["schemes"]:
        cells = [
            cell([r for r in rows if r["scheme"] == scheme and r["thief"] == k], "surrogate_p", "surrogate_acc")
            for k in kinds
        ]
        lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", nargs="*", default=None)
    parser.add_argument("--sizes", nargs="*", type=int, default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument(
        "--scheme-params",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='per-scheme overrides, e.g. \'{"margin": {"lam": 0.1}}\' (probes; the table is the defaults)',
    )
    parser.add_argument("--out", default="bench-out/proof")
    parser.add_argument("--no-innocents", action="store_true", help="skip the innocent models this run")
    parser.add_argument("--table", action="store_true", help="print the tables from the cached rows and stop")
    parser.add_argument(
        "--reverify",
        action="store_true",
        help="re-verify the saved surrogates and innocents with the current code, then print the tables",
    )
    parser.add_argument(
        "--dynamarks-power",
        action="store_true",
        help="print the DynaMarks part's p-value against its query count for the saved surrogates and stop",
    )
    parser.add_argument(
        "--ewe-entanglement",
        action="store_true",
        help="print, per saved EWE row, how many triggers sit nearest the target class in the victim and surrogate",
    )
    parser.add_argument(
        "--restack",
        action="store_true",
        help="make the saved stack rows' API-time keys again with today's protect parameters, steal and verify "
        "again (their thief rows are dropped; --thieves runs them again)",
    )
    parser.add_argument(
        "--thieves", action="store_true", help="also run the second table (every thief at hyp['thieves']['size'])"
    )
    parser.add_argument(
        "--removals", action="store_true", help="also run the third table (removal attacks on the leaked victim)"
    )
    parser.add_argument(
        "--thieves-size", type=int, default=None, help="owner size of the second table (a reduced scale)"
    )
    parser.add_argument("--thieves-schemes", nargs="*", default=None, help="schemes of the second table")
    parser.add_argument(
        "--thieves-kinds", nargs="*", default=None, help="kinds of thief of the second table (default: every kind)"
    )
    parser.add_argument("--removals-size", type=int, default=None, help="owner size of the third table")
    args = parser.parse_args()
    out = Path(args.out)
    for name in ("schemes", "sizes", "seeds", "scheme_params"):
        if getattr(args, name):
            hyp[name] = getattr(args, name)
    hyp["thieves"]["size"] = args.thieves_size or hyp["thieves"]["size"]
    hyp["thieves"]["schemes"] = args.thieves_schemes or hyp["thieves"]["schemes"]
    unknown = set(args.thieves_kinds or ()) - set(hyp["thieves"]["kinds"])
    if unknown:
        parser.error(f"unknown thief kinds {sorted(unknown)}; known: {list(hyp['thieves']['kinds'])}")
    selected_kinds = args.thieves_kinds or list(hyp["thieves"]["kinds"])
    hyp["removals"]["size"] = args.removals_size or hyp["removals"]["size"]
    if args.table:
        print(table(out), thieves_table(out), removals_table(out), sep="\n\n")
        return 0
    if args.dynamarks_power:
        print(dynamarks_power(out))
        return 0
    if args.ewe_entanglement:
        print(ewe_entanglement(out))
        return 0
    if args.reverify:
        reverify(out)
    elif args.restack:  # run() skips a task whose row exists, so a restacked row is written under its own name first
        pairs = [(s, d) for s in hyp["sizes"] for d in hyp["seeds"] if key_file(out, "stack", s, d).exists()]
        run(out, [(f"restack-{s}-{d}", restack_task, (s, d)) for s, d in pairs], hyp["workers"])
        for size, seed in pairs:
            (out / "rows" / f"restack-{size}-{seed}.json").replace(out / "rows" / f"scheme-stack-{size}-{seed}.json")
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(hyp, indent=1))
        pairs = [(size, seed) for size in hyp["sizes"] for seed in hyp["seeds"]]
        run(out, [(f"clean-{s}-{d}", clean_task, (s, d)) for s, d in pairs], hyp["workers"])
        run(
            out,
            [(f"scheme-{sc}-{s}-{d}", scheme_task, (sc, s, d)) for s, d in pairs for sc in hyp["schemes"]],
            hyp["workers"],
        )
    if not args.no_innocents:
        for stale in (out / "rows").glob("innocent-*.json"):  # innocents re-verify every key made so far
            stale.unlink()
        run(out, [(f"innocent-{a}-{s}", innocent_task, (a, s)) for a, s in hyp["innocents"]["models"]], hyp["workers"])
    if args.reverify:
        print(table(out), thieves_table(out), removals_table(out), sep="\n\n")
        return 0
    if args.thieves:
        size, schemes = hyp["thieves"]["size"], hyp["thieves"]["schemes"]
        run(out, [(f"clean-{size}-{d}", clean_task, (size, d)) for d in hyp["seeds"]], hyp["workers"])
        run(
            out,
            [(f"scheme-{sc}-{size}-{d}", scheme_task, (sc, size, d)) for d in hyp["seeds"] for sc in schemes],
            hyp["workers"],
        )
        tasks = [
            (f"thief-{sc}-{re.sub('[^a-z0-9]+', '-', kind)}-{size}-{d}", thief_task, (sc, kind, size, d))
            for d in hyp["seeds"]
            for sc in schemes
            for kind in selected_kinds
            if kind != SAME_ARCH
        ]
        run(out, tasks, hyp["workers"])
    if args.removals:
        size = hyp["removals"]["size"]
        tasks = [
            (f"removal-{sc}-{re.sub('[^a-z0-9]+', '-', chain)}-{size}-{d}", removal_task, (sc, chain, size, d))
            for d in hyp["seeds"]
            for sc in hyp["schemes"]
            for chain in hyp["removals"]["chains"]
            if (out / "models" / f"{sc}-{size}-{d}.safetensors").exists()
        ]
        run(out, tasks, hyp["workers"])
    print(table(out), thieves_table(out), removals_table(out), sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
