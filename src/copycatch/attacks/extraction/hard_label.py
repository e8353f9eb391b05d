"""Hard-label extraction: the thief trains on the victim's top-1 labels only.

Papers: Tramèr et al., "Stealing Machine Learning Models via Prediction APIs" (USENIX Security 2016) — the
label-only setting; Orekondy et al., "Knockoff Nets" (CVPR 2019) — the ``--argmaxed`` variant; Tang et al., "Was my
Model Stolen? Feature Sharing for Robust and Transferable Watermarks" (ICLR 2022 submission), Sec. 5 ("the watermark
will be totally removed when adversary uses the hard label") — hard labels as a watermark-removal strategy.

The thief queries its inputs, keeps only ``argmax`` of each answer and trains the surrogate with
cross-entropy on those labels. Against a label-only API (``--post hard-label``) this is the natural
attack; against a full-posterior API it is the thief throwing away the scores on purpose, which strips
any watermark carried by the probabilities' fine structure (DynaMarks, DAWN-style perturbations).

Parameters (defaults):
    budget (None): queries to spend; None = one per attacker-pool input (at most one query per input).
    query_batch (256): inputs per oracle call.
    shuffle (True): draw the queried inputs at random from the pool (seeded by the training seed).
    data_fraction (1.0): γ, the share of the attacker pool the thief holds.

Deviation: an answer whose maximum is tied (e.g. an all-zero row from an aggressively quantised API) names
no class; such rows are paid for but left out of training, and their number is reported as
``info["ambiguous"]``.
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.errors import SuspectError
from ...data.base import TensorData
from ...oracles.base import Oracle
from .base import TransferSetAttack, register_extraction


def unique_top_label(answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax labels, mask of rows whose maximum is attained by exactly one class)."""
    top = answers.max(dim=1, keepdim=True).values
    unique = (answers == top).sum(dim=1) == 1
    return answers.argmax(dim=1), unique


@register_extraction
class HardLabelExtraction(TransferSetAttack):
    """Query the oracle and fit the surrogate to its top-1 labels only (cross-entropy)."""

    name = "hard-label"

    def transfer_set(
        self, inputs: TensorData, answers: torch.Tensor, oracle: Oracle
    ) -> tuple[TensorData, None, dict[str, Any]]:
        labels, unique = unique_top_label(answers)
        if not bool(unique.any()):
            raise SuspectError(f"{oracle.name} answered no input with a single top class; nothing to learn from")
        return TensorData(inputs.x[unique], labels[unique]), None, {"ambiguous": int((~unique).sum())}
