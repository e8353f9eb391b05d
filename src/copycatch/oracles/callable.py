"""Any Python callable as an oracle: a scikit-learn ``predict_proba``, a wrapped remote client, a test double."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from ..core.errors import InvalidArgument, SuspectError
from .base import Oracle, OutputKind


class CallableOracle(Oracle):
    """Any Python callable: ``fn(batch) -> probabilities (N×C) or labels (N,)``.

    ``batch`` is passed as a NumPy array shaped like ``input_format``: ``"nchw"``
    (default), ``"nhwc"`` or ``"flat"`` (N×D, e.g. scikit-learn's ``predict_proba``).
    A 1-D integer answer is taken as labels and turned into one-hot rows.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        num_classes: int,
        *,
        input_shape: Sequence[int] | None = None,
        input_format: Literal["nchw", "nhwc", "flat", "torch"] = "nchw",
        budget: int | None = None,
        output_kind: OutputKind | None = None,
        name: str = "callable",
    ):
        super().__init__(num_classes, input_shape, budget=budget, name=name)
        if input_format not in ("nchw", "nhwc", "flat", "torch"):
            raise InvalidArgument(f"input_format must be nchw, nhwc, flat or torch, got {input_format!r}")
        self.fn = fn
        self.input_format = input_format
        if output_kind is not None:
            self.output_kind = output_kind

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_format == "torch":
            batch: Any = x
        else:
            arr = x.numpy()
            if self.input_format == "nhwc":
                arr = arr.transpose(0, 2, 3, 1)
            elif self.input_format == "flat":
                arr = arr.reshape(len(arr), -1)
            batch = arr
        try:
            out = self.fn(batch)
        except Exception as exc:  # the suspect's own failure, reported as such
            raise SuspectError(f"{self.name} raised {type(exc).__name__}: {exc}") from None
        out_t = torch.as_tensor(np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out))
        if out_t.ndim == 1:
            if out_t.dtype.is_floating_point and not torch.equal(out_t, out_t.round()):
                raise SuspectError(
                    f"{self.name} answered a 1-D array of non-integers; expected labels or N×C probabilities"
                )
            labels = out_t.long()
            if len(labels) != len(x):
                raise SuspectError(f"{self.name} answered {len(labels)} labels for {len(x)} inputs")
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise SuspectError(f"{self.name} answered labels outside 0..{self.num_classes - 1}")
            self.output_kind = "labels"
            return torch.nn.functional.one_hot(labels, self.num_classes).float()
        return out_t.float()
