"""Forged keys against key commitments: the p-value a forged key reaches, and whether commitments refuse it.

The owner embeds a margin watermark in a victim with a secret key seed and publishes the key's commitment (its id
is registered in a timestamp log that stands for an external timestamp authority). Then the suspects appear: that
victim (the forger did not train it) and an innocent model (trained on the thief's pool with true labels). A forger
who holds a suspect builds a key of each forgery's format from it (copycatch.attacks.forgery) and claims the
suspect. Per forgery, target and forger seed:

* without checks: ``cc.verify(..., commitment_checks=False)``, the p-value and verdict, as verification ran before
  commitments existed;
* with checks: ``cc.verify(..., suspect_since=<the suspect's first appearance>)`` under each thing the forger can
  show: no commitment; the owner's published commitment (for another key); a commitment of the forged key made
  now (after the suspect appeared); the same with its ``created`` time edited to before the suspect. The last one
  passes the tool's check of the stated time, so it is then judged by the commitment id's time in the timestamp
  log, which the forger cannot backdate. A claim counts as accepted with checks only if it passes both.

The owner's genuine key is verified the same way (a control: it must stay admissible and prove the victim).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trust.py           # → bench-out/trust/{config,results}.json
    .venv/bin/python benchmarks/trust.py --table                      # the table from the saved results
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import copycatch as cc
from copycatch.attacks.forgery import forge
from copycatch.core.commitment import Commitment, CommitmentRefused, commitment_path
from copycatch.data.base import TensorData
from copycatch.schemes.commitment import commit_key

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "data": "fashion-mnist",
    "split_seed": 0,
    "owner_images": 10000,  # owner_train subsampled (seeded); holdout, thief's pool and test stay the standard ones
    "pool_images": 10000,  # the innocent model's training images, from the thief's pool
    "owner": {"arch": "cnn-small", "epochs": 4, "batch_size": 128, "lr": 1e-3, "seed": 0},
    "victim_scheme": "margin",  # the owner's watermark (its defaults: 100 triggers, λ from the data size)
    "innocent": {"arch": "cnn-small", "epochs": 3, "seed": 300},
    "forger_images": 3000,  # the forger's own labelled inputs: the first images of the test split
    "forgeries": {  # forgery → its parameters (each makes a key of its scheme's format)
        "trigger-set": {"n_triggers": 100},
        "adversarial-margin": {"n_triggers": 100, "eps": 0.2, "steps": 40, "step_size": 0.01},
        "adversarial-frontier": {"key_length": 100, "n_control": 50, "eps": 0.2, "steps": 40, "step_size": 0.01},
        "mea-combined": {"n_verify": 200, "n_false_per_group": 40, "false_pairs": 6},
    },
    "forger_seeds": [0, 1],
    "alpha": 1e-3,
    "owner_key_seed_label": "trust-benchmark/owner",  # the owner's secret key seed = SHA-256 of this (reproducible)
}

STRATEGIES = ("no commitment", "owner's commitment", "committed after the suspect", "backdated commitment")


class TimestampLog:
    """Stands for an external timestamp authority: the time each commitment id was first registered."""

    def __init__(self) -> None:
        self.times: dict[str, dt.datetime] = {}

    def register(self, commitment: Commitment) -> None:
        self.times.setdefault(commitment.id, dt.datetime.now(dt.timezone.utc))

    def before(self, commitment: Commitment, when: dt.datetime) -> bool:
        return commitment.id in self.times and self.times[commitment.id] < when


def load_splits():
    full = cc.load_splits(hyp["data"], seed=hyp["split_seed"])
    gen = torch.Generator().manual_seed(hyp["split_seed"] + 10_000)
    owner = full.owner_train.subset(torch.randperm(len(full.owner_train), generator=gen)[: hyp["owner_images"]])
    pool = full.attacker_pool.subset(torch.randperm(len(full.attacker_pool), generator=gen)[: hyp["pool_images"]])
    return dataclasses.replace(full, owner_train=owner, attacker_pool=pool)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def verdict(suspect, key, **checks) -> dict:
    """The verification's p-value and verdict, or the refusal's reason."""
    try:
        run = cc.verify(suspect, key, sequential=False, alpha=hyp["alpha"], **checks)
    except CommitmentRefused as exc:
        return {"refused": True, "reason": str(exc)}
    return {"refused": False, "p": run.p_value, "verdict": run.verdict}


def with_checks(suspect, key, owner_commitment: Commitment, since: dt.datetime, log: TimestampLog) -> dict:
    """The forged claim under each thing the forger can show (the module docstring); accepted only if the tool
    accepts it and the commitment id's registered time is before the suspect appeared."""
    own = commit_key(key)  # made now, for the model the forger claims (the target itself)
    log.register(own)
    backdated = Commitment(dict(own.record, created=(since - dt.timedelta(days=30)).isoformat(timespec="seconds")))
    log.register(backdated)  # registered now: the log, unlike the record, cannot be backdated
    shown = {
        "no commitment": None,
        "owner's commitment": owner_commitment,
        "committed after the suspect": own,
        "backdated commitment": backdated,
    }
    out = {}
    for strategy, commitment in shown.items():
        tool = verdict(suspect, key, commitments=[commitment] if commitment else None, suspect_since=since)
        stamped = commitment is not None and log.before(commitment, since)
        out[strategy] = {**tool, "timestamp_before_suspect": stamped, "accepted": not tool["refused"] and stamped}
    return out


def run(out: Path) -> dict:
    start = time.perf_counter()
    splits = load_splits()
    log = TimestampLog()
    owner = hyp["owner"]
    config = cc.TrainConfig(epochs=owner["epochs"], batch_size=owner["batch_size"], lr=owner["lr"], seed=owner["seed"])
    key_seed = hashlib.sha256(hyp["owner_key_seed_label"].encode()).hexdigest()
    key_path = out / "owner" / "victim.cckey"
    embedding = cc.embed(
        hyp["victim_scheme"],
        splits,
        arch=owner["arch"],
        config=config,
        key_path=key_path,
        key_seed=key_seed,
        max_cost=None,
        progress=False,
    )
    owner_commitment = Commitment.load(commitment_path(key_path))
    log.register(owner_commitment)  # the owner timestamps the commitment when the key is made
    victim = embedding.victim
    innocent_cfg = hyp["innocent"]
    innocent = cc.train(
        innocent_cfg["arch"],
        splits,
        on="attacker_pool",
        config=cc.TrainConfig(epochs=innocent_cfg["epochs"], seed=innocent_cfg["seed"]),
        progress=False,
    )
    time.sleep(1.5)  # commitment times have a resolution of one second
    appeared = now()  # both suspects are published: every forgery comes after this
    time.sleep(1.5)
    targets = {"victim (forger did not train it)": victim, "innocent model": innocent}
    forger_data = TensorData(splits.test.x[: hyp["forger_images"]], splits.test.y[: hyp["forger_images"]])
    rows = []
    for target_name, target in targets.items():
        genuine = {
            "without": verdict(target, key_path, commitment_checks=False),
            "with": verdict(target, key_path, suspect_since=appeared),
        }
        rows.append({"forgery": "(owner's genuine margin key)", "target": target_name, **genuine})
        for name, params in hyp["forgeries"].items():
            for seed in hyp["forger_seeds"]:
                t = time.perf_counter()
                key = forge(name, target, forger_data, seed=seed, **params)
                row = {"forgery": name, "key_format": key.scheme, "target": target_name, "seed": seed}
                row["forge_seconds"] = time.perf_counter() - t
                row["without"] = verdict(target, key, commitment_checks=False)
                row["with"] = with_checks(target, key, owner_commitment, appeared, log)
                rows.append(row)
                print(f"{name} on {target_name}, seed {seed}: p = {row['without']['p']:.3g}", flush=True)
    return {
        "rows": rows,
        "accuracy": {"victim": cc.accuracy(victim, splits.test), "innocent": cc.accuracy(innocent, splits.test)},
        "suspects_appeared": appeared.isoformat(),
        "owner_commitment": owner_commitment.record | {"id": owner_commitment.id},
        "seconds": time.perf_counter() - start,
    }


def _p_cell(rows: list[dict]) -> str:
    low, high = (f"{f(r['without']['p'] for r in rows):.2g}" for f in (min, max))
    return high if low == high else f"{low} – {high}"


def table(results: dict) -> str:
    """One row per forgery and target (forger seeds pooled); refusals under each thing the forger can show."""
    lines = [
        "| forgery → key format | target | p without checks | stolen without checks | refused: no commitment "
        "| refused: owner's commitment shown | refused: own commitment, made after the suspect "
        "| own commitment, backdated: refused by the tool / by its timestamp | accepted with checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in results["rows"]:
        groups.setdefault((row["forgery"], row["target"]), []).append(row)
    for (forgery, target), rows in groups.items():
        n = len(rows)
        stolen = sum(r["without"]["verdict"] == "stolen" for r in rows)
        if "key_format" not in rows[0]:  # the genuine key: verified once with the checks, its own commitment
            w = rows[0]["with"]
            shown = "refused" if w["refused"] else f"admissible, p = {w['p']:.2g} ({w['verdict']})"
            lines.append(f"| {forgery} | {target} | {_p_cell(rows)} | {stolen}/{n} | {shown} | – | – | – | – |")
            continue
        cells = [f"{sum(r['with'][s]['refused'] for r in rows)}/{n}" for s in STRATEGIES[:3]]
        back = [r["with"]["backdated commitment"] for r in rows]
        stamp = sum(not b["timestamp_before_suspect"] for b in back)
        cells.append(f"{sum(b['refused'] for b in back)}/{n} / {stamp}/{n}")
        accepted = sum(any(r["with"][s]["accepted"] for s in STRATEGIES) for r in rows)
        lines.append(
            f"| {forgery} → {rows[0]['key_format']} | {target} | {_p_cell(rows)} | {stolen}/{n} | "
            + " | ".join(cells)
            + f" | {accepted}/{n} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-out/trust")
    parser.add_argument("--table", action="store_true", help="print the table from the saved results and stop")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(json.loads((out / "results.json").read_text())))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))  # the benchmark's budget: 2 cores
    config = {
        "hyp": hyp,
        "versions": {"copycatch": cc.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    results = run(out)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(
        f"\nvictim accuracy {results['accuracy']['victim']:.4f}, innocent {results['accuracy']['innocent']:.4f}, "
        f"{results['seconds']:.0f} s\n"
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
