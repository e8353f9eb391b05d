"""Run one cell: the whole protect → steal → launder → verify story for one resolved configuration.

Runs in a worker process (or a Ray task) and returns the row the coordinator writes; it never touches the
results store. Trained models come from :class:`~copycatch.bench.cache.ArtifactCache`, so cells that share a
victim, a clean model, a surrogate or an innocent model train it once.

Per cell, in order:

1. the data split (kept in memory by the worker across cells);
2. a **clean** model: the victim's architecture and training, no watermark (accuracy cost, and a control);
3. the **victim**: the scheme embedded with the same training and seed (a ``pretrain`` scheme fine-tunes a copy
   of the clean model), and the **API** the owner serves: ``scheme.protect(ModelOracle(victim), key)``;
4. the **surrogate**: the extraction attack through that API (after any output post-processors) with the
   thief's query set, surrogate architecture and budget — or, with ``extraction: none``, the leaked victim;
5. the **suspect**: the removal chain applied to the surrogate, on the thief's data (``attacker_pool``);
6. an **innocent** model trained on the attacker pool with true labels (the control no verification may accuse);
7. verification of the API, clean model, surrogate, suspect and innocent model against the key.

Measurements that depend only on a cached model (the API's accuracy and evidence, the clean model's, a surrogate's,
an innocent model's) are remembered by the worker, so the many cells sharing a model measure it once per worker.

Metrics (flat, in ``metrics``): ``clean_acc``, ``victim_acc`` (accuracy of the served API), ``watermark_cost``;
for each of ``victim``/``clean``/``surrogate``/``suspect``/``innocent``: ``_stat``, ``_p``, ``_decision``
(and ``_acc``, ``_fidelity`` where they apply: fidelity = agreement with the API's labels on the test set);
``extraction_queries``, ``verify_queries``; ``seconds_<stage>`` for data, clean, embed, extract, removal,
innocent and verify (a cached model reports the time it took when it was trained, with ``cached_<stage>``);
``seconds_cell`` and ``cpu_seconds_cell`` (this cell's wall and CPU time in this run — on a shared machine the
CPU time is what the cell cost); ``peak_rss_mb`` with ``peak_rss_source``:
``VmHWM`` is the worker's peak resident set size during this cell (Linux: the high-water mark is reset at
the start of the cell through ``/proc/self/clear_refs``); ``ru_maxrss`` (elsewhere) is the worker's peak
since it started, an upper bound.
"""

from __future__ import annotations

import copy
import os
import platform
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from .grid import INNOCENT_SEED_OFFSET, REMOVAL_SEED_OFFSET, THIEF_SEED_OFFSET, SPLIT_PARTS, artifact_specs, canonical, config_hash

_SPLITS: dict[str, Any] = {}
_QUERY_SETS: dict[str, Any] = {}
_MEMO: dict[str, dict[str, Any]] = {}


def versions() -> dict[str, str]:
    import numpy
    import torch

    from .._version import __version__

    return {"copycatch": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "platform": platform.platform(terse=True)}


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(max(1, int(threads)))


def run_cell(task: dict[str, Any]) -> dict[str, Any]:
    """``task``: cell_id, config, cache_dir, data_dir, device, threads. Returns the row to store."""
    os.environ.setdefault("COPYCATCH_PROGRESS", "0")
    set_threads(task.get("threads"))
    started, cpu_started = time.time(), time.process_time()
    source = _reset_peak_memory()
    row: dict[str, Any] = {"cell_id": task["cell_id"], "config": task["config"], "started_at": started,
                           "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        metrics, evidence = _run(task)
        metrics["peak_rss_mb"], metrics["peak_rss_source"] = _peak_memory_mb(source)
        metrics["cpu_seconds_cell"] = time.process_time() - cpu_started
        row.update(status="ok", metrics=metrics, evidence=evidence, error=None)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken cell must not stop the grid; the row says what went wrong
        tb = traceback.format_exc(limit=-4)
        row.update(status="failed", metrics=None, evidence=None, error=f"{type(exc).__name__}: {exc}\n{tb}")
    row["finished_at"] = time.time()
    row["seconds"] = row["finished_at"] - started
    row["versions"] = versions()
    return row


def _run(task: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from .. import api
    from ..attacks.extraction import create_extraction_attack
    from ..attacks.removal import create_removal_attack, run_chain
    from ..models.base import create_for, create_model
    from ..oracles.base import ModelOracle
    from ..schemes import SCHEMES, scheme_for_key
    from ..models.train import TrainConfig, accuracy
    from .cache import ArtifactCache

    cfg = task["config"]
    seed = int(cfg["seed"])
    device = task.get("device") or "cpu"
    cache = ArtifactCache(task["cache_dir"])
    specs = artifact_specs(cfg)
    m: dict[str, Any] = {}
    cell_start = time.perf_counter()

    t = time.perf_counter()
    splits = _splits(cfg["data"], task.get("data_dir"))
    m["seconds_data"] = time.perf_counter() - t

    victim_arch = cfg["victim"]["arch"]
    arch_kwargs = cfg["victim"]["arch_kwargs"]
    owner_train = TrainConfig.from_dict({**cfg["victim"]["train"], "seed": seed, "device": device})

    def build_clean():
        start = time.perf_counter()
        model = api.train(victim_arch, splits, config=owner_train, progress=False, **arch_kwargs)
        return model, None, {"seconds": time.perf_counter() - start}

    clean, _, clean_rec, m["cached_clean"] = cache.get_or_build("clean", config_hash(specs["clean"]), build_clean,
                                                                device=device)
    m["seconds_clean"] = clean_rec["seconds"]

    scheme_cls = SCHEMES.get(cfg["scheme"]["name"]).factory

    def build_victim():
        start = time.perf_counter()
        if scheme_cls.pretrain:  # fine-tuning schemes start from the clean model, trained exactly once
            base = copy.deepcopy(clean)
        else:
            base = create_for(victim_arch, splits, seed=seed, **arch_kwargs)
        embedding = api.embed(cfg["scheme"]["name"], splits, model=base, params=cfg["scheme"]["params"],
                              config=owner_train, progress=False)
        seconds = time.perf_counter() - start + (clean_rec["seconds"] if scheme_cls.pretrain else 0.0)
        return embedding.victim, embedding.key, {"seconds": seconds}

    victim, key, victim_rec, m["cached_victim"] = cache.get_or_build("victim", config_hash(specs["victim"]),
                                                                     build_victim, device=device)
    m["seconds_embed"] = victim_rec["seconds"]
    scheme = scheme_for_key(key)
    alpha = float(cfg["alpha"])
    victim_hash = config_hash(specs["victim"])
    verify_seconds = 0.0

    def served() -> Any:
        """The owner's prediction API (API-time schemes perturb it), a fresh query counter each time."""
        return scheme.protect(ModelOracle(victim, name="victim API"), key)

    def verify(prefix: str, suspect: Any) -> tuple[Any, dict[str, Any]]:
        nonlocal verify_seconds
        start = time.perf_counter()
        evidence = api.verify(suspect, key, alpha=alpha)
        elapsed = time.perf_counter() - start
        verify_seconds += elapsed
        return evidence, {f"{prefix}_stat": _float(evidence.statistic), f"{prefix}_p": _float(evidence.p_value),
                          f"{prefix}_decision": evidence.decision, f"{prefix}_verify_seconds": elapsed,
                          f"{prefix}_verify_queries": evidence.queries}

    def victim_measures() -> dict[str, Any]:
        api_labels = _answers(served(), splits.test.x).argmax(1)
        victim_evidence, out = verify("victim", served())
        out.update(verify("clean", clean)[1])
        out.update(api_labels=api_labels, clean_acc=accuracy(clean, splits.test),
                   victim_acc=float((api_labels == splits.test.y).float().mean()),
                   statistic_name=victim_evidence.statistic_name, exact=victim_evidence.exact)
        out["watermark_cost"] = out["clean_acc"] - out["victim_acc"]
        return out

    shared = _memo(canonical([task["cache_dir"], "victim", victim_hash, alpha]), victim_measures)
    api_labels = shared["api_labels"]
    m.update({k: v for k, v in shared.items() if k != "api_labels"})

    def measure(prefix: str, model: Any) -> dict[str, Any]:
        """Accuracy, fidelity to the API and evidence of a model; the evidence itself kept for the cell's row."""
        from ..models.train import predict_logits

        evidence, out = verify(prefix, model)
        out[f"{prefix}_acc"] = accuracy(model, splits.test)
        out[f"{prefix}_fidelity"] = float((predict_logits(model, splits.test.x).argmax(1) == api_labels).float().mean())
        out["evidence"] = _jsonable({k: v for k, v in evidence.to_dict().items() if k != "details"})
        return out

    # -- the thief ---------------------------------------------------------------------------------------------
    extraction = cfg["extraction"]
    stolen: dict[str, Any] | None = None
    if extraction is not None:
        thief_train = TrainConfig.from_dict({**extraction["train"], "seed": seed + THIEF_SEED_OFFSET, "device": device})

        def build_surrogate():
            start = time.perf_counter()
            oracle = served()
            if extraction["post"]:
                oracle = oracle.postprocess(*[_post(p) for p in extraction["post"]])
            pool = _query_set(extraction["queries"], splits, task.get("data_dir"))
            attack = create_extraction_attack(extraction["name"], **extraction["params"])
            surrogate = create_model(extraction["arch"], splits.input_shape, splits.num_classes,
                                     class_names=tuple(splits.class_names), seed=thief_train.seed,
                                     **extraction["arch_kwargs"])
            result = attack.run(oracle, pool, surrogate, train=thief_train, progress=False)
            result.surrogate.provenance.update({"stolen_with": extraction["name"], "queries": result.queries})
            return result.surrogate, None, {"seconds": time.perf_counter() - start, "queries": result.queries}

        surrogate_hash = config_hash(specs["surrogate"])
        surrogate, _, sur_rec, m["cached_surrogate"] = cache.get_or_build("surrogate", surrogate_hash,
                                                                          build_surrogate, device=device)
        m["seconds_extract"] = sur_rec["seconds"]
        m["extraction_queries"] = sur_rec["queries"]
        stolen = _memo(canonical([task["cache_dir"], "surrogate", surrogate_hash, alpha]),
                       lambda: measure("surrogate", surrogate))
        m.update({k: v for k, v in stolen.items() if k != "evidence"})
        suspect = surrogate
    else:
        m["extraction_queries"] = 0
        m["seconds_extract"] = 0.0
        suspect = victim  # the leaked weights themselves

    # -- removal chain -------------------------------------------------------------------------------------------
    steps = []
    m["seconds_removal"] = 0.0
    if cfg["removals"]:
        removal_train = TrainConfig.from_dict({**cfg["removal_train"], "seed": seed + REMOVAL_SEED_OFFSET,
                                               "device": device})
        attacks = [create_removal_attack(r["name"], **r["params"]) for r in cfg["removals"]]
        start = time.perf_counter()
        results = run_chain(suspect, attacks, splits.attacker_pool, test=splits.test, train=removal_train,
                            progress=False)
        m["seconds_removal"] = time.perf_counter() - start
        steps = [{"name": r["name"], "accuracy_before": res.accuracy_before, "accuracy_after": res.accuracy_after,
                  "seconds": res.seconds} for r, res in zip(cfg["removals"], results)]
        suspect = results[-1].model
    m["removal_steps"] = steps

    if stolen is not None and not cfg["removals"]:  # the suspect is the surrogate: reuse its measurements
        final = {k.replace("surrogate_", "suspect_", 1): v for k, v in stolen.items()}
    else:
        final = measure("suspect", suspect)
    suspect_evidence = final.pop("evidence")
    m.update(final)
    m["verify_queries"] = m["suspect_verify_queries"]

    # -- the control ------------------------------------------------------------------------------------------------
    if cfg["innocent"] is not None:
        inn = cfg["innocent"]
        inn_train = TrainConfig.from_dict({**inn["train"], "seed": seed + INNOCENT_SEED_OFFSET, "device": device})

        def build_innocent():
            start = time.perf_counter()
            model = api.train(inn["arch"], splits, on="attacker_pool", config=inn_train, progress=False,
                              **inn["arch_kwargs"])
            return model, None, {"seconds": time.perf_counter() - start}

        innocent_hash = config_hash(specs["innocent"])
        innocent, _, inn_rec, m["cached_innocent"] = cache.get_or_build("innocent", innocent_hash, build_innocent,
                                                                        device=device)
        m["seconds_innocent"] = inn_rec["seconds"]

        def innocent_measures() -> dict[str, Any]:
            return {"innocent_acc": accuracy(innocent, splits.test), **verify("innocent", innocent)[1]}

        m.update(_memo(canonical([task["cache_dir"], "innocent", innocent_hash, victim_hash, alpha]), innocent_measures))

    m["seconds_verify"] = verify_seconds  # verification done in this cell (model-level results are reused)
    m["suspect_metrics"] = suspect_evidence.get("metrics", {})
    m["seconds_cell"] = time.perf_counter() - cell_start
    return m, suspect_evidence


def _memo(key: str, compute: Any) -> dict[str, Any]:
    """Per-worker memory of measurements that depend only on cached models (a victim's API accuracy and evidence,
    a surrogate's, an innocent model's), so the cells sharing a model measure it once per worker."""
    if key not in _MEMO:
        if len(_MEMO) >= 256:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = compute()
    return dict(_MEMO[key])


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def _splits(data: dict[str, Any], data_dir: str | None) -> Any:
    from ..data.base import SplitFractions, load_splits

    key = canonical({"data": data, "dir": data_dir})
    if key not in _SPLITS:
        if len(_SPLITS) >= 2:  # a worker holds at most two data sets in memory
            _SPLITS.pop(next(iter(_SPLITS)))
        _SPLITS[key] = load_splits(data["name"], seed=data["split_seed"], data_dir=data_dir,
                                   fractions=SplitFractions.from_dict(data["fractions"]), max_train=data["max_train"])
    return _SPLITS[key]


def _query_set(name: str, splits: Any, data_dir: str | None) -> Any:
    """The thief's queries: a part of the split, or another data set's training images (out of distribution)."""
    from ..data.base import TensorData, load_dataset
    from ..core.errors import InvalidArgument

    if name in SPLIT_PARTS:
        return getattr(splits, name)
    if name not in _QUERY_SETS:
        other = load_dataset(name, data_dir=data_dir)
        if tuple(other.input_shape) != tuple(splits.input_shape):
            raise InvalidArgument(f"query set {name!r} has inputs shaped {tuple(other.input_shape)} but the victim "
                                  f"takes {tuple(splits.input_shape)}")
        _QUERY_SETS.clear()
        _QUERY_SETS[name] = TensorData(other.x, other.y)
    return _QUERY_SETS[name]


def _post(entry: dict[str, Any]) -> Any:
    from ..oracles.postprocess import create_postprocessor

    return create_postprocessor(entry["name"], **entry["params"])


def _answers(oracle: Any, x: Any) -> Any:
    from ..attacks.extraction.base import query_all

    return query_all(oracle, x, batch_size=1024, progress=False)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _reset_peak_memory() -> str:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _peak_memory_mb(source: str) -> tuple[float, str]:
    """(megabytes, which measure): VmHWM since the reset, else ru_maxrss since the worker started."""
    if source == "VmHWM":
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "VmHWM"
        except OSError:
            pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024), "ru_maxrss"
