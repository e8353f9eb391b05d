"""The interface of removal attacks: white-box laundering of a model the thief holds.

A removal attack takes a :class:`~copycatch.models.Classifier` and the thief's data
(``attacker_pool``: inputs, and labels only where the attack may use them) and returns
a new model. Every attack reports test accuracy before and after when test data are given.
Attacks chain: ``steal`` then any sequence of removals (see :func:`run_chain`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from ...data import TensorData
from ...models import Classifier
from ...params import Params as BaseParams
from ...params import parse_spec
from ...registry import Registry
from ...train import TrainConfig, accuracy


@dataclasses.dataclass
class RemovalResult:
    model: Classifier
    accuracy_before: float | None
    accuracy_after: float | None
    seconds: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class RemovalAttack:
    """Base class: subclasses implement :meth:`apply` (which may modify its copy in place)."""

    name: ClassVar[str] = ""
    # does the attack use the thief's true labels? (False: only inputs, or the model's own predictions)
    uses_labels: ClassVar[bool] = False

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "removal attack"

    def __init__(self, params: BaseParams | None = None, **kwargs: Any):
        self.params = params if params is not None else self.Params.from_dict(kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"

    def apply(self, model: Classifier, data: TensorData, *, train: TrainConfig, progress: bool | None = None
              ) -> dict[str, Any]:
        """Launder ``model`` in place; return details for the report."""
        raise NotImplementedError

    def run(self, model: Classifier, data: TensorData, *, test: TensorData | None = None,
            train: TrainConfig | None = None, progress: bool | None = None) -> RemovalResult:
        start = time.perf_counter()
        work = copy.deepcopy(model)
        before = accuracy(model, test) if test is not None and len(test) else None
        info = self.apply(work, data, train=train or TrainConfig(), progress=progress) or {}
        work.eval()
        after = accuracy(work, test) if test is not None and len(test) else None
        work.provenance = {**model.provenance, "removals": [*model.provenance.get("removals", []),
                                                            {"attack": self.name, "params": self.params.to_dict()}]}
        return RemovalResult(work, before, after, time.perf_counter() - start, info)


REMOVAL_ATTACKS: Registry[type[RemovalAttack]] = Registry("removal attack")


def register_removal(cls: type[RemovalAttack]) -> type[RemovalAttack]:
    REMOVAL_ATTACKS.register(cls.name)(cls)
    return cls


def list_removal_attacks(pattern: str = "*") -> list[str]:
    return REMOVAL_ATTACKS.list(pattern)


def create_removal_attack(name: str, **params: Any) -> RemovalAttack:
    cls = REMOVAL_ATTACKS.get(name).factory
    return cls(cls.Params.from_dict({k: v for k, v in params.items() if v is not None}))


def run_chain(model: Classifier, specs: Sequence[str | RemovalAttack], data: TensorData, *,
              test: TensorData | None = None, train: TrainConfig | None = None,
              progress: bool | None = None) -> list[RemovalResult]:
    """Apply removals in order (``"prune:rate=0.5"``, ``"fine-tune:epochs=2"`` …); returns every step's result."""
    results = []
    for spec in specs:
        if isinstance(spec, str):
            name, kwargs = parse_spec(spec)
            spec = create_removal_attack(name, **kwargs)
        result = spec.run(model, data, test=test, train=train, progress=progress)
        results.append(result)
        model = result.model
    return results
