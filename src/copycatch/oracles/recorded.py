"""The victim as a resumable ``steal`` sees it: answers already paid for come from the run's checkpoint."""

from __future__ import annotations

import torch

from ..core.checkpoint import RunCheckpoint
from .base import Oracle


class RecordedOracle(Oracle):
    """``inner`` behind a run's checkpoint (:class:`~copycatch.core.checkpoint.RunCheckpoint`).

    Each batch is answered from the checkpoint's record while a resumed run replays what it asked before, and
    bought from ``inner`` (then recorded) past the record. Wrap the victim itself, before any protection or
    post-processor: those run again on the recorded answers, so their own random draws repeat too. The query count
    and budget here are the run's as a whole, replayed answers included, so an attack spends exactly as it would
    uninterrupted; ``inner`` counts only what is bought.
    """

    def __init__(self, inner: Oracle, checkpoint: RunCheckpoint):
        super().__init__(inner.num_classes, inner.input_shape, budget=inner.remaining, name=inner.name)
        self.inner, self.checkpoint = inner, checkpoint
        self.output_kind = inner.output_kind
        # a local victim's model names the classes the surrogate is given (attacks.steal reads oracle.model)
        self.model = getattr(inner, "model", None)

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        return self.checkpoint.answers(x, lambda: self.inner.query(x))
