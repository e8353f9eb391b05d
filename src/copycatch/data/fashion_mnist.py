"""Fashion-MNIST from its four IDX files (Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", arXiv 1708.07747).

Looked for, in order, in ``data_dir=`` / ``--data-dir``, ``$COPYCATCH_DATA_DIR`` (or a ``fashion-mnist`` folder
inside it) and Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CorruptFile, DataNotFound
from .base import Dataset, images_uint8, register_dataset

DATA_DIR_ENV = "COPYCATCH_DATA_DIR"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

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
    """Read an IDX file (optionally gzipped) of unsigned bytes into a writable uint8 array (no further copy)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    raw = bytearray()  # grown block by block: the file's bytes are held once, not as bytes plus a writable copy
    try:
        with opener(path, "rb") as f:
            while block := f.read(1 << 22):
                raw += block
    except (OSError, EOFError) as exc:
        raise CorruptFile(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CorruptFile(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
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
                x=images_uint8(arrays["train_x"]),
                y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
                num_classes=10,
                class_names=FASHION_MNIST_CLASSES,
                test_x=images_uint8(arrays["test_x"]),
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
