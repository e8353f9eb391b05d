"""Why MEA-Defender's encoder watermark does not survive StolenEncoder: the measurements of docs/encoders.md.

The encoder demo's default preset (Fashion-MNIST, 4,000 owner images, width-8 64-dimensional ``encoder-cnn9``,
10 epochs; ``copycatch.bench.encoder_demo.PRESETS``): a watermarked victim (scheme parameters from ``--param``), a
thief (StolenEncoder into ``encoder-resnet`` unless told otherwise), optionally the innocent encoder (SimCLR on the
thief's pool) and an unwatermarked victim (SimCLR on the owner's images). For each encoder: linear and MLP probe
accuracy, both verification tests (WSR, p, the false-watermark families' rates). Then the diagnosis:

* the mean cosine between victim and surrogate embeddings on test images, the key's probe images, the true
  watermarks and each family of false watermarks;
* per family (and per group), the share of inputs each encoder puts nearer its target-class centroid than both
  pair-class centroids (the centroid test), and nearest of all ten;
* where each encoder puts the true watermarks: cosine to the target and source centroids, in its own centroid space
  and (the surrogate copies the victim's space) in the victim's;
* the victim's own watermark under a horizontal flip, a 2-pixel shift and the thief's augmentation;
* how far the thief's queries (pool images and two augmented views of each) are from the watermarks in pixels,
  against test images, and the victim-embedding cosine of each watermark to its nearest pool image.

``--oracle-wm N`` adds N true-rule mixes of the thief's own source-class images to its queries (a control: can the
surrogate learn the mark when asked); ``--extra-pool N`` adds N natural Fashion-MNIST training images the split
left out (more queries); ``--attack`` / ``--thief`` / ``--thief-epochs`` change the thief.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/encoder_transfer.py --tag defaults --innocent --clean
    ... --tag defaults --attack embedding-regression          # same victim (cached), a thief without augmentations
    ... --tag noeva --param eva_weight=0                      # another victim

Models (safetensors files) and keys are cached under --out by tag (the surrogate also by thief); rows are appended
to results.jsonl.
One process, one thread: about 2.5 minutes per new victim and thief on a CPU core.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from copycatch.attacks.extraction import create_extraction_attack
from copycatch.bench.encoder_demo import PRESETS, _splits
from copycatch.core.key import Key
from copycatch.data.base import TensorData, load_dataset, to_float
from copycatch.models.base import create_for
from copycatch.models.io import load_model, save_model
from copycatch.models.simclr import Augment, encode, evaluate_encoder, train_simclr
from copycatch.models.train import TrainConfig
from copycatch.oracles.embedding import EncoderOracle
from copycatch.schemes import create_scheme
from copycatch.schemes._mixers import ALL_MIXERS
from copycatch.schemes.mea_defender import FAMILIES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tag", required=True, help="names the victim (and its scheme parameters) in the cache")
    ap.add_argument("--param", action="append", default=[], help="scheme parameter name=json value (repeatable)")
    ap.add_argument("--thief", default="encoder-resnet")
    ap.add_argument("--attack", default="stolen-encoder")
    ap.add_argument("--thief-epochs", type=int, default=0, help="0: the victim's")
    ap.add_argument("--oracle-wm", type=int, default=0)
    ap.add_argument("--extra-pool", type=int, default=0)
    ap.add_argument("--innocent", action="store_true")
    ap.add_argument("--clean", action="store_true")
    ap.add_argument("--out", default="bench-out/encoder-transfer")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg, seed = PRESETS["default"], 0
    splits = _splits(cfg, seed, None)
    train = TrainConfig(seed=seed, **cfg["train"])
    params = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.param)}
    scheme = create_scheme("mea-defender-encoder", **{**cfg["scheme"], **params})
    started = time.perf_counter()

    def cached(name: str, arch: str, model_seed: int, make) -> torch.nn.Module:
        path = out_dir / f"{name}.safetensors"
        if path.exists():
            return load_model(path).eval()
        model = create_for(arch, splits, seed=model_seed, **cfg["arch"])
        made = make(model)  # a surrogate is returned; the others train the model in place
        model = made if isinstance(made, torch.nn.Module) else model
        save_model(model, path)
        return model

    key_path = out_dir / f"key_{args.tag}.cckey"
    victim = cached(f"victim_{args.tag}", "encoder-cnn9", seed, lambda m: _embed(scheme, m, splits, train, key_path))
    key = Key.load(key_path)
    scheme.params = scheme.params.for_modality(splits.modality)
    p = scheme.params

    pool, extra = splits.attacker_pool, None
    if args.oracle_wm:
        g = torch.Generator().manual_seed(5)
        xa, xb = pool.stored[pool.y == p.source_a], pool.stored[pool.y == p.source_b]
        ia, ib = (
            torch.randint(len(xa), (args.oracle_wm,), generator=g),
            torch.randint(len(xb), (args.oracle_wm,), generator=g),
        )
        make_watermark = scheme.watermark_maker(*splits.input_shape[-2:], None, None, modality="image")
        extra = (make_watermark(to_float(xa[ia]), to_float(xb[ib])) * 255).round().clamp(0, 255).to(torch.uint8)
    if args.extra_pool:
        full = load_dataset("fashion-mnist").train
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
        extra = full.subset(perm[cfg["max_train"] : cfg["max_train"] + args.extra_pool]).stored
    if extra is not None:
        pool = TensorData(
            torch.cat([pool.stored, extra]), torch.cat([pool.y, torch.zeros(len(extra), dtype=pool.y.dtype)])
        )
    thief_train = train.replace(seed=seed + 1, **({"epochs": args.thief_epochs} if args.thief_epochs else {}))
    thief_tag = "_".join(
        str(x)
        for x in (
            args.tag,
            args.thief,
            args.attack,
            f"e{thief_train.epochs}",
            f"owm{args.oracle_wm}",
            f"x{args.extra_pool}",
        )
    )

    def steal(model):
        attack = create_extraction_attack(args.attack)
        return attack.run(EncoderOracle(victim), pool, model, train=thief_train, progress=False).surrogate

    models = {"victim": victim, "stolen": cached(f"stolen_{thief_tag}", args.thief, seed + 1, steal)}
    if args.innocent:
        models["innocent"] = cached(
            "innocent",
            "encoder-cnn9",
            seed + 2,
            lambda m: train_simclr(m, splits.attacker_pool, train.replace(seed=seed + 2)),
        )
    if args.clean:
        models["clean"] = cached("clean", "encoder-cnn9", seed, lambda m: train_simclr(m, splits.owner_train, train))
    row: dict = {"tag": args.tag, "params": params, "thief": thief_tag}
    test = splits.test.subset(torch.arange(cfg["eval"]))
    for name, model in models.items():
        quality = evaluate_encoder(model, splits.owner_train, test, seed=seed)
        m = scheme.verify(EncoderOracle(model), key, alpha=1e-3, progress=False).metrics
        row[name] = {
            "linear": quality["linear_probe_accuracy"],
            "mlp": quality["mlp_probe_accuracy"],
            **{k: m[k] for k in ("probe_wsr", "probe_p", "centroid_wsr", "centroid_p", "wfpr")},
            **{k: m[k] for k in ("shared_class_rate", "false_pair_rate", "max_false_rate")},
        }
        print(name, _fmt(row[name]), flush=True)
    row.update(_diagnose(models, key, splits, p))
    row["seconds"] = round(time.perf_counter() - started, 1)
    with open(out_dir / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _embed(scheme, model, splits, train, key_path: Path) -> None:
    scheme.embed(model, splits, train=train, progress=False).key.save(key_path)


def _diagnose(models: dict, key: Key, splits, p) -> dict:
    row: dict = {}
    vx, group = to_float(key["verify_x"]), key["verify_group"].long()
    family, pairs = key["group_family"].long()[group], key["group_pair"].long()[group]
    probe_x, probe_y = to_float(key["probe_x"]), key["probe_y"].long()
    test = splits.test.subset(torch.arange(1000)).stored
    z_verify = {n: encode(m, vx) for n, m in models.items()}
    z_probe = {n: encode(m, probe_x) for n, m in models.items()}
    z_test = {n: encode(m, test) for n, m in models.items()}
    centroids = {
        n: torch.stack([z[probe_y == c].mean(0) for c in range(int(probe_y.max()) + 1)]) for n, z in z_probe.items()
    }

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a, b, dim=1).mean())

    present = [f for i, f in enumerate(FAMILIES) if (family == i).any()]
    fidelity = {"test": cos(z_test["victim"], z_test["stolen"]), "probe": cos(z_probe["victim"], z_probe["stolen"])}
    fidelity |= {
        f: cos(z_verify["victim"][family == FAMILIES.index(f)], z_verify["stolen"][family == FAMILIES.index(f)])
        for f in present
    }
    print("cos(victim, stolen):", _fmt(fidelity))
    row["cosine_victim_stolen"] = fidelity

    rows = torch.arange(len(vx))
    for name in models:
        sims = F.normalize(z_verify[name], dim=1) @ F.normalize(centroids[name], dim=1).T
        win = sims[:, p.target] > torch.maximum(sims[rows, pairs[:, 0]], sims[rows, pairs[:, 1]])
        top = sims.argmax(1) == p.target
        by_family = {
            f: (float(win[family == i].float().mean()), float(top[family == i].float().mean()))
            for i, f in enumerate(FAMILIES)
            if f in present
        }
        by_group = {
            f"{ALL_MIXERS[int(mx)]}{tuple(pr.tolist())}": float(win[group == g].float().mean())
            for g, (mx, pr) in enumerate(zip(key["group_mixer"], key["group_pair"]))
        }
        print(f"{name}: target-centroid rate by family (centroid test, nearest of all):", _fmt(by_family))
        print("  by group:", _fmt(by_group))
        row[f"families_{name}"], row[f"groups_{name}"] = by_family, by_group

    true_wm = family == 0
    for name in models:
        for space in ("own", "victim") if name == "stolen" else ("own",):
            c = F.normalize(centroids[name if space == "own" else "victim"], dim=1)
            sims = F.normalize(z_verify[name][true_wm], dim=1) @ c.T
            place = {
                "cos_target": float(sims[:, p.target].mean()),
                "cos_source_a": float(sims[:, p.source_a].mean()),
                "cos_source_b": float(sims[:, p.source_b].mean()),
                "nearest_class_counts": torch.bincount(sims.argmax(1), minlength=len(c)).tolist(),
            }
            print(f"{name}: true watermarks in the {space} centroids:", _fmt(place))
            row[f"placement_{name}_{space}"] = place
    cv = F.normalize(centroids["victim"], dim=1)
    mid = F.normalize(cv[p.source_a] + cv[p.source_b], dim=0)
    geometry = {
        "cos(t,a)": float(cv[p.target] @ cv[p.source_a]),
        "cos(t,b)": float(cv[p.target] @ cv[p.source_b]),
        "cos(a,b)": float(cv[p.source_a] @ cv[p.source_b]),
        "cos(t,mid(a,b))": float(cv[p.target] @ mid),
    }
    print("victim centroid geometry:", _fmt(geometry))
    row["geometry"] = geometry

    torch.manual_seed(3)
    augment, x_wm = Augment(), vx[true_wm]

    def to_target(x: torch.Tensor) -> float:
        return float(((F.normalize(encode(models["victim"], x), dim=1) @ cv.T).argmax(1) == p.target).float().mean())

    robust = {
        "plain": to_target(x_wm),
        "flip": to_target(x_wm.flip(-1)),
        "shift 2px": to_target(torch.roll(x_wm, 2, -1)),
        "thief augmentation": to_target(augment(x_wm)),
    }
    print("victim: true watermarks nearest the target centroid, transformed:", _fmt(robust))
    row["victim_watermark_under_transforms"] = robust

    pool = to_float(splits.attacker_pool.stored)
    views = torch.cat([augment(pool) for _ in range(2)]).flatten(1)

    def nearest(x: torch.Tensor, ref: torch.Tensor) -> float:
        return float(torch.cdist(x.flatten(1), ref).min(1).values.median())

    distance = {
        "test→pool": nearest(to_float(test[:500]), pool.flatten(1)),
        "watermark→pool": nearest(x_wm, pool.flatten(1)),
        "watermark→pool views": nearest(x_wm, views),
        **{f"{f}→pool": nearest(vx[family == FAMILIES.index(f)], pool.flatten(1)) for f in present[1:]},
    }
    print("median pixel L2 distance to the nearest thief query:", _fmt(distance))
    z_pool = F.normalize(encode(models["victim"], splits.attacker_pool.stored), dim=1)
    embedded = {
        "watermark": float((F.normalize(z_verify["victim"][true_wm], dim=1) @ z_pool.T).max(1).values.median()),
        "test": float((F.normalize(z_test["victim"], dim=1) @ z_pool.T).max(1).values.median()),
    }
    print("victim embedding: median cosine to the nearest pool image:", _fmt(embedded))
    row["pixel_distance"], row["embedding_nearest_pool"] = distance, embedded
    return row


def _fmt(d: dict) -> str:
    def one(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return f"({', '.join(one(x) for x in v)})" if isinstance(v, tuple) else str(v)

    return ", ".join(f"{k} {one(v)}" for k, v in d.items())


if __name__ == "__main__":
    main()
