"""Stealing as a workflow: the thief's query set, the API it sees, the surrogate it trains, the record it keeps.

Every modality is stolen the same way; what differs is what the surrogate is told about its inputs. An image
surrogate needs the shape alone. A text surrogate reads token ids, so it needs the size of the vocabulary they come
from: a text API encodes the strings it is sent with the victim's vocabulary (stored in the victim's model file),
so the thief's texts (``TensorData.texts``) are encoded with it before they are asked, and the surrogate embeds
that vocabulary's ids and is saved with it. An audio surrogate is told the victim's sample rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.errors import InvalidArgument
from ..data.base import Splits, TensorData, load_dataset
from ..data.vocabulary import Vocabulary
from ..models.base import Classifier, create_model, list_models, model_modality
from ..models.train import TrainConfig
from ..oracles.base import Oracle
from .extraction.base import ExtractionResult, create_extraction_attack

SPLIT_PARTS = ("attacker_pool", "owner_train", "owner_holdout")
# the surrogate a thief trains when it names none: a small model of the victim's modality
DEFAULT_ARCH = {"image": "mlp", "text": "text-cnn", "audio": "logmel-cnn"}


def unlabelled(x: torch.Tensor) -> TensorData:
    """Inputs without the victim's labels: -1, so attacks that need true labels refuse instead of using zeros."""
    return TensorData(x, torch.full((len(x),), -1, dtype=torch.long))


def query_set(name: str, splits: Splits, *, data_dir: str | None = None) -> TensorData:
    """The thief's queries: a part of the split, or another data set's training images (out of distribution),
    whose labels name another task's classes and are therefore withheld."""
    if name in SPLIT_PARTS:
        return getattr(splits, name)
    other = load_dataset(name, data_dir=data_dir)
    if other.modality != splits.modality:
        raise InvalidArgument(f"query set {name!r} is {other.modality} data but the victim's are {splits.modality}")
    if splits.vocabulary is not None and other.train.texts is not None:
        # the thief's own texts, encoded as the victim's API encodes what it is sent
        texts = other.train.texts
        return TensorData(splits.vocabulary.encode(list(texts)), torch.full((len(texts),), -1, dtype=torch.long), texts)
    if tuple(other.input_shape) != tuple(splits.input_shape):
        raise InvalidArgument(
            f"query set {name!r} has inputs shaped {tuple(other.input_shape)} but the victim takes "
            f"{tuple(splits.input_shape)}"
        )
    return unlabelled(other.x)


def victim_model(oracle: Oracle) -> Classifier | None:
    """The model behind an in-process oracle and its wrappers (post-processors, protection, recording), else None."""
    seen = 0
    while oracle is not None and seen < 32:  # a bound against a wrapper that names itself
        model = getattr(oracle, "model", None)
        if isinstance(model, Classifier):
            return model
        oracle, seen = getattr(oracle, "inner", None), seen + 1
    return None


def input_modality(pool: TensorData, victim: Classifier | None) -> str:
    """The victim's modality, else what the queries look like: int64 ids are text, N×C×T floats audio."""
    if victim is not None:
        return victim.modality
    if pool.texts is not None or pool.stored.dtype == torch.int64:
        return "text"
    return "audio" if pool.stored.ndim == 3 else "image"


def surrogate_inputs(
    arch: str, pool: TensorData, victim: Classifier | None, given: dict[str, Any] | None = None
) -> tuple[TensorData, dict[str, Any], Vocabulary | None]:
    """(the queries as the victim's API reads them, what the surrogate is told about its inputs, its vocabulary).

    Refuses a surrogate of another modality than the queries'. A text surrogate embeds the victim's vocabulary
    (texts are re-encoded with it); without a local victim, a ``vocab_size`` in ``given`` (what the thief knows of
    the API's vocabulary), else the ids the thief holds, set the vocabulary's size."""
    modality = input_modality(pool, victim)
    if model_modality(arch) != modality:
        raise InvalidArgument(
            f"surrogate architecture {arch!r} reads {model_modality(arch)} inputs but the victim's are {modality}; "
            f"{modality} architectures: {', '.join(list_models(modality=modality))}"
        )
    known = {**(given or {}), **(victim.arch_kwargs if victim is not None else {})}
    if modality == "audio":
        return pool, {k: known[k] for k in ("sample_rate",) if k in known}, None
    if modality != "text":
        return pool, {}, None
    vocabulary = getattr(victim, "vocabulary", None)
    if vocabulary is not None and pool.texts is not None:
        pool = pool.encoded(vocabulary)
    size = len(vocabulary) if vocabulary is not None else known.get("vocab_size")
    highest = int(pool.x.max()) if len(pool) else 0
    if size is None:
        size = highest + 1
    elif highest >= size:
        raise InvalidArgument(
            f"the thief's queries hold token id {highest} but the victim's vocabulary has {size} ids; encode the "
            "texts with the victim's vocabulary (TensorData.encoded)"
        )
    return pool, {"vocab_size": size}, vocabulary


def steal(
    oracle: Oracle,
    pool: TensorData,
    *,
    attack: str = "soft-label",
    arch: str | None = None,
    params: dict[str, Any] | None = None,
    budget: int | None = None,
    config: TrainConfig | None = None,
    postprocess: Sequence[Any] = (),
    class_names: Sequence[str] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> ExtractionResult:
    """Extract a surrogate of ``arch`` from ``oracle`` with ``attack``, querying ``pool``.

    ``arch`` defaults to a small model of the victim's modality (:data:`DEFAULT_ARCH`); see the module docstring for
    what a text or audio surrogate is told about its inputs. ``postprocess`` adds output post-processors (top-k,
    hard-label, rounding …) between the API and the thief; ``budget`` caps the queries; the surrogate's provenance
    records the attack, its parameters and the spend.
    """
    config = config or TrainConfig()
    if postprocess:
        oracle = oracle.postprocess(*postprocess)
    if budget is not None:
        params = {**(params or {}), "budget": budget}
    atk = create_extraction_attack(attack, **(params or {}))
    victim = victim_model(oracle)
    modality = input_modality(pool, victim)
    if modality not in atk.modalities:
        raise InvalidArgument(
            f"extraction attack {attack!r} applies to {', '.join(atk.modalities)} victims, not to {modality} ones"
        )
    arch = arch or DEFAULT_ARCH[modality]
    pool, inputs, vocabulary = surrogate_inputs(arch, pool, victim, arch_kwargs)
    shape = tuple(oracle.input_shape or pool.input_shape)
    names = tuple(class_names) if class_names else getattr(victim, "class_names", None)
    surrogate = create_model(
        arch, shape, oracle.num_classes, class_names=names, seed=config.seed, **{**(arch_kwargs or {}), **inputs}
    )
    surrogate.vocabulary = vocabulary
    result = atk.run(oracle, pool, surrogate, train=config, progress=progress)
    result.surrogate.provenance.update(
        {
            "stolen_with": attack,
            "attack_params": atk.params.to_dict(),
            "queries": result.queries,
            "train": config.to_dict(),
        }
    )
    return result
