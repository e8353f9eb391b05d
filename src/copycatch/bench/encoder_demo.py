"""The encoder story end to end: a watermarked SimCLR encoder is served, stolen with StolenEncoder, and the theft
proved from the stolen encoder's embeddings, while an independently trained encoder is cleared.

Steps (:func:`run_encoder_demo`): split Fashion-MNIST (owner / holdout / thief pool / test); pre-train the owner's
encoder with SimCLR and MEA-Defender's encoder watermark (:mod:`copycatch.schemes.mea_defender_encoder`); serve it as
an embedding oracle with a query budget (in process, or over HTTP with ``http=True``:
:mod:`copycatch.serve.embedding`); steal it with StolenEncoder into a surrogate of another architecture; pre-train an
innocent encoder with SimCLR on the thief's pool; report every encoder's downstream accuracy (linear probe and MLP
head on owner labels) and the verification of the stolen and the innocent encoder.

The default preset takes about four minutes on two CPU cores (228 s measured, over HTTP); the ``tiny`` preset runs
on synthetic 8×8 data in seconds (the tests).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..attacks.extraction import create_extraction_attack
from ..core.evidence import Evidence
from ..data.base import Splits, load_dataset, make_splits
from ..models.base import Classifier, create_for
from ..models.simclr import encode, evaluate_encoder, train_simclr
from ..models.train import TrainConfig
from ..oracles.base import Oracle
from ..oracles.embedding import EncoderOracle, HttpEncoderOracle
from ..schemes import create_scheme

# (data set, its options, max_train, encoder widths, training, scheme parameters, thief budget, evaluation sizes)
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "data": ("fashion-mnist", {}),
        "max_train": 8000,
        "arch": {"width": 8, "dim": 64},
        "train": {"epochs": 10, "batch_size": 256, "lr": 2e-3},
        # a smaller verification set than the scheme's defaults: 2,600 queries per suspect, the probe images included
        "scheme": {"probe_per_class": 100, "n_verify": 500, "n_false_per_group": 50},
        "eval": 1000,
    },
    "tiny": {
        "data": ("synthetic", {"n": 1200, "num_classes": 4, "size": 8}),
        "max_train": None,
        "arch": {"width": 4, "dim": 16},
        "train": {"epochs": 4, "batch_size": 64},
        "scheme": {"n_verify": 100, "n_false_per_group": 30, "probe_per_class": 20},
        "eval": 200,
    },
}


def run_encoder_demo(
    *,
    preset: str = "default",
    victim_arch: str = "encoder-cnn9",
    thief_arch: str = "encoder-resnet",
    attack: str = "stolen-encoder",
    budget: int | None = None,
    alpha: float = 1e-3,
    seed: int = 0,
    http: bool = False,
    data_dir: str | None = None,
    progress: bool | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Run the story and return its numbers (and print them when ``echo``); ``budget`` None lets the thief query
    its whole pool once."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    started = time.perf_counter()
    timings: dict[str, float] = {}
    splits = _splits(cfg, seed, data_dir)
    train = TrainConfig(seed=seed, **cfg["train"])
    scheme = create_scheme("mea-defender-encoder", **cfg["scheme"])

    t = time.perf_counter()
    victim = create_for(victim_arch, splits, seed=seed, **cfg["arch"])
    embedding = scheme.embed(victim, splits, train=train, progress=progress)
    timings["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    with _served(victim, budget, http) as oracle:
        thief = create_for(thief_arch, splits, seed=seed + 1, **cfg["arch"])
        stolen = create_extraction_attack(attack, budget=budget).run(
            oracle, splits.attacker_pool, thief, train=train.replace(seed=seed + 1), progress=progress
        )
    timings["steal"] = time.perf_counter() - t

    t = time.perf_counter()
    innocent = create_for(victim_arch, splits, seed=seed + 2, **cfg["arch"])
    train_simclr(innocent, splits.attacker_pool, train.replace(seed=seed + 2), progress=progress, desc="innocent")
    timings["innocent"] = time.perf_counter() - t

    t = time.perf_counter()
    test = splits.test.subset(torch.arange(min(cfg["eval"], len(splits.test))))
    models = {"victim": victim, "stolen": stolen.surrogate, "innocent": innocent}
    quality = {name: evaluate_encoder(m, splits.owner_train, test, seed=seed) for name, m in models.items()}
    fidelity = {name: _fidelity(victim, m, test.stored) for name, m in models.items() if name != "victim"}
    verdicts = {
        name: scheme.verify(EncoderOracle(models[name]), embedding.key, alpha=alpha, progress=progress)
        for name in ("victim", "stolen", "innocent")
    }
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    result = {
        "preset": preset,
        "data": splits.dataset,
        "split": splits.summary(),
        "archs": {"victim": victim_arch, "thief": thief_arch},
        "attack": attack,
        "queries": stolen.queries,
        "transport": "http" if http else "in-process",
        "quality": quality,
        "fidelity_cosine": fidelity,
        "verification": {name: _summary(ev) for name, ev in verdicts.items()},
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "threads": torch.get_num_threads(),
    }
    if echo:
        print(format_encoder_demo(result))
    return result


def _splits(cfg: dict[str, Any], seed: int, data_dir: str | None) -> Splits:
    name, options = cfg["data"]
    return make_splits(load_dataset(name, data_dir=data_dir, **options), seed=seed, max_train=cfg["max_train"])


@contextlib.contextmanager
def _served(victim: Classifier, budget: int | None, http: bool) -> Iterator[Oracle]:
    """The victim as the thief sees it: an embedding oracle with the budget, in process or over HTTP."""
    if not http:
        yield EncoderOracle(victim, budget=budget)
        return
    from ..serve import ServeConfig, serve_in_thread
    from ..serve.embedding import create_embedding_app

    config = ServeConfig(budget=str(budget) if budget is not None else None, max_batch=256)
    with serve_in_thread(create_embedding_app(victim, config)) as url:
        yield HttpEncoderOracle(url, budget=budget)


def _fidelity(victim: Classifier, other: Classifier, x: torch.Tensor) -> float:
    """Mean cosine similarity of two encoders' embeddings of ``x``."""
    return float(F.cosine_similarity(encode(victim, x), encode(other, x), dim=1).mean())


def _summary(evidence: Evidence) -> dict[str, Any]:
    m = evidence.metrics
    return {
        "verdict": evidence.verdict,
        "p_value": evidence.p_value,
        "probe_wsr": m["probe_wsr"],
        "probe_p": m["probe_p"],
        "centroid_wsr": m["centroid_wsr"],
        "centroid_p": m["centroid_p"],
        "wfpr": m["wfpr"],
        "queries": evidence.queries,
    }


def format_encoder_demo(result: dict[str, Any]) -> str:
    """The demo's numbers as a short text report."""
    lines = [
        f"encoder demo on {result['data']} ({result['split']}), victim {result['archs']['victim']}, "
        f"thief {result['archs']['thief']} by {result['attack']} ({result['queries']} queries, "
        f"{result['transport']})",
        f"{'encoder':<9} {'linear':>7} {'mlp':>7} {'cos→victim':>10} {'verdict':>11} {'p (probe)':>10} "
        f"{'WSR':>5} {'p (centroid)':>12} {'WSR':>5}",
    ]
    for name in ("victim", "stolen", "innocent"):
        q, v = result["quality"][name], result["verification"][name]
        cos = result["fidelity_cosine"].get(name, 1.0)
        lines.append(
            f"{name:<9} {q['linear_probe_accuracy']:>7.3f} {q.get('mlp_probe_accuracy', float('nan')):>7.3f} "
            f"{cos:>10.3f} {v['verdict']:>11} {v['probe_p']:>10.2e} {v['probe_wsr']:>5.2f} "
            f"{v['centroid_p']:>12.2e} {v['centroid_wsr']:>5.2f}"
        )
    seconds = result["seconds"]
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()) + f" ({result['threads']} threads)")
    return "\n".join(lines)
