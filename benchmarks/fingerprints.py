"""Fingerprints beside watermarks, on the same surrogates: ROC AUC, worst surrogate p-value, innocents accused.

Per owner data size × seed: the owner protects a model the way ``copycatch protect`` does (the margin watermark in
the weights, DynaMarks at the API), adds DAWN at the API, and fingerprints that same model with CAE and dataset
inference (the weights stay as they are). The model is served over loopback HTTP as ``copycatch serve`` runs it (API
keys, ledger, DAWN's record file) with DynaMarks and DAWN applied to every answer; an honest client asks the test
split, and every thief of the list buys answers with its own API key and trains a surrogate; some surrogates are then
fine-tuned or pruned. Every key verifies every surrogate and every innocent model (true labels on the thief's pool,
several architectures and seeds, none used to make any key): margin, DynaMarks, CAE, dataset inference, DAWN on the
records of the inputs that thief asked (``copycatch key dawn-records``; an innocent is checked against every thief's
records), and the stack of all five (Holm-combined, as ``copycatch verify`` does for a key set whose parts are not
independent).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fingerprints.py                    # the whole table (see README)
    .venv/bin/python benchmarks/fingerprints.py --sizes 10000 --seeds 0 --workers 2  # one size, one seed
    .venv/bin/python benchmarks/fingerprints.py --table                              # the table from cached rows

Everything (models, keys, rows) is cached under --out (default bench-out/fingerprints): re-running resumes. The
resolved configuration is saved beside the rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

import copycatch as cc
from copycatch.core.stats import holm_adjust
from copycatch.models.io import weights_digest
from copycatch.oracles.base import query_all
from copycatch.oracles.http import HttpOracle
from copycatch.serve import ServeConfig, create_app, new_key, serve_in_thread
from copycatch.serve.dawn_records import client_records

sys.path.insert(0, str(Path(__file__).parent))
import proof

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "sizes": [10000, 30000],  # owner_train images
    "seeds": [0, 1, 2],
    "fingerprints": {"cae": {}, "dataset-inference": {}},  # parameters (none: the defaults are what is measured)
    "dawn": {},  # DAWN at the API beside DynaMarks (defaults: 0.5 % of answers falsified)
    "thief_epochs": 20,
    # surrogate name -> how it is made: an extraction attack through the protected API, then removal attacks
    "thieves": {
        "soft, same arch": {"attack": "soft-label"},
        "soft, mlp": {"attack": "soft-label", "arch": "mlp"},
        "soft, lenet": {"attack": "soft-label", "arch": "lenet"},
        "soft, wider cnn": {"attack": "soft-label", "arch": "cnn"},
        "hard labels": {"attack": "hard-label"},
        "hinton T=20": {"attack": "distillation", "params": {"temperature": 20.0, "alpha": 0.7}},
        "soft, 5k queries": {"attack": "soft-label", "budget": 5000},
        "soft + fine-tune": {"attack": "soft-label", "removal": ["fine-tune:epochs=2"]},
        "soft + prune 50 %": {"attack": "soft-label", "removal": ["prune:rate=0.5"]},
        "soft + prune 50 % + fine-tune": {"attack": "soft-label", "removal": ["prune:rate=0.5", "fine-tune:epochs=2"]},
    },
    "innocents": proof.hyp["innocents"],  # 20 models: cnn-small ×8, mlp ×6, lenet ×3, cnn ×3
    "alpha": 1e-3,
    "workers": 2,
}

KEYS = ("margin", "dynamarks", "cae", "dataset-inference", "dawn", "stack")
MODEL_KEYS = ("margin", "dynamarks", "cae", "dataset-inference")  # verified the same way on every suspect


def _slug(text: str) -> str:
    return re.sub("[^a-z0-9]+", "-", text.lower()).strip("-")


def _served(work: Path, victim, keys: dict, clients: tuple[str, ...]):
    """The protected API as ``copycatch serve`` runs it: the victim with DynaMarks and DAWN applied to every answer,
    API keys for ``clients``, a ledger and DAWN's record file in ``work`` (emptied first)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    keyring, ledger = work / "api-keys.json", work / "ledger.jsonl"
    secrets = {client: new_key(keyring, client) for client in clients}
    api_keys = cc.KeySet([keys["margin"], keys["dynamarks"], keys["dawn"]])
    app = create_app(victim, ServeConfig(ledger=str(ledger)), key=api_keys, keyring=str(keyring))
    return app, secrets, ledger


def owner_task(out: Path, size: int, seed: int) -> dict:
    """The protected victim (margin + DynaMarks), then the two fingerprints of that same victim."""
    splits = proof.splits_for(size, seed)
    base = out / "keys" / f"{size}-{seed}"
    base.mkdir(parents=True, exist_ok=True)
    t = time.process_time()
    protection = cc.protect(splits, config=proof.owner_config(seed), progress=False, max_cost=None)
    protect_cpu = time.process_time() - t
    victim = protection.victim
    cc.save_model(victim, out / "models" / f"victim-{size}-{seed}.safetensors")
    row = {"size": size, "seed": seed, "protect_cpu": protect_cpu, "victim_acc": cc.accuracy(victim, splits.test)}
    for key in protection.keyset:
        key.save(base / f"{key.scheme}.cckey")
    before = weights_digest(victim)
    for scheme, params in hyp["fingerprints"].items():
        t = time.process_time()
        embedding = cc.embed(scheme, splits, model=victim, params=params, config=proof.owner_config(seed),
                             progress=False, max_cost=None)  # fmt: skip
        row[f"{scheme}_cpu"] = time.process_time() - t
        row[f"{scheme}_info"] = {k: v for k, v in embedding.info.items() if isinstance(v, (int, float, list))}
        embedding.key.save(base / f"{scheme}.cckey")
    embedding = cc.embed("dawn", splits, model=victim, params=hyp["dawn"], config=proof.owner_config(seed),
                         progress=False)  # fmt: skip
    embedding.key.save(base / "dawn.cckey")
    row["weights_untouched"] = weights_digest(victim) == before
    # an honest client asks the test split through the protected API: the accuracy it sees, the share DAWN falsifies
    app, secrets, ledger = _served(out / "http" / f"{size}-{seed}-honest", victim, _keys(out, size, seed), ("honest",))
    with serve_in_thread(app) as url:
        answers = query_all(HttpOracle(url, api_key=secrets["honest"]), splits.test.stored)
    records = client_records(ledger, "honest")
    row["honest_acc"] = float((answers.argmax(1) == splits.test.y).float().mean())
    row["falsified_share_honest"] = len(records.x) / records.distinct
    # one clean training of the same recipe, the unit of the generation time
    t = time.process_time()
    cc.train("cnn-small", splits, config=proof.owner_config(seed), progress=False)
    row["clean_cpu"] = time.process_time() - t
    return row


def _keys(out: Path, size: int, seed: int) -> dict[str, cc.Key]:
    base = out / "keys" / f"{size}-{seed}"
    return {name: cc.Key.load(base / f"{name}.cckey") for name in KEYS if name != "stack"}


def _verify(model, key) -> dict:
    run = cc.verify(model, key, sequential=False, alpha=hyp["alpha"])
    return {"p": run.p_value, "queries": run.queries}


def stack_p(ps: list[float]) -> float:
    """The stack's p-value: the keys' p-values Holm-combined, as ``copycatch verify`` combines a key set whose parts
    are not declared independent."""
    return min(holm_adjust(ps))


def thief_task(out: Path, size: int, seed: int, kind: str) -> dict:
    """One thief buys answers with its own API key, trains (and maybe launders) a surrogate; every key verifies it,
    DAWN on the records of the inputs this thief asked. The surrogate and the thief's DAWN key are kept, and reused
    when the row is made again (a key changed: delete its rows, not the thieves)."""
    splits = proof.splits_for(size, seed)
    keys = _keys(out, size, seed)
    model_path = out / "models" / f"surrogate-{size}-{seed}-{_slug(kind)}.safetensors"
    records_path = out / "keys" / f"{size}-{seed}" / "records" / f"{_slug(kind)}.cckey"
    work = out / "http" / f"{size}-{seed}-{_slug(kind)}"
    stolen_now = not (model_path.exists() and records_path.exists())
    if stolen_now:
        cc.save_model(_steal(out, work, size, seed, kind, splits, keys), model_path)
    records = client_records(work / "ledger.jsonl", "thief")  # the inputs this thief asked that DAWN falsified
    if stolen_now:
        dawn_key = cc.scheme_for_key(keys["dawn"]).with_records(
            keys["dawn"], records.x, records.owner, records.wrong, source=f"http {kind}"
        )
        dawn_key.save(records_path)
    surrogate, dawn_key = cc.load_model(model_path), cc.Key.load(records_path)
    row = {"size": size, "seed": seed, "thief": kind, "acc": cc.accuracy(surrogate, splits.test)}
    row["falsified_share"] = len(records.x) / records.distinct
    row["keys"] = {name: _verify(surrogate, keys[name]) for name in MODEL_KEYS}
    row["keys"]["dawn"] = _verify(surrogate, dawn_key)
    row["keys"]["stack"] = {
        "p": stack_p([row["keys"][name]["p"] for name in (*MODEL_KEYS, "dawn")]),
        "queries": sum(row["keys"][name]["queries"] for name in (*MODEL_KEYS, "dawn")),
    }
    return row


def _steal(out: Path, work: Path, size: int, seed: int, kind: str, splits, keys: dict):
    """The thief's surrogate, bought through the protected API served in ``work`` (its ledger and DAWN record file
    stay there), then laundered by the thief's removal attacks if it has any."""
    victim = cc.load_model(out / "models" / f"victim-{size}-{seed}.safetensors")
    thief = hyp["thieves"][kind]
    app, secrets, _ = _served(work, victim, keys, ("thief",))
    with serve_in_thread(app) as url:
        stolen = cc.steal(
            HttpOracle(url, api_key=secrets["thief"]),
            splits.attacker_pool,
            attack=thief["attack"],
            arch=thief.get("arch", victim.arch),
            params=thief.get("params"),
            budget=thief.get("budget"),
            config=cc.TrainConfig(seed=seed + 100, epochs=hyp["thief_epochs"]),
            progress=False,
        )
    surrogate = stolen.surrogate
    if thief.get("removal"):
        surrogate = cc.remove(surrogate, thief["removal"], splits, progress=False).model
    return surrogate


def innocent_task(out: Path, size: int, seed: int, arch: str, model_seed: int) -> dict:
    """One innocent against every model key, and against DAWN on each thief's records (read when the thieves are
    done): its DAWN and stack p-values are lists, one per thief."""
    splits = proof.splits_for(size, seed)
    model = proof.innocent_model(out / "models", arch, model_seed)
    keys = _keys(out, size, seed)
    row = {"size": size, "seed": seed, "arch": arch, "model_seed": model_seed, "acc": cc.accuracy(model, splits.test)}
    row["keys"] = {name: _verify(model, keys[name]) for name in MODEL_KEYS}
    dawn = [_verify(model, path) for path in sorted((out / "keys" / f"{size}-{seed}" / "records").glob("*.cckey"))]
    row["keys"]["dawn"] = {"p": [d["p"] for d in dawn], "queries": [d["queries"] for d in dawn]}
    row["keys"]["stack"] = {"p": [stack_p([row["keys"][k]["p"] for k in MODEL_KEYS] + [d["p"]]) for d in dawn]}
    return row


def roc_auc(positives: list[float], negatives: list[float]) -> float:
    """P(a surrogate's p-value is smaller than an innocent's), ties counting one half."""
    pairs = [(1.0 if p < n else 0.5 if p == n else 0.0) for p in positives for n in negatives]
    return sum(pairs) / len(pairs) if pairs else math.nan


def _flat(values) -> list:
    return [v for value in values for v in (value if isinstance(value, list) else [value])]


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    owners = [r for r in rows if "protect_cpu" in r]
    thieves = [r for r in rows if "thief" in r]
    innocents = [r for r in rows if "model_seed" in r]
    lines = [
        "| size | key | ROC AUC | surrogates proven at α | worst surrogate p | innocents accused | smallest innocent p "
        "| queries | generation (× one clean training) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    alpha = hyp["alpha"]
    for size in sorted({r["size"] for r in owners}):
        for key in KEYS:
            pos = [r["keys"][key]["p"] for r in thieves if r["size"] == size]
            neg = _flat(r["keys"][key]["p"] for r in innocents if r["size"] == size)
            if not pos:
                continue
            queries = max(_flat(r["keys"][key]["queries"] for r in thieves if r["size"] == size))
            gen = [r[f"{key}_cpu"] / r["clean_cpu"] for r in owners if r["size"] == size and f"{key}_cpu" in r]
            lines.append(
                f"| {size} | {key} | {roc_auc(pos, neg):.3f} | {sum(p <= alpha for p in pos)}/{len(pos)} "
                f"| {max(pos):.2g} | {sum(p <= alpha for p in neg)}/{len(neg)} | {min(neg, default=math.nan):.2g} "
                f"| {queries} | {', '.join(f'{g:.1f}' for g in gen) or '–'} |"
            )
    lines += [
        "",
        "| size | seed | victim acc | honest clients' acc (API) | falsified share (honest) "
        "| falsified share (thieves) | DAWN records per thief |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(owners, key=lambda r: (r["size"], r["seed"])):
        mine = [t for t in thieves if (t["size"], t["seed"]) == (r["size"], r["seed"])]
        shares = [t["falsified_share"] for t in mine]
        records = [t["keys"]["dawn"]["queries"] for t in mine]
        lines.append(
            f"| {r['size']} | {r['seed']} | {r['victim_acc']:.4f} | {r['honest_acc']:.4f} "
            f"| {r['falsified_share_honest']:.4f} | {proof.mean_std(shares) if shares else '–'} "
            f"| {proof.mean_std(records, '{:.0f}') if records else '–'} |"
        )
    lines += ["", "| size | seed | surrogate | accuracy | " + " | ".join(f"p {k}" for k in KEYS) + " |"]
    lines.append("|---|---|---|---|" + "---|" * len(KEYS))
    for r in sorted(thieves, key=lambda r: (r["size"], r["seed"], list(hyp["thieves"]).index(r["thief"]))):
        ps = " | ".join(f"{r['keys'][k]['p']:.2g}" for k in KEYS)
        lines.append(f"| {r['size']} | {r['seed']} | {r['thief']} | {r['acc']:.4f} | {ps} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/fingerprints"))
    ap.add_argument("--sizes", type=int, nargs="+", default=hyp["sizes"])
    ap.add_argument("--seeds", type=int, nargs="+", default=hyp["seeds"])
    ap.add_argument("--thieves", nargs="+", default=list(hyp["thieves"]), help="thief names (default: all)")
    ap.add_argument("--innocents", type=int, default=len(hyp["innocents"]["models"]), help="how many innocents")
    ap.add_argument("--workers", type=int, default=hyp["workers"])
    ap.add_argument("--table", action="store_true", help="print the table from the cached rows and stop")
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
        return
    # the cached rows of earlier invocations stay in the table, so the saved configuration lists their sizes and
    # seeds too
    config = args.out / "config.json"
    done = json.loads(config.read_text()) if config.exists() else {}
    sizes = sorted({*done.get("sizes", []), *args.sizes})
    seeds = sorted({*done.get("seeds", []), *args.seeds})
    hyp.update(sizes=sizes, seeds=seeds, workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(hyp, indent=1, default=str))
    owners = [(f"owner-{n}-{s}", owner_task, (n, s)) for n in args.sizes for s in args.seeds]
    proof.run(args.out, owners, 1)  # one at a time: each trains 24 ensemble models
    thieves = [
        (f"thief-{n}-{s}-{kind}".replace(" ", "_").replace("%", "pc"), thief_task, (n, s, kind))
        for n in args.sizes
        for s in args.seeds
        for kind in args.thieves
    ]
    proof.run(args.out, thieves, args.workers)
    # after the thieves: an innocent is verified against DAWN on every thief's records
    innocents = [
        (f"innocent-{n}-{s}-{arch}-{m}", innocent_task, (n, s, arch, m))
        for n in args.sizes
        for s in args.seeds
        for arch, m in hyp["innocents"]["models"][: args.innocents]
    ]
    proof.run(args.out, innocents, args.workers)
    print(table(args.out))


if __name__ == "__main__":
    os.environ.setdefault("COPYCATCH_PROGRESS", "0")
    torch.set_num_threads(1)
    main()
