"""Embedding as a workflow: pick the starting model (fresh, given, or trained clean first), embed, record provenance,
and measure what the watermark costs in accuracy (the accuracy-cost guard).

The guard. A watermark that costs the owner accuracy is a bad trade however well it proves theft, so every
embedding is measured against a clean reference model: the share of the **test split** each classifies correctly,
paired on the same inputs, the victim as served (an API-time scheme through ``scheme.protect``). Every accuracy
copycatch reports is on the test split, which no training or early stopping ever looks at. The reference is, in
order: the model given as ``reference``; the clean model a ``pretrain`` scheme trains first (reused, not trained
twice), or the trained model given to embed into, both measured before the scheme changes them; else a clean
model trained for the purpose with the victim's architecture, recipe and seed on the same owner data. The cost is
``100 × (reference accuracy − victim accuracy)`` points. Past ``max_cost`` (default 1.5 points) the embedding is
still finished and returned, flagged; the caller writes its files and then :func:`check_accuracy_cost` raises
:class:`AccuracyCostExceeded` (carrying the result) unless the cost is allowed, naming the parameter that trades
the scheme's strength for accuracy (``Scheme.strength``). ``max_cost=None`` sets no limit: the cost is then
measured only when a reference is at hand for free (given, or trained first anyway), and the key says the guard
was skipped otherwise. The record goes into the key's metadata (``meta["accuracy_cost"]``), the victim's
provenance and ``Embedding.info``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..core.commitment import check_key_seed, keep_seed
from ..core.errors import AccuracyCostExceeded, InvalidArgument
from ..core.key import Key
from ..data.base import Splits, TensorData
from ..models.base import Classifier, create_for
from ..models.io import weights_digest
from ..models.train import EVAL_BATCH, TrainConfig, predict_logits, train_model
from ..oracles.base import query_all
from ..oracles.local import ModelOracle
from .base import Embedding, Scheme, create_scheme

DEFAULT_MAX_COST = 1.5  # points of test accuracy


def embed_scheme(
    scheme: str,
    splits: Splits,
    *,
    arch: str | None = None,
    model: Classifier | None = None,
    params: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    progress: bool | None = None,
    reference: Classifier | None = None,
    max_cost: float | None = DEFAULT_MAX_COST,
    key_seed: str | None = None,
) -> Embedding:
    """Watermark a model with ``scheme``: a fresh ``arch`` (default: the scheme's), or ``model`` as given.

    A scheme that fine-tunes a trained model (``pretrain``) handed an architecture name gets a clean model
    trained first with the same ``config``; its provenance goes in ``info["pretrained_clean"]``. The accuracy cost
    against a clean reference (``reference``, else see the module docstring) is measured and recorded in the key and
    in ``info["accuracy_cost"]``, flagged when past ``max_cost`` points. Nothing is raised here: a caller keeps the
    finished work (writes its files) and then calls :func:`check_accuracy_cost`. ``key_seed`` (hexadecimal, see
    :mod:`copycatch.core.commitment`) is the secret the key's random choices come from, kept in the key; None draws
    them from the training seed, which anyone can repeat.
    """
    sch = create_scheme(scheme, **(params or {}))
    sch.key_seed = check_key_seed(key_seed) if key_seed is not None else None
    if splits.modality not in sch.modalities:
        raise InvalidArgument(
            f"scheme {sch.name!r} does not apply to {splits.modality} data; it supports {', '.join(sch.modalities)}"
        )
    if model is not None and arch is not None:
        raise InvalidArgument("give either arch (train a new model) or model (start from it), not both")
    check_max_cost(max_cost)
    config = config or TrainConfig()
    info: dict[str, Any] = {}
    if model is not None:
        base = model
    elif sch.pretrain:  # the scheme fine-tunes a trained model: train a clean one first, the same way
        base = train_model(arch or sch.default_arch, splits, config=config, progress=progress)
        info["pretrained_clean"] = dict(base.provenance)
    else:
        base = create_for(arch or sch.default_arch, splits, seed=config.seed)
    for name, other in (("model", base), ("reference", reference)):
        if other is not None:
            _check_fits(name, other, splits)
    clean = _clean_reference(sch, base, model, reference, splits, config, max_cost, progress)
    result = sch.embed(base, splits, train=config, progress=progress)
    if sch.key_seed is not None:
        keep_seed(result.key, sch.key_seed)
    result.info.update(info)
    result.victim.provenance.update({**splits.provenance(), "trained_on": "owner_train", "train": config.to_dict()})
    record_accuracy_cost(sch, result, clean, splits.test, max_cost)
    return result


def _check_fits(name: str, model: Classifier, splits: Splits) -> None:
    if tuple(model.input_shape) != tuple(splits.input_shape) or model.num_classes != splits.num_classes:
        raise InvalidArgument(
            f"{name} takes {model.input_shape} with {model.num_classes} classes but the data are "
            f"{splits.input_shape} with {splits.num_classes} classes"
        )


def check_max_cost(max_cost: float | None) -> None:
    if max_cost is not None and not (math.isfinite(max_cost) and max_cost >= 0):
        raise InvalidArgument(f"max_cost must be a number of accuracy points >= 0 (or None to skip), got {max_cost}")


# ---------------------------------------------------------------------------------------------------------------------
# The accuracy-cost guard
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CleanReference:
    """Which test inputs the clean reference classifies correctly (measured before embedding), and what it is."""

    correct: torch.Tensor | None  # None: no reference (guard skipped, or no test data)
    source: str  # "given", "pretrained", "starting model", "trained" or "none"
    description: str
    sha256: str | None = None


def _clean_reference(
    sch: Scheme,
    base: Classifier,
    given_model: Classifier | None,
    reference: Classifier | None,
    splits: Splits,
    config: TrainConfig,
    max_cost: float | None,
    progress: bool | None,
) -> CleanReference:
    """The clean reference of the module docstring, measured now: a scheme that fine-tunes changes ``base`` in place."""
    if not len(splits.test):
        return CleanReference(None, "none", "no reference: the test split is empty")
    if reference is not None:
        return _measured(reference, splits.test, "given", "the reference model given")
    if sch.pretrain and given_model is None:
        words = "the clean model trained first for this scheme (same architecture, recipe and seed, on owner_train)"
        return _measured(base, splits.test, "pretrained", words)
    if given_model is not None and given_model.provenance.get("trained_on"):
        return _measured(base, splits.test, "starting model", "the trained model given to embed into, before embedding")
    if max_cost is None:
        return CleanReference(None, "none", "no reference: no cost limit was set, so none was trained")
    trained = train_model(base.arch, splits, config=config, progress=progress, **base.arch_kwargs)
    words = f"a clean {base.arch} trained for the guard (same architecture, recipe and seed, on owner_train)"
    return _measured(trained, splits.test, "trained", words)


def _measured(model: Classifier, test: TensorData, source: str, description: str) -> CleanReference:
    correct = predict_logits(model, test.stored).argmax(1) == test.y  # made float a batch at a time
    return CleanReference(correct, source, description, weights_digest(model))


def record_accuracy_cost(
    sch: Scheme, result: Embedding, clean: CleanReference, test: TensorData, max_cost: float | None
) -> dict[str, Any]:
    """Measure the victim as served against ``clean`` on ``test`` and record it in the key's metadata, the victim's
    provenance (with the key's new digest, which the metadata changes) and ``result.info``."""
    record: dict[str, Any] = {"split": "test", "max_cost_points": max_cost, "reference": clean.description}
    if clean.correct is None:
        record["status"] = "skipped" if len(test) else "not measured"
    else:
        was_training = result.victim.training
        served = sch.protect(ModelOracle(result.victim, name="victim"), result.key)
        victim_correct = query_all(served, test.stored, batch_size=EVAL_BATCH, desc="accuracy cost").argmax(1) == test.y
        result.victim.train(was_training)
        n = len(test)
        ref_acc, victim_acc = int(clean.correct.sum()) / n, int(victim_correct.sum()) / n
        cost = 100.0 * (ref_acc - victim_acc)
        exceeded = max_cost is not None and cost > max_cost
        record.update(
            inputs=n,
            reference_source=clean.source,
            reference_sha256=clean.sha256,
            reference_accuracy=ref_acc,
            victim_accuracy=victim_acc,
            measured_through="the protected API" if sch.acts_at == "api" else "the victim model",
            cost_points=cost,
            reference_only_correct=int((clean.correct & ~victim_correct).sum()),
            victim_only_correct=int((victim_correct & ~clean.correct).sum()),
            exceeded=exceeded,
            status="exceeded" if exceeded else ("no limit" if max_cost is None else "within the limit"),
            strength=_strength(sch, result.key),
        )
    result.key.meta["accuracy_cost"] = record
    result.victim.provenance.update({"key_digest": result.key.digest, "accuracy_cost": dict(record)})
    result.info["accuracy_cost"] = dict(record)
    return record


def _strength(sch: Scheme, key: Key) -> dict[str, Any] | None:
    """The scheme's strength parameter, the value used (as the key records it: a default derived from the data is
    resolved there), and a value to try that costs less (half of it)."""
    if sch.strength is None:
        return None
    value = key.params.get(sch.strength, getattr(sch.params, sch.strength))
    lower = None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        lower = value // 2 if isinstance(value, int) else float(f"{value / 2:.3g}")
    return {"param": sch.strength, "value": value, "try": lower}


def describe_cost(record: dict[str, Any] | None) -> str:
    """One line for people: the cost, the two accuracies, the split and the limit (or why nothing was measured)."""
    if not record:
        return "not recorded in this key"
    if "cost_points" not in record:
        return f"not measured ({record['reference']})"
    limit = record["max_cost_points"]
    return (
        f"{record['cost_points']:+.2f} points of test accuracy: reference {record['reference_accuracy']:.4f}, "
        f"victim {record['victim_accuracy']:.4f} on the test split ({record['inputs']} inputs, paired); "
        + (f"limit {limit:g} points ({record['status']})" if limit is not None else "no limit")
    )


def strength_advice(record: dict[str, Any], *, cli: bool = False) -> str:
    """Which knob to turn: the scheme's strength parameter, as ``-p NAME=VALUE`` (``cli``) or ``params``."""
    knob = record.get("strength")
    if not knob:
        return "this scheme declares no parameter that trades its strength for accuracy"
    name, value, lower = knob["param"], knob["value"], knob["try"]
    if lower is None:
        return f"lower the scheme's strength parameter {name} (now {value})"
    example = f"-p {name}={lower}" if cli else f"params={{{name!r}: {lower}}}"
    return f"lower the scheme's strength parameter {name} (now {value}), e.g. {example}"


def check_accuracy_cost(result: Any, *, allow_cost: bool = False) -> None:
    """Raise :class:`AccuracyCostExceeded` carrying ``result`` when its recorded cost is past the limit, unless
    ``allow_cost``. Callers that write files call it after writing them, so the finished work is never lost."""
    record = result.info.get("accuracy_cost") or {}
    if allow_cost or not record.get("exceeded"):
        return
    raise AccuracyCostExceeded(
        f"the watermark costs {record['cost_points']:.2f} points of test accuracy (reference "
        f"{record['reference_accuracy']:.4f}, victim {record['victim_accuracy']:.4f}), over max_cost="
        f"{record['max_cost_points']:g}: {strength_advice(record)}, or pass allow_cost=True to accept it",
        result,
    )
