"""Run one cell: the whole protect → steal → launder → verify story for one resolved configuration.

Runs in a worker process (or a Ray task) and returns the row the coordinator writes; it never touches the
results store. Trained models come from :class:`~copycatch.bench.cache.ArtifactCache`, so cells that share a
victim, a clean model, a surrogate or an innocent model train it once.

Per cell, in order:

1. the data split (kept in memory by the worker across cells);
2. a **clean** model: the victim's architecture and training, no watermark (accuracy cost, and a control);
3. the **victim**: the scheme embedded with the same training and seed (a ``pretrain`` scheme fine-tunes a copy
   of the clean model), and the **API** the owner serves: ``protect_oracle(ModelOracle(victim), key)``;
4. the **surrogate**: the extraction attack through that API (after any output post-processors) with the
   thief's query set, surrogate architecture and budget — or, with ``extraction: none``, the leaked victim;
5. the **suspect**: the removal chain applied to the surrogate, on the thief's data (``attacker_pool``) with its
   true labels, or with the API's answers to it (``removal_labels: oracle``);
6. an **innocent** model trained on the attacker pool with true labels (the control no verification may accuse);
7. verification of the API, clean model, surrogate, suspect and innocent model against the key.

Measurements that depend only on a cached model (the API's accuracy and evidence, the clean model's, a surrogate's,
an innocent model's) are remembered by the worker, so the many cells sharing a model measure it once per worker.

Metrics (flat, in ``metrics``): ``clean_acc``, ``victim_acc`` (accuracy of the served API), ``watermark_cost``;
for each of ``victim``/``clean``/``surrogate``/``suspect``/``innocent``: ``_stat``, ``_p``, ``_decision``
(and ``_acc``, ``_fidelity`` where they apply: fidelity = agreement with the API's labels on the test set);
``<prefix>_power`` for surrogate, suspect and innocent (``{"queries", "p", "smallest_p"}``: the fixed test's p-value
on the first k key queries, computed from the answers the fixed test collected, and the smallest p-value k queries
can give); ``extraction_queries``, ``verify_queries``; ``seconds_<stage>`` for data, clean, embed, extract, removal,
innocent and verify (a cached model reports the time it took when it was trained, with ``cached_<stage>``);
``seconds_cell`` and ``cpu_seconds_cell`` (this cell's wall and CPU time in this run — on a shared machine the
CPU time is what the cell cost); ``peak_rss_mb`` with ``peak_rss_source``:
``VmHWM`` is the worker's peak resident set size during this cell (Linux: the high-water mark is reset at
the start of the cell through ``/proc/self/clear_refs``); ``ru_maxrss`` (elsewhere) is the worker's peak
since it started, an upper bound.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ..attacks.removal import create_removal_attack, run_chain
from ..attacks.steal import query_set, steal
from ..data.base import TensorData
from ..models.base import create_for
from ..models.train import EVAL_BATCH, TrainConfig, accuracy, predict_logits, train_model
from ..oracles.base import query_all
from ..oracles.local import ModelOracle
from ..oracles.postprocess import create_postprocessor
from ..schemes import SCHEMES, embed_scheme, protect_oracle
from ..verification.session import fixed_test
from .cache import ArtifactCache, timed
from .grid import (
    INNOCENT_SEED_OFFSET,
    REMOVAL_SEED_OFFSET,
    SPLIT_PARTS,
    THIEF_SEED_OFFSET,
    artifact_specs,
    canonical,
    config_hash,
)

POWER_VIEW = ("surrogate", "suspect", "innocent")  # the models whose power curve the report plots
_SPLITS: dict[str, Any] = {}
_QUERY_SETS: dict[str, Any] = {}
_MEMO: dict[str, dict[str, Any]] = {}


def versions() -> dict[str, str]:
    import numpy
    import torch

    from .._version import __version__

    return {
        "copycatch": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


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
    row: dict[str, Any] = {
        "cell_id": task["cell_id"],
        "config": task["config"],
        "started_at": started,
        "worker": _worker(),
    }
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


def _worker() -> str:
    """``host:pid``, and ``@<Ray node id>`` in a Ray task (several Ray nodes may share a host)."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        with contextlib.suppress(Exception):  # the name is informative only
            name += f"@{ray.get_runtime_context().get_node_id()}"
    return name


def _run(task: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cell = _Cell(task)
    cell.build_victim()
    cell.measure_victim()
    suspect, stolen = cell.steal()
    suspect = cell.launder(suspect)
    if stolen is not None and not cell.cfg["removals"]:  # the suspect is the surrogate: reuse its measurements
        final = {k.replace("surrogate_", "suspect_", 1): v for k, v in stolen.items()}
    else:
        final = cell.measure("suspect", suspect)
    suspect_evidence = final.pop("evidence")
    m = cell.m
    m.update(final)
    m["verify_queries"] = m["suspect_verify_queries"]
    if cell.cfg["innocent"] is not None:
        cell.control()
    m["seconds_verify"] = cell.verify_seconds  # verification done in this cell (model-level results are reused)
    m["suspect_metrics"] = suspect_evidence.get("metrics", {})
    m["seconds_cell"] = time.perf_counter() - cell.started
    return m, suspect_evidence


class _Cell:
    """One cell's state: its configuration, data, cached models and the metrics it has gathered so far."""

    def __init__(self, task: dict[str, Any]):
        self.task, self.cfg = task, task["config"]
        self.seed = int(self.cfg["seed"])
        self.device = task.get("device") or "cpu"
        self.cache = ArtifactCache(task["cache_dir"])
        self.specs = artifact_specs(self.cfg)
        self.alpha = float(self.cfg["alpha"])
        self.m: dict[str, Any] = {}
        self.verify_seconds = 0.0
        self.started = t = time.perf_counter()
        self.splits = _splits(self.cfg["data"], task.get("data_dir"))
        self.m["seconds_data"] = time.perf_counter() - t

    def training(self, section: dict[str, Any], offset: int = 0) -> TrainConfig:
        return TrainConfig.from_dict({**section, "seed": self.seed + offset, "device": self.device})

    def cached(self, kind: str, build: Any) -> tuple[Any, Any, dict[str, Any]]:
        """A model from the artifact cache (built and stored on a miss); records ``cached_<kind>``."""
        model, key, record, self.m[f"cached_{kind}"] = self.cache.get_or_build(
            kind, config_hash(self.specs[kind]), timed(build), device=self.device
        )
        return model, key, record

    def build_victim(self) -> None:
        victim_cfg, splits = self.cfg["victim"], self.splits
        owner_train = self.training(victim_cfg["train"])
        self.clean, _, clean_rec = self.cached(
            "clean",
            lambda: train_model(
                victim_cfg["arch"], splits, config=owner_train, progress=False, **victim_cfg["arch_kwargs"]
            ),
        )
        self.m["seconds_clean"] = clean_rec["seconds"]
        pretrain = SCHEMES.get(self.cfg["scheme"]["name"]).factory.pretrain

        def embed() -> tuple[Any, Any]:
            # fine-tuning schemes start from the clean model, trained exactly once
            base = (
                copy.deepcopy(self.clean)
                if pretrain
                else create_for(victim_cfg["arch"], splits, seed=self.seed, **victim_cfg["arch_kwargs"])
            )
            embedding = embed_scheme(
                self.cfg["scheme"]["name"],
                splits,
                model=base,
                params=self.cfg["scheme"]["params"],
                config=owner_train,
                progress=False,
                reference=self.clean,  # the key records the cost against the cell's clean model; no limit here
                max_cost=None,
            )
            return embedding.victim, embedding.key

        self.victim, self.key, victim_rec = self.cached("victim", embed)
        self.m["seconds_embed"] = victim_rec["seconds"] + (clean_rec["seconds"] if pretrain else 0.0)

    def served(self) -> Any:
        """The owner's prediction API (API-time schemes perturb it), a fresh query counter each time."""
        return protect_oracle(ModelOracle(self.victim, name="victim API"), self.key)

    def verify(self, prefix: str, suspect: Any) -> tuple[Any, dict[str, Any]]:
        """The fixed test; for the thief's models and the innocent one also its power curve (``<prefix>_power``:
        the p-value on the first k key queries, from the same answers)."""
        start = time.perf_counter()
        evidence = fixed_test(suspect, self.key, alpha=self.alpha, power=prefix in POWER_VIEW)
        elapsed = time.perf_counter() - start - evidence.details.get("power", {}).get("seconds", 0.0)
        self.verify_seconds += elapsed
        out = {
            f"{prefix}_stat": _float(evidence.statistic),
            f"{prefix}_p": _float(evidence.p_value),
            f"{prefix}_decision": evidence.decision,
            f"{prefix}_verify_seconds": elapsed,
            f"{prefix}_verify_queries": evidence.queries,
        }
        if "power" in evidence.details:
            out[f"{prefix}_power"] = {k: v for k, v in evidence.details["power"].items() if k != "seconds"}
        return evidence, out

    def measure_victim(self) -> None:
        test = self.splits.test

        def compute() -> dict[str, Any]:
            api_labels = query_all(self.served(), test.stored, batch_size=EVAL_BATCH, progress=False).argmax(1)
            victim_evidence, out = self.verify("victim", self.served())
            out.update(self.verify("clean", self.clean)[1])
            out.update(
                api_labels=api_labels,
                clean_acc=accuracy(self.clean, test),
                victim_acc=float((api_labels == test.y).float().mean()),
                statistic_name=victim_evidence.statistic_name,
                exact=victim_evidence.exact,
            )
            out["watermark_cost"] = out["clean_acc"] - out["victim_acc"]
            return out

        shared = _memo(self.memo_key("victim", config_hash(self.specs["victim"])), compute)
        self.api_labels = shared.pop("api_labels")
        self.m.update(shared)

    def memo_key(self, *parts: Any) -> str:
        return canonical([self.task["cache_dir"], *parts, self.alpha])

    def measure(self, prefix: str, model: Any) -> dict[str, Any]:
        """Accuracy, fidelity to the API and evidence of a model; the evidence itself kept for the cell's row."""
        evidence, out = self.verify(prefix, model)
        out[f"{prefix}_acc"] = accuracy(model, self.splits.test)
        predicted = predict_logits(model, self.splits.test.stored).argmax(1)
        out[f"{prefix}_fidelity"] = float((predicted == self.api_labels).float().mean())
        out["evidence"] = _jsonable({k: v for k, v in evidence.to_dict().items() if k != "details"})
        return out

    def steal(self) -> tuple[Any, dict[str, Any] | None]:
        """The thief's surrogate (or, with ``extraction: none``, the leaked victim) and its measurements."""
        extraction = self.cfg["extraction"]
        if extraction is None:
            self.m.update(extraction_queries=0, seconds_extract=0.0)
            return self.victim, None
        thief_train = self.training(extraction["train"], THIEF_SEED_OFFSET)

        def build() -> tuple[Any, None, dict[str, Any]]:
            result = steal(
                self.served(),
                _query_set(extraction["queries"], self.splits, self.task.get("data_dir")),
                attack=extraction["name"],
                arch=extraction["arch"],
                params=extraction["params"],
                config=thief_train,
                postprocess=[_post(p) for p in extraction["post"]],
                class_names=self.splits.class_names,
                arch_kwargs=extraction["arch_kwargs"],
                progress=False,
            )
            return result.surrogate, None, {"queries": result.queries}

        surrogate, _, record = self.cached("surrogate", build)
        self.m.update(seconds_extract=record["seconds"], extraction_queries=record["queries"])
        stolen = _memo(
            self.memo_key("surrogate", config_hash(self.specs["surrogate"])),
            lambda: self.measure("surrogate", surrogate),
        )
        self.m.update({k: v for k, v in stolen.items() if k != "evidence"})
        return surrogate, stolen

    def launder(self, suspect: Any) -> Any:
        """The removal chain on the thief's data; every step's accuracy and time go into ``removal_steps``."""
        self.m.update(seconds_removal=0.0, removal_steps=[])
        removals = self.cfg["removals"]
        if not removals:
            return suspect
        attacks = [create_removal_attack(r["name"], **r["params"]) for r in removals]
        start = time.perf_counter()
        pool = self.splits.attacker_pool
        if self.cfg.get("removal_labels") == "oracle":
            # the API's answers to the thief's own images: with an extraction on the attacker pool these are the
            # answers it already bought, reused as MEA-Defender's §5.5 thief does
            pool = TensorData(pool.stored, query_all(self.served(), pool.stored, batch_size=EVAL_BATCH, progress=False))
        results = run_chain(
            suspect,
            attacks,
            pool,
            test=self.splits.test,
            train=self.training(self.cfg["removal_train"], REMOVAL_SEED_OFFSET),
            progress=False,
        )
        self.m["seconds_removal"] = time.perf_counter() - start
        self.m["removal_steps"] = [
            {
                "name": r["name"],
                "accuracy_before": res.accuracy_before,
                "accuracy_after": res.accuracy_after,
                "seconds": res.seconds,
            }
            for r, res in zip(removals, results)
        ]
        return results[-1].model

    def control(self) -> None:
        """The innocent model on the thief's data with true labels: no verification may accuse it."""
        inn = self.cfg["innocent"]
        inn_train = self.training(inn["train"], INNOCENT_SEED_OFFSET)
        innocent, _, record = self.cached(
            "innocent",
            lambda: train_model(
                inn["arch"], self.splits, on="attacker_pool", config=inn_train, progress=False, **inn["arch_kwargs"]
            ),
        )
        self.m["seconds_innocent"] = record["seconds"]
        key = self.memo_key("innocent", config_hash(self.specs["innocent"]), config_hash(self.specs["victim"]))
        self.m.update(
            _memo(
                key,
                lambda: {"innocent_acc": accuracy(innocent, self.splits.test), **self.verify("innocent", innocent)[1]},
            )
        )


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
        _SPLITS[key] = load_splits(
            data["name"],
            seed=data["split_seed"],
            data_dir=data_dir,
            fractions=SplitFractions.from_dict(data["fractions"]),
            max_train=data["max_train"],
        )
    return _SPLITS[key]


def _query_set(name: str, splits: Any, data_dir: str | None) -> Any:
    """The thief's queries (:func:`~copycatch.attacks.steal.query_set`); another data set stays loaded in the worker."""
    if name in SPLIT_PARTS:
        return getattr(splits, name)
    if name not in _QUERY_SETS:
        _QUERY_SETS.clear()
        _QUERY_SETS[name] = query_set(name, splits, data_dir=data_dir)
    return _QUERY_SETS[name]


def _post(entry: dict[str, Any]) -> Any:
    return create_postprocessor(entry["name"], **entry["params"])


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
