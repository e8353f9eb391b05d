"""DAWN at the API: what it costs honest clients, and whether the thieves' surrogates carry the wrong labels.

Per seed: the clean owner model of ``proof.py`` (cnn-small, 10 epochs on 10,000 Fashion-MNIST owner images, shared
with it through --models) is served behind DAWN's post-processor (copycatch's in-process oracle: the same
``Dawn.protect`` the HTTP server applies). Each kind of thief queries the API once per attacker-pool image and
trains its surrogate on the answers; the inputs that thief asked and DAWN falsified (the records the server would
write for that client) become the verification key (``Dawn.with_records``, which re-checks every record against the
secret), and the surrogate is verified on them. The 20 innocent models of ``proof.py`` (true labels on the same
pool) are verified against every thief's records. Reported: the falsified share of answers, the honest clients'
accuracy through the API (the test split), records per thief, the surrogate's watermark accuracy and exact p-value.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dawn.py --seeds 0 1
    .venv/bin/python benchmarks/dawn.py --table

Rows are cached under --out (default bench-out/dawn); models are shared with proof.py (--models).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import proof  # the owner recipe, the split, the innocents and the model cache of the proof benchmark

import copycatch as cc
from copycatch.oracles.base import query_all
from copycatch.oracles.http import HttpOracle
from copycatch.schemes.dawn import find_perturbations
from copycatch.serve import ServeConfig, create_app, new_key, serve_in_thread
from copycatch.serve.dawn_records import client_records

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "size": 10000,  # owner_train images (proof.py's owner recipe)
    "seeds": [0, 1, 2],
    "dawn": {},  # DAWN parameters beyond the defaults (fraction 0.005)
    "thieves": {  # one query per attacker-pool image (27,000), 20 epochs, proof.py's thief recipe
        "soft, same arch": {"attack": "soft-label"},
        "soft, mlp": {"attack": "soft-label", "arch": "mlp"},
        "hard labels": {"attack": "hard-label"},
    },
    "http": False,  # True: through `copycatch serve`'s app over loopback HTTP (ledger + DAWN record file)
    "alpha": 1e-3,
}


def owner_and_key(models: Path, seed: int, params: dict):
    splits = proof.splits_for(hyp["size"], seed)
    victim = proof.cached_model(
        models / f"clean-{hyp['size']}-{seed}.safetensors",
        lambda: cc.train("cnn-small", splits, config=proof.owner_config(seed), progress=False),
    )
    embedding = cc.embed("dawn", splits, model=victim, params=params, config=proof.owner_config(seed), progress=False)
    return splits, victim, embedding.key


def steal_in_process(out: Path, seed: int, kind: str, splits, victim, key) -> tuple:
    """The API as copycatch's in-process oracle: the records come from the post-processor itself."""
    scheme = cc.scheme_for_key(key)
    api = scheme.protect(cc.ModelOracle(victim), key)
    honest_acc = float((query_all(api, splits.test.x).argmax(1) == splits.test.y).float().mean())
    (dawn,) = find_perturbations(api)
    honest_falsified, honest_answered = dawn.falsified, dawn.answered
    stolen = steal(api, kind, seed, splits, victim)
    records = dawn.records[honest_falsified:]  # the thief's records only (the honest test queries came first)
    thief_key = scheme.with_records(
        key, [r.x for r in records], [r.owner for r in records], [r.wrong for r in records], source=kind
    )
    shares = (honest_falsified / honest_answered, len(records) / (dawn.answered - honest_answered))
    return stolen, thief_key, honest_acc, shares


def steal_over_http(out: Path, seed: int, kind: str, splits, victim, key) -> tuple:
    """The API as ``copycatch serve`` runs it (loopback HTTP, API keys, ledger, DAWN record file): an honest client
    asks the test split, the thief its pool; the thief's records are what ``copycatch key dawn-records`` joins."""
    work = out / "http" / f"{re.sub('[^a-z0-9]+', '-', kind)}-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key_path, keyring, ledger = work / "dawn.cckey", work / "api-keys.json", work / "ledger.jsonl"
    key.save(key_path)
    secrets = {client: new_key(keyring, client) for client in ("honest", "thief")}
    app = create_app(victim, ServeConfig(ledger=str(ledger)), key=str(key_path), keyring=str(keyring))
    with serve_in_thread(app) as url:
        honest = HttpOracle(url, api_key=secrets["honest"])
        honest_acc = float((query_all(honest, splits.test.x).argmax(1) == splits.test.y).float().mean())
        stolen = steal(HttpOracle(url, api_key=secrets["thief"]), kind, seed, splits, victim)
    found = {client: client_records(ledger, client) for client in secrets}
    thief = found["thief"]
    thief_key = cc.scheme_for_key(key).with_records(key, thief.x, thief.owner, thief.wrong, source=f"http {kind}")
    shares = tuple(len(found[c].x) / found[c].distinct for c in ("honest", "thief"))
    return stolen, thief_key, honest_acc, shares


def steal(api, kind: str, seed: int, splits, victim):
    thief = hyp["thieves"][kind]
    return cc.steal(
        api,
        splits.attacker_pool,
        attack=thief["attack"],
        arch=thief.get("arch", victim.arch),
        config=cc.TrainConfig(seed=seed + 100, epochs=proof.hyp["thief"]["epochs"]),
        progress=False,
    )


def thief_task(out: Path, models: Path, seed: int, kind: str) -> dict:
    splits, victim, key = owner_and_key(models, seed, dict(hyp["dawn"]))
    serve = steal_over_http if hyp["http"] else steal_in_process
    stolen, thief_key, honest_acc, (honest_share, thief_share) = serve(out, seed, kind, splits, victim, key)
    evidence = cc.verify(stolen.surrogate, thief_key, sequential=False, alpha=hyp["alpha"]).evidences[0]
    innocents = {}
    for arch, s in proof.hyp["innocents"]["models"]:
        model = proof.innocent_model(models, arch, s)
        innocents[f"{arch}-{s}"] = cc.verify(model, thief_key, sequential=False, alpha=hyp["alpha"]).p_value
    return {
        "seed": seed,
        "thief": kind,
        "clean_acc": cc.accuracy(victim, splits.test),
        "honest_acc": honest_acc,
        "served": "http" if hyp["http"] else "in-process",
        "falsified_share_honest": honest_share,
        "falsified_share_thief": thief_share,
        "records": evidence.metrics["records"],
        "surrogate_acc": cc.accuracy(stolen.surrogate, splits.test),
        "watermark_accuracy": evidence.metrics["watermark_accuracy"],
        "surrogate_p": evidence.p_value,
        "innocent_p_min": min(innocents.values()),
        "innocents_accused": sum(p <= hyp["alpha"] for p in innocents.values()),
        "innocents": innocents,
    }


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    lines = [
        "| thief | seeds | clean acc | honest clients' acc (API) | falsified share | records "
        "| surrogate acc | watermark acc | surrogate p (worst seed) | proven (p ≤ α) "
        "| innocents accused / verified | innocent p (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in hyp["thieves"]:
        got = [r for r in rows if r["thief"] == kind]
        if not got:
            continue

        def col(name: str, fmt: str = "{:.4f}", got: list = got) -> str:
            return proof.mean_std([r[name] for r in got], fmt)

        proven = sum(r["surrogate_p"] <= hyp["alpha"] for r in got)
        accused = sum(r["innocents_accused"] for r in got)
        verified = sum(len(r["innocents"]) for r in got)
        lines.append(
            f"| {kind} | {len(got)} | {col('clean_acc')} | {col('honest_acc')} | {col('falsified_share_thief')} "
            f"| {col('records', '{:.0f}')} | {col('surrogate_acc')} | {col('watermark_accuracy', '{:.2f}')} "
            f"| {max(r['surrogate_p'] for r in got):.2g} | {proven}/{len(got)} | {accused}/{verified} "
            f"| {min(r['innocent_p_min'] for r in got):.2g} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--thieves", nargs="*", default=None, choices=list(hyp["thieves"]))
    parser.add_argument("--dawn", type=json.loads, default=None, metavar="JSON", help="DAWN parameters")
    parser.add_argument("--out", default="bench-out/dawn")
    parser.add_argument("--models", default="bench-out/proof/models", help="proof.py's model cache (shared)")
    parser.add_argument("--http", action="store_true", help="serve over loopback HTTP (ledger, record file)")
    parser.add_argument("--table", action="store_true", help="print the table from the cached rows and stop")
    args = parser.parse_args()
    out, models = Path(args.out), Path(args.models)
    hyp["seeds"] = args.seeds or hyp["seeds"]
    hyp["dawn"] = args.dawn or hyp["dawn"]
    hyp["http"] = args.http
    if args.thieves:
        hyp["thieves"] = {k: v for k, v in hyp["thieves"].items() if k in args.thieves}
    if not args.table:
        (out / "rows").mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"dawn.py": hyp, "proof.py": proof.hyp}, indent=1))
        for seed in hyp["seeds"]:
            for kind in hyp["thieves"]:
                path = out / "rows" / f"{re.sub('[^a-z0-9]+', '-', kind)}-{seed}.json"
                if path.exists():
                    continue
                row = thief_task(out, models, seed, kind)
                path.write_text(json.dumps(row, indent=1))
                print(
                    f"done {kind} seed {seed}: records {row['records']}, watermark acc "
                    f"{row['watermark_accuracy']:.2f}, p {row['surrogate_p']:.3g}, innocents accused "
                    f"{row['innocents_accused']}",
                    flush=True,
                )
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
