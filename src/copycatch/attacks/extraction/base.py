"""The interface of extraction attacks: they see only an :class:`~copycatch.oracles.base.Oracle`.

Every attack has a query budget, never spends more than it, and reports what it spent.
The surrogate's architecture is the thief's free choice: the attack trains whatever
model it is given.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.errors import BudgetExceeded, InvalidArgument
from ...core.params import Params as BaseParams
from ...core.registry import Registry
from ...data.base import TensorData
from ...models.base import Classifier
from ...models.train import TrainConfig, fit
from ...oracles.base import Oracle, query_all


@dataclasses.dataclass
class ExtractionResult:
    surrogate: Classifier
    queries: int
    seconds: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class ExtractionAttack:
    """Base class: subclasses implement :meth:`run`."""

    name: ClassVar[str] = ""
    # the victim modalities (data.base.MODALITIES) the attack applies to: one that only queries the thief's inputs and
    # trains on the answers applies to all; attacks.steal refuses the others
    modalities: ClassVar[tuple[str, ...]] = ("image", "text", "audio")

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "extraction attack"
        budget: int | None = None  # None: one query per attacker-pool input
        # γ of the DynaMarks paper: the share of the attacker pool the thief holds (drawn at random, seeded)
        data_fraction: float = 1.0

        def validate(self) -> None:
            if not 0.0 < self.data_fraction <= 1.0:
                raise InvalidArgument(f"data_fraction (γ) must be in (0, 1], got data_fraction={self.data_fraction}")

    def __init__(self, params: BaseParams | None = None, **kwargs: Any):
        self.params = params if params is not None else self.Params.from_dict(kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"

    def run(
        self,
        oracle: Oracle,
        pool: TensorData,
        surrogate: Classifier,
        *,
        train: TrainConfig | None = None,
        progress: bool | None = None,
    ) -> ExtractionResult:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------------------------
    def plan_budget(self, oracle: Oracle, available: int) -> int:
        """Queries this run will spend: the budget (default: ``available``), checked against the oracle's."""
        budget = self.params.budget if self.params.budget is not None else available
        if budget < 1:
            raise InvalidArgument(f"query budget must be >= 1, got {budget}")
        if oracle.remaining is not None and budget > oracle.remaining:
            raise BudgetExceeded(
                f"the attack would spend {budget} queries but the oracle allows only "
                f"{oracle.remaining} more; lower --budget"
            )
        return budget

    def attacker_data(self, pool: TensorData, seed: int) -> TensorData:
        """The thief's share γ (``data_fraction``) of ``pool``: a seeded random subset, at least one input."""
        if len(pool) == 0:
            raise InvalidArgument("the attacker pool is empty; the thief needs inputs to query")
        if self.params.data_fraction >= 1.0:
            return pool
        keep = max(1, round(self.params.data_fraction * len(pool)))
        return pool.subset(torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:keep])


def answers_to_targets(answers: torch.Tensor) -> torch.Tensor:
    """Oracle answers as training targets: rows rescaled to sum to 1.

    Post-processed answers (top-k without renormalisation, k-level quantisation) need not sum to 1;
    a row that is all zeros (every probability rounded away) carries no class information and
    becomes uniform.
    """
    answers = answers.clamp_min(0)
    total = answers.sum(dim=1, keepdim=True)
    uniform = torch.full_like(answers, 1.0 / answers.shape[1])
    return torch.where(total > 0, answers / total.clamp_min(1e-12), uniform)


def draw_indices(n_pool: int, n: int, seed: int, *, shuffle: bool = True, refill: bool = False) -> torch.Tensor:
    """``n`` pool indices: a seeded permutation, or the pool in order; ``refill`` starts a fresh permutation when
    the pool is used up (Knockoff's sampling), otherwise at most ``n_pool`` indices come back."""
    gen = torch.Generator().manual_seed(seed)
    rounds = -(-n // n_pool) if refill else 1
    parts = [torch.randperm(n_pool, generator=gen) if shuffle else torch.arange(n_pool) for _ in range(rounds)]
    return torch.cat(parts)[:n]


class TransferSetAttack(ExtractionAttack):
    """Base of one-shot attacks: draw inputs, query them in batches, train once on targets made from the answers.

    Subclasses say how many queries one input costs (:meth:`queries_per_input`), may change how an input is asked
    (:meth:`answer`), and turn answers into a training set and loss (:meth:`transfer_set`).
    """

    refill: ClassVar[bool] = False  # draw beyond the pool by reshuffling it (inputs then repeat)

    @dataclasses.dataclass(frozen=True)
    class Params(ExtractionAttack.Params):
        query_batch: int = 256
        shuffle: bool = True

        def validate(self) -> None:
            super().validate()
            if self.query_batch < 1:
                raise InvalidArgument(f"query_batch must be >= 1, got query_batch={self.query_batch}")

    def queries_per_input(self) -> int:
        return 1

    def answer(self, oracle: Oracle, x: torch.Tensor, *, progress: bool | None) -> torch.Tensor:
        return query_all(oracle, x, batch_size=self.params.query_batch, progress=progress, desc="query victim")

    def transfer_set(
        self, inputs: TensorData, answers: torch.Tensor, oracle: Oracle
    ) -> tuple[TensorData, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, dict[str, Any]]:
        """(training set, loss or None for the default, extra info) from the queried inputs and their answers."""
        raise NotImplementedError

    def check(self, oracle: Oracle, surrogate: Classifier) -> None:
        """Refuse an oracle or surrogate this attack cannot use, before any query (every one is fine here)."""

    def student(self, surrogate: Classifier) -> nn.Module:
        """The module ``fit`` trains: the surrogate itself, unless the attack trains a view of it."""
        return surrogate

    def after_fit(self, surrogate: Classifier, inputs: TensorData, train: TrainConfig) -> None:
        """Anything the surrogate needs once trained (nothing here)."""

    def run(
        self,
        oracle: Oracle,
        pool: TensorData,
        surrogate: Classifier,
        *,
        train: TrainConfig | None = None,
        progress: bool | None = None,
    ) -> ExtractionResult:
        start = time.perf_counter()
        self.check(oracle, surrogate)
        train = train or TrainConfig()
        pool = self.attacker_data(pool, train.seed)
        per_input = self.queries_per_input()
        budget = self.plan_budget(oracle, len(pool) * per_input)
        n_inputs = budget // per_input
        if n_inputs < 1:
            raise InvalidArgument(
                f"a budget of {budget} queries cannot pay for one input at {per_input} queries each; "
                f"raise --budget to at least {per_input}"
            )
        inputs = pool.subset(
            draw_indices(len(pool), n_inputs, train.seed, shuffle=self.params.shuffle, refill=self.refill)
        )
        before = oracle.queries
        answers = self.answer(oracle, inputs.x, progress=progress)
        spent = oracle.queries - before
        data, loss_fn, info = self.transfer_set(inputs, answers, oracle)
        result = fit(self.student(surrogate), data, train, loss_fn=loss_fn, progress=progress, desc="train surrogate")
        self.after_fit(surrogate, inputs, train)
        info = {"training": result.to_dict(), "transfer_set": len(data), "inputs_queried": len(inputs), **info}
        return ExtractionResult(surrogate, spent, time.perf_counter() - start, info)


EXTRACTION_ATTACKS: Registry[type[ExtractionAttack]] = Registry("extraction attack")


def register_extraction(cls: type[ExtractionAttack]) -> type[ExtractionAttack]:
    EXTRACTION_ATTACKS.register(cls.name)(cls)
    return cls


def list_extraction_attacks(pattern: str = "*") -> list[str]:
    return EXTRACTION_ATTACKS.list(pattern)


def create_extraction_attack(name: str, **params: Any) -> ExtractionAttack:
    return EXTRACTION_ATTACKS.create(name, **params)


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
