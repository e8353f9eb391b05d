"""An owner's own image files, decoded with Pillow (``pip install 'copycatch[images]'``) through
:mod:`copycatch.data.image_codec`.

=================  ==========================================================================================
``image-folder``   a folder of images per class (``ROOT/CLASS/*.png``), or ``ROOT/train/CLASS`` and
                   ``ROOT/test/CLASS`` for an official test part; the classes are the folder names, sorted
``image-csv``      a CSV whose header names a ``path`` and a ``label`` column (others ignored), or a folder with
                   ``train.csv`` and optionally ``test.csv``; paths are relative to the CSV's folder or absolute
=================  ==========================================================================================

PNG, JPEG, WebP and BMP are read, greyscale or colour. Every image of a data set (both parts) is made one channel
count and one size: 3 channels when any image is in colour (a palette image counts as colour), else 1, so no colour
is thrown away (``channels=`` overrides); the most common width×height (``size=`` overrides), other sizes resized
with Pillow's bilinear filter. Alpha is dropped, as torchvision's ``ImageFolder`` drops it; 16-bit greyscale keeps
its high byte. Pixels are stored as uint8 N×C×H×W (see :mod:`copycatch.data.base`).

A CSV's labels are class names (strings, or integers read as their decimal text); the classes are the training
file's labels in sorted order (numeric order when all are integers), and a test label outside them is an error.

Every problem is one error naming the file (and the CSV line): a file that is not one of the four formats, a
corrupt or truncated image, an image over :data:`MAX_PIXELS` (a decompression bomb), an empty class folder, fewer
than two classes, a CSV row with an empty or missing path or an unknown label.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DataNotFound, InvalidArgument
from ..core.runtime import progress as progress_bar
from .base import Dataset, register_dataset
from .image_codec import FILE_FORMATS, MAX_PIXELS, is_grey, open_image, to_pixels
from .image_codec import require_pillow as require_pillow  # where callers have always found it
from .prepare import locate
from .text import csv_rows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _target(
    sizes: Sequence[tuple[int, int]], grey: Sequence[bool], size: int | Sequence[int] | None, channels: int | None
) -> tuple[int, int, int]:
    """(channels, height, width) every image is made: the options, else colour if any image has it and the most
    common size (the first seen among equals, so the same files give the same shape)."""
    if channels is None:
        channels = 1 if all(grey) else 3
    elif channels not in (1, 3):
        raise InvalidArgument(f"channels={channels}: images are made 1 (greyscale) or 3 (RGB) channels")
    if size is None:
        width, height = Counter(sizes).most_common(1)[0][0]
        return channels, height, width
    sides = (size, size) if isinstance(size, int) else tuple(size)
    if len(sides) != 2 or min(sides) < 1:
        raise InvalidArgument(f"size={size}: give a positive side, or (height, width)")
    height, width = sides
    return channels, height, width


def read_images(
    files: Sequence[Path], *, size: int | Sequence[int] | None = None, channels: int | None = None, desc: str = ""
) -> torch.Tensor:
    """uint8 N×C×H×W pixels of ``files``, in order, made one channel count and one size (see the module
    docstring). ``size`` is a side or (height, width); ``channels`` 1 or 3."""
    if not files:
        raise InvalidArgument("no image files to read")
    sizes, grey = [], []
    for file in files:
        with open_image(file, formats=FILE_FORMATS, max_pixels=MAX_PIXELS) as image:
            sizes.append(image.size)
            grey.append(is_grey(image))
    c, h, w = _target(sizes, grey, size, channels)
    out = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, file in enumerate(progress_bar(files, total=len(files), desc=desc, unit="image")):
        with open_image(file, formats=FILE_FORMATS, max_pixels=MAX_PIXELS) as image:
            out[i] = to_pixels(image, c, (h, w), name=str(file))
    return torch.from_numpy(out)


def _image_files(folder: Path) -> list[Path]:
    """The images of a class folder, sorted; hidden files (``.DS_Store``) skipped, any other file refused."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for file in files:
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            raise InvalidArgument(f"{file}: not an image file (image folders hold {', '.join(IMAGE_SUFFIXES)})")
    return files


def _class_folders(root: Path) -> list[Path]:
    """Sub-folders holding a class each (those starting with ``_`` or ``.`` skipped); two at least."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if len(folders) < 2:
        raise InvalidArgument(f"{root}: {len(folders)} class folder(s); a classifier needs two or more")
    return folders


@register_dataset("image-folder")
def image_folder(
    path: str = "",
    data_dir: str | None = None,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
) -> Dataset:
    """Your images: a folder of PNG/JPEG/WebP/BMP files per class (ROOT/CLASS/*, or ROOT/{train,test}/CLASS)."""
    root = locate("image-folder", path, data_dir, lambda d: d.is_dir())
    if not root.is_dir():
        raise InvalidArgument(f"{root}: not a folder (image-folder reads ROOT/CLASS/*.png)")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    classes = tuple(p.name for p in _class_folders(root / "train" if split else root))
    parts = []
    for part_root in (root / "train", root / "test") if split else (root,):
        is_test = split and part_root.name == "test"
        if is_test:
            extra = {p.name for p in part_root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
            if extra - set(classes):
                raise InvalidArgument(
                    f"{part_root}: class folder(s) {', '.join(sorted(extra - set(classes)))} not in {root / 'train'}"
                )
        files, labels = [], []
        for label, cls in enumerate(classes):
            folder = part_root / cls
            found = _image_files(folder) if folder.is_dir() else []
            if not found and not is_test:  # a test part may lack a class; training may not
                raise InvalidArgument(f"{folder}: no images")
            files += found
            labels += [label] * len(found)
        if not files:
            raise InvalidArgument(f"{part_root}: no images")
        parts.append((files, torch.tensor(labels, dtype=torch.int64)))
    # both parts read together, so they are made one shape
    x = read_images([f for files, _ in parts for f in files], size=size, channels=channels, desc="read images")
    n_train = len(parts[0][0])
    return Dataset(
        "image-folder",
        x[:n_train],
        parts[0][1],
        len(classes),
        classes,
        x[n_train:] if split else None,
        parts[1][1] if split else None,
        str(root),
    )


# each row: (line, image file, label name)
Rows = list[tuple[int, Path, str]]


def read_image_csv(path: Path) -> Rows:
    """Rows of a CSV whose header names a ``path`` and a ``label`` column; each image must exist."""
    rows = csv_rows(path)
    header = next(rows, None)
    if header is None:
        raise InvalidArgument(f"{path}: empty file")
    columns = [c.strip().lower() for c in header[1]]
    if "path" not in columns or "label" not in columns:
        raise InvalidArgument(f"{path}, line {header[0]}: the header must name a 'path' and a 'label' column")
    at_path, at_label = columns.index("path"), columns.index("label")
    # the real file's folder: `data prepare --path FILE.csv` links the file itself into the data root
    folder = path.resolve().parent
    out = []
    for line, row in rows:
        if len(row) != len(columns):
            raise InvalidArgument(f"{path}, line {line}: expected {len(columns)} fields, found {len(row)}")
        name, label = row[at_path].strip(), row[at_label].strip()
        if not name:
            raise InvalidArgument(f"{path}, line {line}: empty path")
        if not label:
            raise InvalidArgument(f"{path}, line {line}: empty label")
        file = folder / Path(name).expanduser()  # an absolute path replaces the CSV's folder
        if not file.is_file():
            raise InvalidArgument(f"{path}, line {line}: no image file {file}")
        out.append((line, file, label))
    if not out:
        raise InvalidArgument(f"{path}: no rows after the header")
    return out


def _class_order(labels: set[str]) -> tuple[str, ...]:
    if all(re.fullmatch(r"-?\d+", label) for label in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))


@register_dataset("image-csv")
def image_csv(
    path: str = "",
    data_dir: str | None = None,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
) -> Dataset:
    """Your images: a CSV of path,label (paths relative to it), or a folder with train.csv (and test.csv)."""
    where = locate("image-csv", path, data_dir, lambda d: d.is_file() or (d / "train.csv").is_file())
    train = where / "train.csv" if where.is_dir() else where
    if not train.is_file():
        raise DataNotFound(f"{where}: no train.csv")
    rows = read_image_csv(train)
    classes = _class_order({label for _, _, label in rows})
    if len(classes) < 2:
        raise InvalidArgument(f"{train}: every row has the label {classes[0]!r}; a classifier needs two or more")
    index = {c: i for i, c in enumerate(classes)}
    test = train.parent / "test.csv"
    test_rows = read_image_csv(test) if where.is_dir() and test.is_file() else []
    for line, _, label in test_rows:
        if label not in index:
            raise InvalidArgument(
                f"{test}, line {line}: label {label!r} is not one of the training labels ({', '.join(classes)})"
            )
    files = [file for _, file, _ in rows + test_rows]
    x = read_images(files, size=size, channels=channels, desc="read images")
    labels = torch.tensor([index[label] for _, _, label in rows + test_rows], dtype=torch.int64)
    n = len(rows)
    return Dataset(
        "image-csv",
        x[:n],
        labels[:n],
        len(classes),
        classes,
        x[n:] if test_rows else None,
        labels[n:] if test_rows else None,
        str(where),
    )
