"""A user's own data as a NumPy ``.npz`` archive (read with ``allow_pickle=False``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CorruptFile, DataNotFound, InvalidArgument
from .base import Dataset, register_dataset


@register_dataset("npz")
def npz(path: str = "") -> Dataset:
    """A user's .npz: arrays x, y (and optionally x_test, y_test, class_names); uint8 0..255 (kept as bytes) or
    floats in [0, 1]."""
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
    names = (
        tuple(str(n) for n in arrays["class_names"])
        if "class_names" in arrays
        else tuple(str(i) for i in range(num_classes))
    )
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
    if a.dtype != np.uint8:  # uint8 pixels stay bytes until a batch is formed (see data.base.TensorData)
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise InvalidArgument(f"{path}: array {key!r} contains NaN or Inf")
        if a.min() < 0 or a.max() > 1:
            raise InvalidArgument(
                f"{path}: array {key!r} has values in [{a.min():g}, {a.max():g}]; use uint8 or floats in [0, 1]"
            )
    return torch.from_numpy(np.ascontiguousarray(a))


def _to_labels(a: np.ndarray, n: int, path: Path, key: str) -> torch.Tensor:
    if a.ndim != 1 or len(a) != n:
        raise InvalidArgument(f"{path}: array {key!r} must be 1-D with {n} labels, has shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise InvalidArgument(f"{path}: array {key!r} must hold integer class indices, not {a.dtype}")
    if a.min() < 0:
        raise InvalidArgument(f"{path}: array {key!r} has negative labels")
    return torch.from_numpy(a.astype(np.int64))
