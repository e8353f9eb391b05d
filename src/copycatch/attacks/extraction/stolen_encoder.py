"""StolenEncoder: steal a pre-trained encoder by matching its embeddings on the thief's images and their augmentations.

Paper: Y. Liu, J. Jia, H. Liu and N. Z. Gong, "StolenEncoder: Stealing Pre-trained Encoders in Self-supervised
Learning", ACM CCS 2022 (arXiv 2201.05889), §4 (Eq. 3-4). MEA-Defender (Lv et al., IEEE S&P 2024, §5.2, Table 1)
uses it against its watermarked SimCLR encoders.

The thief queries the victim encoder h_t once per image x of its pool (the surrogate-data set) and trains the
stolen encoder h_s to minimise

    L = −Σ_x [ sim(h_s(x), h_t(x)) + λ · sim(h_s(A(x)), h_t(x)) ],    sim the cosine similarity,

where A is a random data augmentation drawn afresh at every step. The augmented term is what lets StolenEncoder
steal with few queries: the victim's embedding of x is the target for every augmented view of x, so the views cost
no queries. (ContSteal, Sha et al., CVPR 2023, queries the views themselves instead.)

Parameters (defaults):
    lam (1.0): λ, weight of the augmented-view term (the paper's default).
    budget (None): queries to spend; None = one per attacker-pool input (one query per image).
    query_batch (256): inputs per oracle call.
    shuffle (True): draw the queried inputs at random from the pool (seeded by the training seed).
    data_fraction (1.0): γ, the share of the attacker pool the thief holds.

Deviations: A is copycatch's SimCLR augmentation for small grayscale images (:class:`copycatch.models.simclr.Augment`:
random resized crop, shift, flip, brightness/contrast jitter, noise, erasing) instead of the paper's ImageNet-style
colour augmentations; the loss is averaged over the batch instead of summed (a rescaled learning rate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import InvalidArgument
from ...models.base import Classifier
from ...models.simclr import Augment
from .base import TransferSetAttack, register_extraction
from .embedding_regression import EncoderExtractionAttack


class AugmentedEmbedding(nn.Module):
    """The surrogate's embeddings of a batch and of one random view of it, stacked (2N rows)."""

    def __init__(self, surrogate: Classifier, augment: Augment):
        super().__init__()
        self.surrogate = surrogate
        self.augment = augment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.surrogate.features(torch.cat([x, self.augment(x)]))


def stolen_encoder_loss(lam: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eq. 4 on a batch: −mean[sim(h_s(x), h_t(x)) + λ·sim(h_s(A(x)), h_t(x))]."""

    def loss(stacked: torch.Tensor, victim: torch.Tensor) -> torch.Tensor:
        plain, viewed = stacked[: len(victim)], stacked[len(victim) :]
        return -(F.cosine_similarity(plain, victim, dim=1) + lam * F.cosine_similarity(viewed, victim, dim=1)).mean()

    return loss


@register_extraction
class StolenEncoder(EncoderExtractionAttack):
    """StolenEncoder (CCS 2022): match the victim's embedding of each image on it and on its augmented views."""

    name = "stolen-encoder"

    @dataclasses.dataclass(frozen=True)
    class Params(TransferSetAttack.Params):
        lam: float = 1.0

        def validate(self) -> None:
            super().validate()
            if not self.lam >= 0:
                raise InvalidArgument(f"lam (λ) must be >= 0, got lam={self.lam}")

    def student(self, surrogate: Classifier) -> nn.Module:
        return AugmentedEmbedding(surrogate, Augment())

    def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return stolen_encoder_loss(self.params.lam)
