"""Hinton-style distillation of an encoder: the encoder thief of MEA-Defender's Table 1 ("Hinton et al." rows, SSL).

Papers: Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024, §5.2 and
Table 1, which steals its SimCLR encoders with the released code of G. Hinton, O. Vinyals and J. Dean, "Distilling
the Knowledge in a Neural Network" (NIPS Deep Learning Workshop 2014, arXiv 1503.02531). For an encoder the
teacher's output is its embedding, which MEA-Defender treats as a distribution (its L_com is a KL divergence between
feature vectors, Eq. 6); the student minimises

    T² · KL( softmax(h_t(x) / T) ‖ softmax(h_s(x) / T) ),

one query per image of the thief's pool.

Parameters (defaults):
    temperature (4.0): T. Our choice: the paper does not give the encoder setting; 4 keeps the softened embedding
        informative on 64-dimensional embeddings where T = 20 (the classifier default) flattens it.
    budget (None): queries to spend; None = one per attacker-pool input (one query per image).
    query_batch (256): inputs per oracle call.
    shuffle (True): draw the queried inputs at random from the pool (seeded by the training seed).
    data_fraction (1.0): γ, the share of the attacker pool the thief holds.

Deviations: no hard-label cross-entropy term (an encoder has no classes and the thief's pool no labels of the
victim's pre-training); the embeddings are used as logits as they are, without the log-probability recovery the
classifier distillation needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...core.errors import InvalidArgument
from .base import TransferSetAttack, register_extraction
from .embedding_regression import EncoderExtractionAttack


def softened_kl(temperature: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""

    def loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        target = torch.softmax(teacher / temperature, dim=1)
        return temperature**2 * F.kl_div(F.log_softmax(student / temperature, dim=1), target, reduction="batchmean")

    return loss


@register_extraction
class HintonEncoder(EncoderExtractionAttack):
    """Hinton distillation of an encoder: T²·KL between the softened victim and surrogate embeddings."""

    name = "hinton-encoder"

    @dataclasses.dataclass(frozen=True)
    class Params(TransferSetAttack.Params):
        temperature: float = 4.0

        def validate(self) -> None:
            super().validate()
            if not self.temperature > 0:
                raise InvalidArgument(f"temperature must be positive, got temperature={self.temperature}")

    def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return softened_kl(self.params.temperature)
