"""The Python API, one function per CLI verb: ``train``, ``embed``, ``steal``, ``verify``.

Each accepts objects or file paths, so a notebook and the CLI run the same code::

    import copycatch as cc
    splits = cc.load_splits("fashion-mnist")
    victim, key = cc.embed("margin", splits, arch="cnn-small")
    surrogate = cc.steal(victim, splits.attacker_pool, arch="mlp", budget=20000).surrogate
    print(cc.verify(surrogate, key).summary())
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from .attacks.extraction import ExtractionResult, create_extraction_attack
from .data.base import Splits, TensorData
from .core.errors import InvalidArgument
from .core.evidence import Evidence
from .core.key import Key
from .models.base import Classifier, create_for, load_model
from .oracles.base import Oracle
from .schemes import Embedding, create_scheme, scheme_for_key
from .oracles.suspects import open_suspect
from .models.train import TrainConfig, accuracy, fit

PathLike = str | os.PathLike


def _model(obj: Classifier | PathLike, device: str | None = None) -> Classifier:
    if isinstance(obj, Classifier):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_model(obj, device=device or "cpu")
    raise InvalidArgument(f"expected a copycatch model or a model file path, got {type(obj).__name__}")


def _key(obj: Key | PathLike) -> Key:
    if isinstance(obj, Key):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return Key.load(obj)
    raise InvalidArgument(f"expected a Key or a key file path, got {type(obj).__name__}")


def as_oracle(suspect: Any, *, num_classes: int | None = None, input_shape: Sequence[int] | None = None,
              budget: int | None = None, device: str | None = None, **options: Any) -> Oracle:
    """Wrap a model, model file, URL, ONNX file, ``module:function`` or callable as an :class:`Oracle`."""
    return open_suspect(suspect, num_classes=num_classes, input_shape=input_shape, budget=budget, device=device,
                        **options)


def train(arch: str, splits: Splits, *, on: str = "owner_train", config: TrainConfig | None = None,
          progress: bool | None = None, **arch_kwargs: Any) -> Classifier:
    """Train ``arch`` with true labels on one part of the split (``owner_train``, or ``attacker_pool``
    for an innocent model trained on the thief's data)."""
    if on not in ("owner_train", "attacker_pool", "owner_holdout"):
        raise InvalidArgument(f"cannot train on {on!r}; use owner_train, attacker_pool or owner_holdout")
    config = config or TrainConfig()
    model = create_for(arch, splits, seed=config.seed, **arch_kwargs)
    # Early stopping never looks at the test split (its accuracy is what gets reported): it watches the owner's
    # holdout, disjoint from both training parts, or owner_train when the holdout itself is trained on.
    val = (splits.owner_train if on == "owner_holdout" else splits.owner_holdout) if config.patience else None
    result = fit(model, getattr(splits, on), config, val=val, progress=progress, desc=f"train {arch}")
    model.provenance.update({**splits.provenance(), "trained_on": on, "train": config.to_dict(),
                             "epochs_run": result.epochs_run, "train_seconds": round(result.seconds, 2)})
    return model


def embed(scheme: str, splits: Splits, *, arch: str | None = None, model: Classifier | PathLike | None = None,
          params: dict[str, Any] | None = None, config: TrainConfig | None = None, progress: bool | None = None,
          **embed_kwargs: Any) -> Embedding:
    """Watermark a model with ``scheme``: a fresh ``arch`` (default: the scheme's), or a given ``model``."""
    sch = create_scheme(scheme, **(params or {}))
    if model is not None and arch is not None:
        raise InvalidArgument("give either arch (train a new model) or model (start from it), not both")
    config = config or TrainConfig()
    info: dict[str, Any] = {}
    if model is not None:
        base = _model(model)
    elif sch.pretrain:  # the scheme fine-tunes a trained model: train a clean one first, the same way
        base = train(arch or sch.default_arch, splits, config=config, progress=progress)
        info["pretrained_clean"] = dict(base.provenance)
    else:
        base = create_for(arch or sch.default_arch, splits, seed=config.seed)
    if tuple(base.input_shape) != tuple(splits.input_shape) or base.num_classes != splits.num_classes:
        raise InvalidArgument(f"model takes {base.input_shape} with {base.num_classes} classes but the data are "
                              f"{splits.input_shape} with {splits.num_classes} classes")
    result = sch.embed(base, splits, train=config, progress=progress, **embed_kwargs)
    result.info.update(info)
    result.victim.provenance.update({**splits.provenance(), "trained_on": "owner_train", "train": config.to_dict()})
    return result


def steal(victim: Any, pool: TensorData | torch.Tensor, *, attack: str = "soft-label", arch: str = "mlp",
          params: dict[str, Any] | None = None, budget: int | None = None, config: TrainConfig | None = None,
          key: Key | PathLike | None = None, postprocess: Sequence[Any] = (), progress: bool | None = None,
          num_classes: int | None = None, input_shape: Sequence[int] | None = None,
          class_names: Sequence[str] | None = None) -> ExtractionResult:
    """Extract a surrogate of ``arch`` from ``victim`` (model, file, callable or oracle) with ``attack``.

    ``key`` applies an API-time scheme's protection (``scheme.protect``) before the thief sees the oracle;
    ``postprocess`` adds output post-processors (top-k, hard-label, rounding …).
    """
    if isinstance(pool, torch.Tensor):
        # -1: no true labels; attacks that need them (distillation, JBDA's seeds) refuse instead of training on zeros
        pool = TensorData(pool, torch.full((len(pool),), -1, dtype=torch.long))
    oracle = as_oracle(victim, num_classes=num_classes, input_shape=input_shape or tuple(pool.x.shape[1:]))
    if key is not None:
        k = _key(key)
        oracle = scheme_for_key(k).protect(oracle, k)
    if postprocess:
        oracle = oracle.postprocess(*postprocess)
    if budget is not None:
        params = {**(params or {}), "budget": budget}
    atk = create_extraction_attack(attack, **(params or {}))
    shape = tuple(oracle.input_shape or input_shape or pool.x.shape[1:])
    names = tuple(class_names) if class_names else getattr(getattr(oracle, "model", None), "class_names", None)
    from .models.base import create_model

    surrogate = create_model(arch, shape, oracle.num_classes, class_names=names, seed=(config or TrainConfig()).seed)
    result = atk.run(oracle, pool, surrogate, train=config, progress=progress)
    result.surrogate.provenance.update({"stolen_with": attack, "attack_params": atk.params.to_dict(),
                                        "queries": result.queries, "train": (config or TrainConfig()).to_dict()})
    return result


def verify(suspect: Any, key: Key | PathLike, *, alpha: float = 1e-3, postprocess: Sequence[Any] = (),
           num_classes: int | None = None, input_shape: Sequence[int] | None = None, budget: int | None = None) -> Evidence:
    """Verify ``suspect`` (model, file, callable or oracle) against ``key``; returns :class:`Evidence`."""
    k = _key(key)
    oracle = as_oracle(suspect, num_classes=num_classes or k.meta.get("num_classes"),
                       input_shape=input_shape or k.meta.get("input_shape"), budget=budget)
    if postprocess:
        oracle = oracle.postprocess(*postprocess)
    return scheme_for_key(k).verify(oracle, k, alpha=alpha)


def test_accuracy(model: Classifier | PathLike, splits: Splits) -> float:
    return accuracy(_model(model), splits.test)
