"""Quantised-posterior extraction: the thief trains on answers rounded to k probability levels.

Paper: Tang et al., "Was my Model Stolen? Feature Sharing for Robust and Transferable Watermarks" (ICLR 2022
submission), Sec. 5 "Quantization", Fig. 7: "the numerical precision is from 1000-level to 2-level (hard-label)";
Tramèr et al. (2016) and Orekondy et al. (2019b) for lower-precision predictions as a way around perturbation-based
defences.

Every answer is passed through the ``quantize`` post-processor (:mod:`copycatch.oracles.postprocess`): each
probability becomes the nearest of the k levels {0, 1/(k−1), …, 1}. Those k-level answers are what the
thief keeps; it trains the surrogate on them, rescaled to sum to one, with the soft-label KL loss.
The same information reaches the plain ``soft-label`` attack through ``--post quantize:levels=K``
(the API quantises); this attack is the thief quantising on its own side.

Parameters (defaults):
    levels (10): k, the number of probability levels, 2 … 1000.
    budget (None): queries to spend; None = one per attacker-pool input (at most one query per input).
    query_batch (256): inputs per oracle call.
    shuffle (True): draw the queried inputs at random from the pool (seeded by the training seed).
    data_fraction (1.0): γ, the share of the attacker pool the thief holds.

Deviations: quantisation is per probability, as the paper describes it, so 2 levels equal hard labels
only where the top probability is at least 1/2; a row quantised to all zeros carries no class and is
trained towards the uniform distribution (it says "no class reaches 1/(2(k−1))").
``info["levels_seen"]`` reports the distinct values among the kept answers (at most k).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ...core.errors import InvalidArgument
from ...data.base import TensorData
from ...models.train import soft_cross_entropy
from ...oracles.base import Oracle
from ...oracles.postprocess import Quantize
from .base import TransferSetAttack, answers_to_targets, register_extraction

MAX_LEVELS = 1000


@register_extraction
class QuantizedExtraction(TransferSetAttack):
    """Query the oracle, quantise each probability to k levels, and fit the surrogate to those answers."""

    name = "quantized"

    @dataclasses.dataclass(frozen=True)
    class Params(TransferSetAttack.Params):
        levels: int = 10

        def validate(self) -> None:
            super().validate()
            if not 2 <= self.levels <= MAX_LEVELS:
                raise InvalidArgument(f"levels must be in 2…{MAX_LEVELS}, got levels={self.levels}")

    def transfer_set(
        self, inputs: TensorData, answers: torch.Tensor, oracle: Oracle
    ) -> tuple[TensorData, Any, dict[str, Any]]:
        quantized = Quantize(levels=self.params.levels)(answers)
        info = {
            "levels": self.params.levels,
            "levels_seen": int(torch.unique(quantized).numel()),
            "all_zero_rows": int((quantized.sum(dim=1) == 0).sum()),
        }
        return TensorData(inputs.x, answers_to_targets(quantized)), soft_cross_entropy, info
