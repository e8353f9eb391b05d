"""Embedding regression: the plain encoder thief, and the base of every encoder extraction attack.

The thief queries an encoder API (an embedding oracle, :mod:`copycatch.oracles.embedding`) once per image of its
pool and trains a surrogate encoder so that its embedding of each image matches the victim's: ``cosine`` (1 − cos)
or ``mse`` regression. This is the baseline StolenEncoder improves on (Liu, Jia, Liu and Gong, "StolenEncoder:
Stealing Pre-trained Encoders in Self-supervised Learning", ACM CCS 2022, arXiv 2201.05889, §4: their loss without
the augmentation term) and the query-once regime of encoder stealing (Dziedzic et al., "On the Difficulty of
Defending Self-Supervised Learning against Model Extraction", ICML 2022).

The surrogate is the thief's choice of architecture (any copycatch model; an encoder architecture from
:mod:`copycatch.models.encoder` is the natural one) as long as its embedding (``features``) is as wide as the
victim's; its downstream head is left untouched (the thief trains its own downstream classifier later). Encoder
attacks declare ``target = "encoder"``: they refuse an oracle that answers class probabilities, and the classifier
attacks' registry tests leave them out.

Parameters (defaults):
    loss ("cosine"): "cosine" (mean 1 − cosine similarity) or "mse" (mean squared error on the raw embeddings).
    budget (None): queries to spend; None = one per attacker-pool input (one query per image).
    query_batch (256): inputs per oracle call.
    shuffle (True): draw the queried inputs at random from the pool (seeded by the training seed).
    data_fraction (1.0): γ, the share of the attacker pool the thief holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import InvalidArgument
from ...data.base import TensorData
from ...models.base import Classifier
from ...models.encoder import embedding_dim
from ...models.simclr import recalibrate_batchnorm
from ...models.train import TrainConfig
from ...oracles.base import Oracle
from ...oracles.embedding import require_embedding_oracle
from .base import TransferSetAttack, register_extraction

ENCODER_TARGET = "encoder"


class SurrogateEmbedding(nn.Module):
    """What ``fit`` trains: the surrogate's embedding (its ``features``) of each input."""

    def __init__(self, surrogate: Classifier):
        super().__init__()
        self.surrogate = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.surrogate.features(x)


class EncoderExtractionAttack(TransferSetAttack):
    """Base of encoder thieves: query the victim's embeddings once per image, then train the surrogate's embedding
    on them with :meth:`student` (the module ``fit`` trains) and :meth:`loss` (its output against the answers)."""

    target: ClassVar[str] = ENCODER_TARGET

    def student(self, surrogate: Classifier) -> nn.Module:
        return SurrogateEmbedding(surrogate)

    def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def transfer_set(
        self, inputs: TensorData, answers: torch.Tensor, oracle: Oracle
    ) -> tuple[TensorData, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], dict[str, Any]]:
        return TensorData(inputs.stored, answers), self.loss(), {"embedding_dim": answers.shape[1]}

    def check(self, oracle: Oracle, surrogate: Classifier) -> None:
        require_embedding_oracle(oracle, f"extraction attack {self.name!r}")
        if embedding_dim(surrogate) != oracle.num_classes:
            raise InvalidArgument(
                f"the surrogate {surrogate.arch!r} embeds into {embedding_dim(surrogate)} dimensions but the victim "
                f"answers {oracle.num_classes}; build the surrogate with dim={oracle.num_classes}"
            )

    def after_fit(self, surrogate: Classifier, inputs: TensorData, train: TrainConfig) -> None:
        recalibrate_batchnorm(surrogate, inputs.stored, batch_size=train.batch_size)


def cosine_loss(student: torch.Tensor, victim: torch.Tensor) -> torch.Tensor:
    """Mean 1 − cos(student row, victim row)."""
    return (1 - F.cosine_similarity(student, victim, dim=1)).mean()


@register_extraction
class EmbeddingRegression(EncoderExtractionAttack):
    """Encoder thief: regress the surrogate's embeddings onto the victim's (cosine or MSE), one query per image."""

    name = "embedding-regression"

    @dataclasses.dataclass(frozen=True)
    class Params(TransferSetAttack.Params):
        loss: Literal["cosine", "mse"] = "cosine"

        def validate(self) -> None:
            super().validate()
            if self.loss not in ("cosine", "mse"):
                raise InvalidArgument(f"loss must be cosine or mse, got loss={self.loss!r}")

    def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return cosine_loss if self.params.loss == "cosine" else F.mse_loss
