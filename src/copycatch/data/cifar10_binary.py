"""CIFAR-10 in its binary version (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009), the
``cifar-10-batches-bin`` folder of ``cifar-10-binary.tar.gz``, read with NumPy alone.

``data_batch_1.bin`` … ``data_batch_5.bin`` are the training part and ``test_batch.bin``, when present, the
official test part; a subset of the training batches may be given, numbered from 1 without a gap. Each record is
one label byte (0..9) and 3,072 pixel bytes: the red, green and blue planes of a 32×32 image, rows top to bottom,
so the pixels are uint8 N×3×32×32 as read. ``batches.meta.txt`` names the classes, one a line (without it:
CIFAR-10's own ten names).

A batch whose size is not a whole number of records (truncated, or another format such as CIFAR-100's two label
bytes) or with a label byte of 10 or more is refused, naming the file (and the record).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CorruptFile, DataNotFound
from .base import Dataset, register_dataset
from .prepare import locate

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECORD_BYTES = 1 + 3 * 32 * 32
FOLDER = "cifar-10-batches-bin"  # what the official archive unpacks to


def batch_folder(where: Path) -> Path | None:
    """The folder holding the batches: ``where`` itself or its ``cifar-10-batches-bin``; None when neither does."""
    for candidate in (where, where / FOLDER):
        if (candidate / "data_batch_1.bin").is_file():
            return candidate
    return None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×3×32×32 pixels and int64 labels of one binary batch."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataNotFound(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not raw:
        raise CorruptFile(f"{path}: empty file")
    n, extra = divmod(len(raw), RECORD_BYTES)
    if extra:
        raise CorruptFile(
            f"{path}: {len(raw):,} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records "
            f"({n:,} and {extra} bytes over: truncated, or not CIFAR-10's binary version)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(n, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= len(CIFAR10_CLASSES))
    if len(bad):
        i = int(bad[0])
        raise CorruptFile(
            f"{path}, record {i} (from 0, at byte {i * RECORD_BYTES:,}): label byte {labels[i]} is not a CIFAR-10 "
            "class (0..9)"
        )
    # a copy: the pixels of each record sit between label bytes, and the file's bytes are read-only
    return records[:, 1:].copy().reshape(n, 3, 32, 32), labels.astype(np.int64)


def read_class_names(path: Path) -> tuple[str, ...]:
    """``batches.meta.txt``: ten class names, one a line (the file's trailing blank lines ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").rstrip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{path}: cannot read class names ({exc})") from None
    names = tuple(line.strip() for line in lines)
    if len(names) != len(CIFAR10_CLASSES) or not all(names):
        raise CorruptFile(
            f"{path}: expected {len(CIFAR10_CLASSES)} class names, one a line, found {len(lines)} line(s)"
        )
    return names


def _training_batches(folder: Path) -> list[Path]:
    """``data_batch_N.bin`` in order of N, which must run from 1 without a gap (a gap is a batch gone missing)."""
    numbered = {}
    for file in folder.glob("data_batch_*.bin"):
        match = re.fullmatch(r"data_batch_(\d+)\.bin", file.name)
        if match:
            numbered[int(match.group(1))] = file
    missing = [f"data_batch_{i}.bin" for i in range(1, max(numbered) + 1) if i not in numbered]
    if missing:
        raise DataNotFound(f"{folder}: {', '.join(missing)} missing (training batches are numbered from 1)")
    return [numbered[i] for i in sorted(numbered)]


@register_dataset("cifar10-binary")
def cifar10_binary(path: str = "", data_dir: str | None = None) -> Dataset:
    """CIFAR-10's binary batches (cifar-10-batches-bin): 50,000 + 10,000 colour 32×32 images of 10 classes."""
    where = locate("cifar10-binary", path, data_dir, lambda d: batch_folder(d) is not None)
    folder = batch_folder(where)
    if folder is None:
        raise DataNotFound(f"{where}: no data_batch_1.bin (in it or in its {FOLDER} folder)")
    batches = [read_batch(file) for file in _training_batches(folder)]
    x = torch.from_numpy(np.concatenate([b[0] for b in batches]))
    y = torch.from_numpy(np.concatenate([b[1] for b in batches]))
    test_x = test_y = None
    if (folder / "test_batch.bin").is_file():
        pixels, labels = read_batch(folder / "test_batch.bin")
        test_x, test_y = torch.from_numpy(pixels), torch.from_numpy(labels)
    meta = folder / "batches.meta.txt"
    classes = read_class_names(meta) if meta.is_file() else CIFAR10_CLASSES
    return Dataset("cifar10-binary", x, y, len(classes), classes, test_x, test_y, str(folder))
