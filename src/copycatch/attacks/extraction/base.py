"""The interface of extraction attacks: they see only an :class:`~copycatch.oracle.Oracle`.

Every attack has a query budget, never spends more than it, and reports what it spent.
The surrogate's architecture is the thief's free choice: the attack trains whatever
model it is given.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import torch

from ...data import TensorData
from ...errors import BudgetExceeded, InvalidArgument
from ...models import Classifier
from ...oracle import Oracle
from ...params import Params as BaseParams
from ...registry import Registry
from ...train import TrainConfig
from ...utils import progress as progress_bar


@dataclasses.dataclass
class ExtractionResult:
    surrogate: Classifier
    queries: int
    seconds: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class ExtractionAttack:
    """Base class: subclasses implement :meth:`run`."""

    name: ClassVar[str] = ""

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "extraction attack"
        budget: int | None = None  # None: one query per attacker-pool input

    def __init__(self, params: BaseParams | None = None, **kwargs: Any):
        self.params = params if params is not None else self.Params.from_dict(kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"

    def run(self, oracle: Oracle, pool: TensorData, surrogate: Classifier, *, train: TrainConfig | None = None,
            progress: bool | None = None) -> ExtractionResult:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------------------------
    def plan_budget(self, oracle: Oracle, available: int) -> int:
        """Queries this run will spend: the budget (default: ``available``), checked against the oracle's."""
        budget = self.params.budget if self.params.budget is not None else available
        if budget < 1:
            raise InvalidArgument(f"query budget must be >= 1, got {budget}")
        if oracle.remaining is not None and budget > oracle.remaining:
            raise BudgetExceeded(f"the attack would spend {budget} queries but the oracle allows only "
                                 f"{oracle.remaining} more; lower --budget")
        return budget


def query_all(oracle: Oracle, x: torch.Tensor, *, batch_size: int = 256, progress: bool | None = None,
              desc: str = "query") -> torch.Tensor:
    """Answers for every row of ``x``, in batches, with a progress bar."""
    if batch_size < 1:
        raise InvalidArgument(f"query batch size must be >= 1, got {batch_size}")
    starts = range(0, len(x), batch_size)
    outs = [oracle.query(x[s:s + batch_size]) for s in progress_bar(starts, total=len(starts), desc=desc, enabled=progress,
                                                                      unit="batch")]
    return torch.cat(outs) if outs else torch.empty(0, oracle.num_classes)


EXTRACTION_ATTACKS: Registry[type[ExtractionAttack]] = Registry("extraction attack")


def register_extraction(cls: type[ExtractionAttack]) -> type[ExtractionAttack]:
    EXTRACTION_ATTACKS.register(cls.name)(cls)
    return cls


def list_extraction_attacks(pattern: str = "*") -> list[str]:
    return EXTRACTION_ATTACKS.list(pattern)


def create_extraction_attack(name: str, **params: Any) -> ExtractionAttack:
    cls = EXTRACTION_ATTACKS.get(name).factory
    return cls(cls.Params.from_dict({k: v for k, v in params.items() if v is not None}))


def timed(fn):
    """Decorator filling ``seconds`` of an :class:`ExtractionResult`."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        result.seconds = time.perf_counter() - start
        return result

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper
