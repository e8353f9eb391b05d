"""An in-process ``nn.Module`` as an oracle: what the owner serves and what a thief holds after a theft."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import InvalidArgument
from ..models.train import EVAL_BATCH
from .base import Oracle


class ModelOracle(Oracle):
    """A local ``nn.Module`` answering softmax probabilities."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        budget: int | None = None,
        batch_size: int = EVAL_BATCH,
        device: str | torch.device | None = None,
        name: str = "model",
    ):
        num_classes = num_classes or getattr(model, "num_classes", None)
        if num_classes is None:
            raise InvalidArgument("ModelOracle needs num_classes for a plain nn.Module")
        super().__init__(num_classes, input_shape or getattr(model, "input_shape", None), budget=budget, name=name)
        self.model = model.eval()
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @torch.no_grad()
    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, len(x), self.batch_size):
            logits = self.model(x[i : i + self.batch_size].to(self.device))
            outs.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(outs)
