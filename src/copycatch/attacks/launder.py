"""Laundering as a workflow: a chain of removal attacks on the thief's data, its report, and the files it leaves.

:func:`launder` runs the chain on the split's ``attacker_pool`` (test accuracy on ``test`` before and after each
step) and returns a :class:`Laundering`; :meth:`Laundering.save` writes the laundered model, the deployment file
when the chain ends in input-side evasions (``<model>.evasion.safetensors``) and the keys a piracy attack made.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import InvalidArgument
from ..core.key import Key
from ..data.base import Splits
from ..models.base import Classifier
from ..models.io import save_model
from ..models.train import TrainConfig
from ..oracles.base import Oracle
from .removal.base import RemovalAttack, RemovalResult, resolve_removal, run_chain
from .removal.evasion import save_deployment


@dataclasses.dataclass
class Laundering:
    """The chain's attacks and every step's result; ``report`` is the JSON record of the run."""

    attacks: list[RemovalAttack]
    results: list[RemovalResult]
    report: dict[str, Any]

    @property
    def model(self) -> Classifier:
        return self.results[-1].model

    @property
    def evasions(self) -> list[Any]:
        return self.results[-1].evasions

    def oracle(self) -> Oracle:
        """The laundered deployment a verifier queries: the model behind any input-side evasions."""
        return self.results[-1].oracle()

    def pirate_keys(self) -> list[tuple[int, Key]]:
        """(step number from 1, key) for every step that embedded the thief's own watermark."""
        return [(i, r.info["key"]) for i, r in enumerate(self.results, 1) if isinstance(r.info.get("key"), Key)]

    def save(self, output: str | os.PathLike, *, pirate_key: str | os.PathLike | None = None) -> dict[str, Any]:
        """Write the model to ``output``, the deployment file beside it and the pirate keys; returns the paths."""
        output = Path(output)
        save_model(self.model, output)
        paths: dict[str, Any] = {"model": str(output)}
        keys = self.pirate_keys()
        for i, key in keys:
            path = Path(pirate_key) if pirate_key else output.with_name(_stem(output) + ".pirate.cckey")
            if len(keys) > 1:
                path = path.with_name(f"{path.stem}.{i}{path.suffix}")
            key.save(path)
            self.report["steps"][i - 1]["pirate_key"] = str(path)
            paths.setdefault("pirate_keys", []).append(str(path))
        if self.evasions:
            paths["deployment"] = str(save_deployment(output, self.model, self.evasions))
            self.report["deployment"] = paths["deployment"]
        return paths


def check_fits(model: Classifier, splits: Splits, specs: Sequence[str | RemovalAttack]) -> None:
    """The model must take the data's inputs; only a first ``transfer`` attack may change the label set."""
    if tuple(model.input_shape) != tuple(splits.input_shape):
        raise InvalidArgument(
            f"the model takes inputs shaped {tuple(model.input_shape)} but data set "
            f"{splits.dataset!r} has {tuple(splits.input_shape)}; pick the matching --data"
        )
    if model.num_classes != splits.num_classes and resolve_removal(specs[0]).name != "transfer":
        raise InvalidArgument(
            f"the model has {model.num_classes} classes but data set {splits.dataset!r} has "
            f"{splits.num_classes}; only a first `transfer` attack may change the label set"
        )


def launder(
    model: Classifier,
    specs: Sequence[str | RemovalAttack],
    splits: Splits,
    *,
    config: TrainConfig | None = None,
    evasions: Sequence[Any] = (),
    progress: bool | None = None,
) -> Laundering:
    """Apply ``specs`` in order to ``model`` on the thief's data; ``evasions`` are ones it already answers through."""
    if not specs:
        raise InvalidArgument("give at least one removal attack")
    check_fits(model, splits, specs)
    attacks = [resolve_removal(s) for s in specs]
    results = run_chain(
        model, attacks, splits.attacker_pool, test=splits.test, train=config, progress=progress, evasions=evasions
    )
    report: dict[str, Any] = {
        "data": splits.dataset,
        "thief_examples": len(splits.attacker_pool),
        "test_examples": len(splits.test),
        "steps": [_step(attack, result) for attack, result in zip(attacks, results)],
    }
    return Laundering(attacks, results, report)


def spec_text(attack: RemovalAttack) -> str:
    """The attack as a SPEC naming only the parameters that differ from their defaults."""
    defaults = {name: jsonable(default) for name, _, default in type(attack).Params.describe()}
    changed = {k: v for k, v in attack.params.to_dict().items() if v != defaults.get(k)}
    return attack.name + (":" + ",".join(f"{k}={show_value(v)}" for k, v in changed.items()) if changed else "")


def show_value(value: Any) -> str:
    """A parameter value as written in a SPEC."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return "''" if value == "" else str(value)


def jsonable(value: Any) -> Any:
    """The JSON part of an attack's info (tensors and keys are summarised, not dumped)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape)}
    if isinstance(value, Key):
        return {"key_digest": value.digest, "scheme": value.scheme}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _step(attack: RemovalAttack, result: RemovalResult) -> dict[str, Any]:
    return {
        "attack": attack.name,
        "spec": spec_text(attack),
        "params": attack.params.to_dict(),
        "accuracy_before": result.accuracy_before,
        "accuracy_after": result.accuracy_after,
        "seconds": round(result.seconds, 3),
        "info": jsonable({k: v for k, v in result.info.items() if k != "summary"}),
        "summary": result.info.get("summary", ""),
    }


def _stem(path: Path) -> str:
    return path.name.removesuffix(".safetensors")
