"""Self-supervised encoders after extraction: MEA-Defender's encoder watermark against StolenEncoder and Hinton-style
thieves, beside independently trained encoders.

Per seed, on the encoder demo's split and recipe (``copycatch.bench.encoder_demo``'s default preset: Fashion-MNIST cut
to 8,000 training images, 4,000 of them the owner's; a width-8, 64-dimensional ``encoder-cnn9``; SimCLR for 10 epochs,
batch 256, Adam 2e-3): a clean SimCLR encoder and a watermarked one (``mea-defender-encoder`` with the demo's
verification sizes) are pre-trained on the owner's images. Four thieves query the watermarked encoder once per image
of their pool (3,600): StolenEncoder and the Hinton-style embedding thief, each into the victim's architecture and
into ``encoder-resnet``. Every encoder gets a linear probe trained on the owner's labels (accuracy on 1,000 test
images) and the key's verification (probe WSR and p, centroid WSR and p, the verdict at α). The innocents are SimCLR
encoders pre-trained on a thief's pool with their own seeds (``encoder-cnn9`` and ``encoder-resnet`` in turn), none
used to make any key; each is verified against every seed's key.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ssl_encoders.py --seeds 0 1 2 --innocents 10 --workers 2
    .venv/bin/python benchmarks/ssl_encoders.py --table

(Named ``ssl_encoders.py``, not ``ssl.py``: a script's folder comes first on the import path, and a file ``ssl.py``
there would stand in for the standard library's ``ssl`` module that torch imports.)

Models and keys are cached under --out (default bench-out/ssl-encoders), rows as JSON: a rerun continues where it
stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from proof import cached_model  # the model cache of the proof benchmark (safetensors, no pickle)

from copycatch.attacks.extraction import create_extraction_attack
from copycatch.bench.encoder_demo import PRESETS
from copycatch.core.key import Key
from copycatch.data.base import Splits, load_dataset, make_splits
from copycatch.models.base import create_for
from copycatch.models.io import load_model, save_model
from copycatch.models.simclr import evaluate_encoder, train_simclr
from copycatch.models.train import TrainConfig
from copycatch.oracles.embedding import EncoderOracle
from copycatch.schemes import create_scheme

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "preset": "default",  # the encoder demo's data, architecture, SimCLR recipe and verification sizes
    "victim_arch": "encoder-cnn9",
    "thieves": {  # one query per thief-pool image; the thief trains with the victim's recipe and its own seed
        "StolenEncoder, same arch": {"attack": "stolen-encoder", "arch": "encoder-cnn9"},
        "StolenEncoder, resnet": {"attack": "stolen-encoder", "arch": "encoder-resnet"},
        "Hinton-style, same arch": {"attack": "hinton-encoder", "arch": "encoder-cnn9"},
        "Hinton-style, resnet": {"attack": "hinton-encoder", "arch": "encoder-resnet"},
    },
    "innocent_archs": ["encoder-cnn9", "encoder-resnet"],
    "innocent_seed": 100,  # innocent i trains with seed 100 + i on the pool of split seed i mod 3
    "alpha": 1e-3,
}
PAPER = (  # MEA-Defender, Table 1, Fashion-MNIST SimCLR encoder (downstream accuracy, WSR)
    "victim 78.88 % / 100 %; Hinton-style extraction 78.40 % / 86.99 %; StolenEncoder 78.32 % / 93.29 %"
)


def _splits(seed: int) -> Splits:
    cfg = PRESETS[hyp["preset"]]
    name, options = cfg["data"]
    return make_splits(load_dataset(name, **options), seed=seed, max_train=cfg["max_train"])


def _config(seed: int) -> TrainConfig:
    return TrainConfig(seed=seed, **PRESETS[hyp["preset"]]["train"])


def _evaluate(model, splits, key, scheme, seed: int) -> dict[str, Any]:
    cfg = PRESETS[hyp["preset"]]
    test = splits.test.subset(torch.arange(min(cfg["eval"], len(splits.test))))
    quality = evaluate_encoder(model, splits.owner_train, test, hidden=None, seed=seed)
    out = {"linear_probe": quality["linear_probe_accuracy"]}
    if key is not None:
        evidence = scheme.verify(EncoderOracle(model), key, alpha=hyp["alpha"], progress=False)
        m = evidence.metrics
        out.update(
            verdict=evidence.verdict,
            p=evidence.p_value,
            probe_wsr=m["probe_wsr"],
            probe_p=m["probe_p"],
            centroid_wsr=m["centroid_wsr"],
            centroid_p=m["centroid_p"],
            queries=evidence.queries,
        )
    return out


def run_seed(seed: int, out: Path) -> dict[str, Any]:
    """The clean and watermarked encoders of one seed, the four thieves' surrogates, and their evaluation."""
    cfg = PRESETS[hyp["preset"]]
    splits = _splits(seed)
    scheme = create_scheme("mea-defender-encoder", **cfg["scheme"])
    models = out / "models"
    started = time.process_time()

    def clean_encoder():
        model = create_for(hyp["victim_arch"], splits, seed=seed, **cfg["arch"])
        train_simclr(model, splits.owner_train, _config(seed), progress=False, desc="clean")
        return model

    clean = cached_model(models / f"clean-{seed}.safetensors", clean_encoder)
    key_path = models / f"victim-{seed}.cckey"
    victim_path = models / f"victim-{seed}.safetensors"
    if victim_path.is_file() and key_path.is_file():
        victim, key = load_model(victim_path), Key.load(key_path)
    else:
        victim = create_for(hyp["victim_arch"], splits, seed=seed, **cfg["arch"])
        key = scheme.embed(victim, splits, train=_config(seed), progress=False).key
        save_model(victim, victim_path)
        key.save(key_path)
    rows = {
        "clean": _evaluate(clean, splits, key, scheme, seed),
        "victim": _evaluate(victim, splits, key, scheme, seed),
    }
    for i, (name, thief) in enumerate(hyp["thieves"].items()):

        def steal(thief=thief, i=i):
            surrogate = create_for(thief["arch"], splits, seed=seed + 1 + i, **cfg["arch"])
            attack = create_extraction_attack(thief["attack"])
            oracle = EncoderOracle(victim)
            return attack.run(
                oracle, splits.attacker_pool, surrogate, train=_config(seed + 1 + i), progress=False
            ).surrogate

        slug = name.lower().replace(", ", "-").replace(" ", "-")
        surrogate = cached_model(models / f"{slug}-{seed}.safetensors", steal)
        rows[name] = _evaluate(surrogate, splits, key, scheme, seed)
    return {"seed": seed, "rows": rows, "cpu_seconds": time.process_time() - started}


def run_innocent(index: int, seeds: list[int], out: Path) -> dict[str, Any]:
    """Innocent ``index``: SimCLR on a thief's pool with its own seed, verified against every seed's key."""
    cfg = PRESETS[hyp["preset"]]
    arch = hyp["innocent_archs"][index % len(hyp["innocent_archs"])]
    seed = hyp["innocent_seed"] + index
    pool_splits = _splits(index % 3)

    def innocent():
        model = create_for(arch, pool_splits, seed=seed, **cfg["arch"])
        train_simclr(model, pool_splits.attacker_pool, _config(seed), progress=False, desc="innocent")
        return model

    model = cached_model(out / "models" / f"innocent-{index}.safetensors", innocent)
    scheme = create_scheme("mea-defender-encoder", **cfg["scheme"])
    verdicts = {}
    for key_seed in seeds:
        splits = _splits(key_seed)
        key = Key.load(out / "models" / f"victim-{key_seed}.cckey")
        verdicts[str(key_seed)] = _evaluate(model, splits, key, scheme, key_seed)
    return {"index": index, "arch": arch, "seed": seed, "verdicts": verdicts}


def _task(kind: str, arg: int, seeds: list[int], out: str) -> tuple[str, int, dict[str, Any]]:
    torch.set_num_threads(1)
    row = run_seed(arg, Path(out)) if kind == "seed" else run_innocent(arg, seeds, Path(out))
    return kind, arg, row


def table(out: Path) -> str:
    seeds = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("seed-*.json"))]
    innocents = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("innocent-*.json"))]
    if not seeds:
        return "no rows yet"
    lines = [
        f"{len(seeds)} seed(s): {', '.join(str(s['seed']) for s in seeds)}; α = {hyp['alpha']:g}. Paper: {PAPER}.",
        "",
        "| encoder | linear probe (mean ± std) | probe WSR | probe p (worst seed) | centroid WSR | centroid p (worst "
        "seed) | proven |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in seeds[0]["rows"]:
        rows = [s["rows"][name] for s in seeds]
        acc = torch.tensor([r["linear_probe"] for r in rows])
        std = f" ± {acc.std():.3f}" if len(acc) > 1 else ""
        lines.append(
            f"| {name} | {acc.mean():.3f}{std} | {_mean(rows, 'probe_wsr')} | {max(r['probe_p'] for r in rows):.2g} "
            f"| {_mean(rows, 'centroid_wsr')} | {max(r['centroid_p'] for r in rows):.2g} "
            f"| {sum(r['verdict'] == 'stolen' for r in rows)}/{len(rows)} |"
        )
    if innocents:
        checks = [v for i in innocents for v in i["verdicts"].values()]
        accused = sum(v["verdict"] == "stolen" for v in checks)
        lines.append(
            f"| innocents ({len(innocents)}: {', '.join(sorted({i['arch'] for i in innocents}))}) | "
            f"{sum(v['linear_probe'] for v in checks) / len(checks):.3f} | {_mean(checks, 'probe_wsr')} | "
            f"min {min(v['probe_p'] for v in checks):.2g} | {_mean(checks, 'centroid_wsr')} | "
            f"min {min(v['centroid_p'] for v in checks):.2g} | {accused}/{len(checks)} accused |"
        )
    return "\n".join(lines)


def _mean(rows: list[dict[str, Any]], name: str) -> str:
    values = torch.tensor([float(r[name]) for r in rows])
    return f"{values.mean():.2f}" + (f" ± {values.std():.2f}" if len(values) > 1 else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--innocents", type=int, default=10, help="innocent encoders, each verified against every key")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench-out/ssl-encoders")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS), help="tiny: synthetic data, seconds")
    parser.add_argument("--table", action="store_true", help="print the table from the cached rows and stop")
    args = parser.parse_args()
    hyp["preset"] = args.preset
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    if not args.table:
        (out / "hyp.json").write_text(json.dumps({**hyp, "seeds": args.seeds, "innocents": args.innocents}, indent=2))
        started = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            # the seeds first: the innocents are verified against their keys
            for kind, todo in (
                ("seed", [s for s in args.seeds if not (out / "rows" / f"seed-{s}.json").is_file()]),
                ("innocent", list(range(args.innocents))),
            ):
                futures = [pool.submit(_task, kind, arg, args.seeds, str(out)) for arg in todo]
                for future in as_completed(futures):
                    kind, arg, row = future.result()
                    (out / "rows" / f"{kind}-{arg}.json").write_text(json.dumps(row, indent=2, default=float))
                    print(f"{kind} {arg} done at {time.perf_counter() - started:.0f} s", flush=True)
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
