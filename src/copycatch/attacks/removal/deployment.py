"""The thief's deployment as an oracle: a model (or any oracle) answering through input-side evasions.

The evasions themselves (:mod:`.evasion`) are removal attacks; this module only composes them, so that
:class:`~.base.RemovalResult` can hand a verifier the deployment without importing the attacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...core.errors import InvalidArgument
from ...models.base import Classifier
from ...models.io import weights_digest
from ...models.train import EVAL_BATCH
from ...oracles.base import Oracle
from ...oracles.local import ModelOracle

AnswerFn = Callable[[torch.Tensor], torch.Tensor]


class EvadingOracle(Oracle):
    """A model (or an oracle) answering through input-side evasions, the first one outermost.

    Random choices (noise, random labels) come from generators seeded by each evasion's
    ``seed``, so a fresh oracle answers a query sequence reproducibly.
    """

    def __init__(
        self,
        target: Any,
        evasions: Sequence[Any],
        *,
        budget: int | None = None,
        batch_size: int = EVAL_BATCH,
        name: str | None = None,
        check_digest: bool = True,
    ):
        self.evasions = list(evasions)
        for ev in self.evasions:
            if not getattr(ev, "input_side", False):
                raise InvalidArgument(f"{ev!r} is not an input-side evasion")
        if isinstance(target, ModelOracle) and isinstance(target.model, Classifier):
            target = target.model
        if isinstance(target, Classifier):
            self.model: Classifier | None = target.eval()
            self.inner: Oracle | None = None
            num_classes, shape = target.num_classes, target.input_shape
        elif isinstance(target, Oracle):
            self.model, self.inner = None, target
            num_classes, shape = target.num_classes, target.input_shape
        else:
            raise InvalidArgument(f"evasions wrap a copycatch model or an Oracle, not a {type(target).__name__}")
        super().__init__(
            num_classes,
            shape,
            budget=budget,
            name=name
            or f"{getattr(target, 'arch', getattr(target, 'name', 'model'))} behind "
            f"{'+'.join(ev.name for ev in self.evasions) or 'nothing'}",
        )
        if self.model is None:
            needy = [ev.name for ev in self.evasions if ev.needs_model]
            if needy:
                raise InvalidArgument(
                    f"evasion {needy[0]!r} reads the model's internals; wrap the model, not a black-box oracle"
                )
        elif check_digest:
            digest = weights_digest(self.model)
            for ev in self.evasions:
                if ev.fitted_to is not None and ev.fitted_to != digest:
                    raise InvalidArgument(
                        f"evasion {ev.name!r} was fitted to another model (weights changed since); "
                        "fit it again on this one"
                    )
        self.batch_size = batch_size
        self.generators = [torch.Generator().manual_seed(int(getattr(ev.params, "seed", 0))) for ev in self.evasions]
        self.device = next(self.model.parameters()).device if self.model is not None else torch.device("cpu")

    def model_probs(self, x: torch.Tensor) -> torch.Tensor:
        if self.inner is not None:
            return self.inner.query(x)
        return torch.softmax(self.model_logits(x), dim=1)

    @torch.no_grad()
    def model_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None  # guarded in __init__ for evasions that need it
        outs = [
            self.model(x[i : i + self.batch_size].to(self.device)).float().cpu()
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(outs)

    @torch.no_grad()
    def model_features(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        outs = [
            self.model.features(x[i : i + self.batch_size].to(self.device)).float().cpu()
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(outs)

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        def answer_from(i: int) -> AnswerFn:
            if i == len(self.evasions):
                return self.model_probs
            return lambda z: self.evasions[i].respond(self, i, z, answer_from(i + 1))

        return answer_from(0)(x)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["evasions"] = [{"attack": ev.name, "params": ev.params.to_dict()} for ev in self.evasions]
        return d
