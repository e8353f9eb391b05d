"""Black-box access to a model: inputs in, probabilities (or labels) out, every query counted.

Extraction attacks and verification only ever see an :class:`Oracle`. Every
oracle answers ``query(x)`` with an N×C float tensor of probabilities; a
label-only oracle answers one-hot rows and says so in ``output_kind``.

Post-processors (:mod:`copycatch.oracles.postprocess`) compose around any oracle with
:meth:`Oracle.postprocess`; API-time watermarks are post-processors too.

Budgets are hard: a query that would overrun raises :class:`BudgetExceeded` before
anything is asked, so a thief's (or verifier's) spending is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from ..core.errors import BudgetExceeded, InvalidArgument, SuspectError
from ..core.runtime import progress as progress_bar
from ..data.base import to_float
from .postprocess import resolve

OutputKind = Literal["probs", "labels"]


class Oracle:
    """Base class. Subclasses implement :meth:`_answer` on an already-validated batch."""

    output_kind: OutputKind = "probs"

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int] | None = None,
        *,
        budget: int | None = None,
        name: str = "oracle",
    ):
        if num_classes < 2:
            raise InvalidArgument(f"an oracle needs at least 2 classes, got {num_classes}")
        if budget is not None and budget < 0:
            raise InvalidArgument(f"query budget must be >= 0, got {budget}")
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape) if input_shape is not None else None
        self.budget = budget
        self.queries = 0
        self.name = name

    # -- budget ----------------------------------------------------------------------------------------------------
    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries

    def set_budget(self, budget: int | None) -> Oracle:
        if budget is not None and budget < 0:
            raise InvalidArgument(f"query budget must be >= 0, got {budget}")
        self.budget = budget
        return self

    def _charge(self, n: int) -> None:
        if self.budget is not None and self.queries + n > self.budget:
            raise BudgetExceeded(
                f"query budget exceeded on {self.name}: {self.budget} queries allowed, {self.queries} spent, "
                f"this batch asks for {n}"
            )
        self.queries += n

    # -- queries ---------------------------------------------------------------------------------------------------
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Answer a batch of inputs (images N×C×H×W in [0, 1], int64 token ids N×L, audio N×1×S) with N×C
        probabilities (CPU float32)."""
        x = self._check_input(x)
        self._charge(len(x))
        if len(x) == 0:
            return torch.empty(0, self.num_classes)
        out = self._answer(x)
        return self._check_output(out, len(x))

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        # int64 token ids (text) stay ids: an embedding layer reads them as indices, never as floats
        x = x.detach().cpu() if x.dtype == torch.int64 else x.detach().float().cpu()
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise InvalidArgument(
                f"{self.name} expects inputs of shape N×{'×'.join(map(str, self.input_shape))}, got {tuple(x.shape)}"
            )
        if x.ndim < 2:
            raise InvalidArgument(f"{self.name} expects a batch of inputs, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise InvalidArgument(f"query to {self.name} contains NaN or Inf")
        return x

    def _check_output(self, out: Any, n: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            try:
                out = torch.as_tensor(np.asarray(out, dtype=np.float32))
            except (TypeError, ValueError) as exc:
                raise SuspectError(f"{self.name} answered something that is not numbers ({exc})") from None
        out = out.detach().float().cpu()
        if out.shape != (n, self.num_classes):
            raise SuspectError(f"{self.name} answered shape {tuple(out.shape)}, expected ({n}, {self.num_classes})")
        if not torch.isfinite(out).all():
            raise SuspectError(f"{self.name} answered NaN or Inf")
        return out

    # -- composition -----------------------------------------------------------------------------------------------
    def postprocess(self, *processors: Any) -> Oracle:
        """Wrap this oracle with post-processors (objects or spec strings like ``"top-k:k=3"``)."""
        return PostProcessedOracle(self, [resolve(p) for p in processors])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "output_kind": self.output_kind,
            "queries": self.queries,
            "budget": self.budget,
        }


class PostProcessedOracle(Oracle):
    """An oracle whose answers pass through a chain of post-processors."""

    def __init__(self, inner: Oracle, processors: Sequence[Any], *, budget: int | None = None):
        super().__init__(inner.num_classes, inner.input_shape, budget=budget, name=inner.name)
        self.inner = inner
        self.processors = list(processors)
        self.output_kind = inner.output_kind
        for p in self.processors:
            if getattr(p, "output_kind", "probs") == "labels":
                self.output_kind = "labels"

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner.query(x)
        for p in self.processors:
            out = p(out, x)
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["postprocessors"] = [p.spec() if hasattr(p, "spec") else type(p).__name__ for p in self.processors]
        d["inner"] = self.inner.describe()
        return d


def query_all(
    oracle: Oracle, x: torch.Tensor, *, batch_size: int = 256, progress: bool | None = None, desc: str = "query"
) -> torch.Tensor:
    """Answers for every row of ``x``, in batches, with a progress bar. ``x`` may be stored inputs
    (``TensorData.stored``: uint8 pixels, int16 samples), made model inputs one batch at a time."""
    if batch_size < 1:
        raise InvalidArgument(f"query batch size must be >= 1, got {batch_size}")
    starts = range(0, len(x), batch_size)
    batches = progress_bar(starts, total=len(starts), desc=desc, enabled=progress, unit="batch")
    outs = [oracle.query(to_float(x[s : s + batch_size])) for s in batches]
    return torch.cat(outs) if outs else torch.empty(0, oracle.num_classes)
