"""Text classification data in their published formats, read with the standard library's ``csv`` and ``json``.

=================  ==========================================================================================
``ag-news``        the ``ag_news_csv`` folder: ``train.csv``, ``test.csv`` (rows ``"class","title","description"``,
                   class 1..K, no header) and ``classes.txt`` (one class name a line; without it AG News's four)
``sst2``           GLUE's ``SST-2`` folder: ``train.tsv`` and ``dev.tsv`` (``sentence<TAB>label`` with a header,
                   label 0 negative / 1 positive); ``dev.tsv`` is the test part, as GLUE's test has no labels
``imdb``           the ``aclImdb`` folder: ``{train,test}/{pos,neg}/*.txt``, one review a file (``unsup`` ignored)
``text-csv``       a CSV with a header naming a ``text`` and a ``label`` column (others ignored)
``text-jsonl``     JSON Lines, one ``{"text": ..., "label": ...}`` object a line
=================  ==========================================================================================

The generic formats take one file (no official test part) or a folder with ``train.csv``/``train.jsonl`` and
optionally ``test.csv``/``test.jsonl``. Their labels are names (strings, or integers read as their decimal text);
the classes are the training file's labels in sorted order (numeric order when all are integers), and a test label
outside them is an error.

Every problem in a file — undecodable UTF-8, a row with the wrong number of fields, an unknown label, an empty
text — is one :class:`InvalidArgument` naming the file and line, never a traceback. AG News's texts are the
title and description joined by a space, with its escapes undone (``#39;`` and other character references, ``\\``
for a line break); IMDB's ``<br />`` tags become spaces.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..core.errors import DataNotFound, InvalidArgument
from ..core.runtime import progress as progress_bar
from .base import Dataset, register_dataset
from .prepare import locate
from .vocabulary import VocabularySettings

AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
SST2_CLASSES = ("negative", "positive")
IMDB_CLASSES = ("neg", "pos")


def read_utf8(path: Path) -> str:
    """A file's text; bytes that are not UTF-8 are an error naming the line they are on."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataNotFound(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InvalidArgument(f"{path}, line {line}: not UTF-8 text ({exc.reason})") from None


def csv_rows(path: Path, *, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of each non-blank row; a malformed row is an error naming the file and line."""
    # strict: a stray character after a closing quote is an error, not silently glued onto the field
    text = io.StringIO(read_utf8(path), newline="")
    reader = csv.reader(text, delimiter=delimiter, quoting=quoting, strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InvalidArgument(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
        if row and any(field.strip() for field in row):
            yield reader.line_num, row


def _need_text(text: str, path: Path, line: int) -> str:
    text = " ".join(text.split())
    if not text:
        raise InvalidArgument(f"{path}, line {line}: empty text")
    return text


def _settings(max_length: int, min_freq: int, max_size: int) -> VocabularySettings:
    return VocabularySettings(max_length=max_length, min_freq=min_freq, max_size=max_size)


# ---------------------------------------------------------------------------------------------------------------------
# AG News (and the wordnet-topics stand-in, written in the same format)
# ---------------------------------------------------------------------------------------------------------------------

_CHAR_REF = re.compile(r"&?#(\d{1,6});")


def clean_ag_news(text: str) -> str:
    """AG News's escapes undone: ``#39;``-style character references (often without their ``&``), HTML entities,
    and a backslash (the file's line break) as a space."""
    text = _CHAR_REF.sub(lambda m: chr(int(m.group(1))) if int(m.group(1)) < 0x110000 else " ", text)
    return html.unescape(text).replace("\\", " ")


def read_ag_news_csv(path: Path, num_classes: int) -> tuple[list[str], list[int]]:
    """Texts and 0-based labels of an AG-News-format CSV: ``class (1..num_classes), title, description``."""
    texts, labels = [], []
    for line, row in csv_rows(path):
        if len(row) != 3:
            raise InvalidArgument(
                f"{path}, line {line}: expected 3 fields (class, title, description), found {len(row)}"
            )
        label = row[0].strip()
        if not label.isdigit() or not 1 <= int(label) <= num_classes:
            raise InvalidArgument(f"{path}, line {line}: class {label!r} is not one of 1..{num_classes}")
        texts.append(_need_text(clean_ag_news(f"{row[1]} {row[2]}"), path, line))
        labels.append(int(label) - 1)
    if not texts:
        raise InvalidArgument(f"{path}: no rows")
    return texts, labels


def read_class_names(path: Path) -> tuple[str, ...]:
    """One class name a line (``classes.txt``); blank lines are an error, as they would shift every class."""
    lines = read_utf8(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise InvalidArgument(f"{path}, line {i}: empty class name")
    if len(lines) < 2:
        raise InvalidArgument(f"{path}: needs at least 2 class names, found {len(lines)}")
    return tuple(line.strip() for line in lines)


def ag_news_format(
    where: Path, name: str, settings: VocabularySettings, default_classes: tuple[str, ...] = AG_NEWS_CLASSES
) -> Dataset:
    """An AG-News-format data set: a folder (``train.csv``, optional ``test.csv`` and ``classes.txt``) or one CSV."""
    train = where / "train.csv" if where.is_dir() else where
    if not train.is_file():
        raise DataNotFound(f"{where}: no train.csv (an AG-News-format folder holds train.csv and test.csv)")
    names_file = train.parent / "classes.txt"
    classes = read_class_names(names_file) if names_file.is_file() else default_classes
    texts, labels = read_ag_news_csv(train, len(classes))
    test_file = train.parent / "test.csv"
    test_texts = test_labels = None
    if where.is_dir() and test_file.is_file():
        test_texts, test_labels = read_ag_news_csv(test_file, len(classes))
    return _text_dataset(name, texts, labels, classes, test_texts, test_labels, str(where), settings)


def _text_dataset(
    name: str,
    texts: list[str],
    labels: list[int],
    classes: Sequence[str],
    test_texts: list[str] | None,
    test_labels: list[int] | None,
    source: str,
    settings: VocabularySettings,
) -> Dataset:
    test_y = torch.tensor(test_labels, dtype=torch.int64) if test_labels is not None else None
    return Dataset.from_texts(
        name, texts, torch.tensor(labels, dtype=torch.int64), tuple(classes), test_texts, test_y, source, settings
    )


@register_dataset("ag-news", modality="text")
def ag_news(
    path: str = "", data_dir: str | None = None, max_length: int = 64, min_freq: int = 2, max_size: int = 20000
) -> Dataset:
    """AG News (Zhang et al. 2015): 120,000 + 7,600 news articles, 4 topics; the ag_news_csv folder (--path)."""
    where = locate("ag-news", path, data_dir, lambda d: (d / "train.csv").is_file())
    return ag_news_format(where, "ag-news", _settings(max_length, min_freq, max_size))


# ---------------------------------------------------------------------------------------------------------------------
# SST-2
# ---------------------------------------------------------------------------------------------------------------------


def read_sst2_tsv(path: Path) -> tuple[list[str], list[int]]:
    """Texts and labels of GLUE's SST-2 ``train.tsv``/``dev.tsv``: a header naming ``sentence`` and ``label``."""
    rows = csv_rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, None)
    if header is None:
        raise InvalidArgument(f"{path}: empty file")
    columns = [c.strip().lower() for c in header[1]]
    if "sentence" not in columns or "label" not in columns:
        raise InvalidArgument(f"{path}, line {header[0]}: header must name 'sentence' and 'label', found {columns}")
    at_text, at_label = columns.index("sentence"), columns.index("label")
    texts, labels = [], []
    for line, row in rows:
        if len(row) != len(columns):
            raise InvalidArgument(
                f"{path}, line {line}: expected {len(columns)} tab-separated fields, found {len(row)}"
            )
        label = row[at_label].strip()
        if label not in ("0", "1"):
            raise InvalidArgument(f"{path}, line {line}: label {label!r} is not 0 (negative) or 1 (positive)")
        texts.append(_need_text(row[at_text], path, line))
        labels.append(int(label))
    if not texts:
        raise InvalidArgument(f"{path}: no rows after the header")
    return texts, labels


@register_dataset("sst2", modality="text")
def sst2(
    path: str = "", data_dir: str | None = None, max_length: int = 64, min_freq: int = 2, max_size: int = 20000
) -> Dataset:
    """SST-2 (GLUE): 67,349 + 872 movie-review sentences, negative/positive; the SST-2 folder of TSVs (--path)."""
    where = locate("sst2", path, data_dir, lambda d: (d / "train.tsv").is_file())
    train = where / "train.tsv" if where.is_dir() else where
    if not train.is_file():
        raise DataNotFound(f"{where}: no train.tsv (GLUE's SST-2 folder holds train.tsv and dev.tsv)")
    texts, labels = read_sst2_tsv(train)
    dev = train.parent / "dev.tsv"
    test_texts, test_labels = read_sst2_tsv(dev) if where.is_dir() and dev.is_file() else (None, None)
    settings = _settings(max_length, min_freq, max_size)
    return _text_dataset("sst2", texts, labels, SST2_CLASSES, test_texts, test_labels, str(where), settings)


# ---------------------------------------------------------------------------------------------------------------------
# IMDB
# ---------------------------------------------------------------------------------------------------------------------


def read_imdb_part(part: Path) -> tuple[list[str], list[int]]:
    """Reviews of ``part`` (``aclImdb/train`` or ``aclImdb/test``): ``neg/*.txt`` (0) and ``pos/*.txt`` (1)."""
    texts, labels = [], []
    for label, folder in enumerate(IMDB_CLASSES):
        directory = part / folder
        if not directory.is_dir():
            raise DataNotFound(f"{directory}: missing (an aclImdb part holds pos/ and neg/ folders of .txt reviews)")
        files = sorted(directory.glob("*.txt"))
        for file in progress_bar(files, desc=f"read {part.name}/{folder}", unit="file"):
            texts.append(_need_text(read_utf8(file).replace("<br />", " "), file, 1))
            labels.append(label)
    if not texts:
        raise InvalidArgument(f"{part}: no reviews in pos/ or neg/")
    return texts, labels


@register_dataset("imdb", modality="text")
def imdb(
    path: str = "", data_dir: str | None = None, max_length: int = 256, min_freq: int = 2, max_size: int = 30000
) -> Dataset:
    """IMDB movie reviews (Maas et al. 2011): 25,000 + 25,000, negative/positive; the aclImdb folder (--path)."""

    def found(d: Path) -> bool:
        return (d / "train").is_dir() or (d / "aclImdb" / "train").is_dir()

    where = locate("imdb", path, data_dir, found)
    root = where / "aclImdb" if (where / "aclImdb" / "train").is_dir() else where
    if not (root / "train").is_dir():
        raise DataNotFound(f"{where}: no aclImdb/train folder")
    texts, labels = read_imdb_part(root / "train")
    test_texts, test_labels = read_imdb_part(root / "test") if (root / "test").is_dir() else (None, None)
    settings = _settings(max_length, min_freq, max_size)
    return _text_dataset("imdb", texts, labels, IMDB_CLASSES, test_texts, test_labels, str(root), settings)


# ---------------------------------------------------------------------------------------------------------------------
# generic text,label CSV and JSON Lines
# ---------------------------------------------------------------------------------------------------------------------

# each record: (line, text, label name)
Records = list[tuple[int, str, str]]


def read_labelled_csv(path: Path) -> Records:
    """Records of a CSV whose header names a ``text`` and a ``label`` column."""
    rows = csv_rows(path)
    header = next(rows, None)
    if header is None:
        raise InvalidArgument(f"{path}: empty file")
    columns = [c.strip().lower() for c in header[1]]
    if "text" not in columns or "label" not in columns:
        raise InvalidArgument(
            f"{path}, line {header[0]}: the header must name a 'text' and a 'label' column, found {header[1]} "
            "(AG News files have no header: use --data ag-news)"
        )
    at_text, at_label = columns.index("text"), columns.index("label")
    records = []
    for line, row in rows:
        if len(row) != len(columns):
            raise InvalidArgument(f"{path}, line {line}: expected {len(columns)} fields, found {len(row)}")
        label = row[at_label].strip()
        if not label:
            raise InvalidArgument(f"{path}, line {line}: empty label")
        records.append((line, _need_text(row[at_text], path, line), label))
    return records


def read_labelled_jsonl(path: Path) -> Records:
    """Records of a JSON Lines file: one object a line with a string ``text`` and a string or integer ``label``."""
    records = []
    for line, raw in enumerate(read_utf8(path).splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{path}, line {line}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or "text" not in item or "label" not in item:
            raise InvalidArgument(f"{path}, line {line}: expected an object with 'text' and 'label'")
        text, label = item["text"], item["label"]
        if not isinstance(text, str):
            raise InvalidArgument(f"{path}, line {line}: 'text' must be a string, not {type(text).__name__}")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
            raise InvalidArgument(
                f"{path}, line {line}: 'label' must be a non-empty string or an integer, not {label!r}"
            )
        records.append((line, _need_text(text, path, line), str(label).strip()))
    return records


def _class_order(labels: set[str]) -> tuple[str, ...]:
    if all(re.fullmatch(r"-?\d+", label) for label in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))


def labelled_text(name: str, path: str, data_dir: str | None, suffix: str, settings: VocabularySettings) -> Dataset:
    """A generic text data set: one file, or a folder with ``train.SUFFIX`` and optionally ``test.SUFFIX``."""
    reader = read_labelled_csv if suffix == ".csv" else read_labelled_jsonl
    where = locate(name, path, data_dir, lambda d: d.is_file() or (d / f"train{suffix}").is_file())
    train = where / f"train{suffix}" if where.is_dir() else where
    if not train.is_file():
        raise DataNotFound(f"{where}: no train{suffix}")
    records = reader(train)
    if not records:
        raise InvalidArgument(f"{train}: no records")
    classes = _class_order({label for _, _, label in records})
    if len(classes) < 2:
        raise InvalidArgument(f"{train}: every record has the label {classes[0]!r}; a classifier needs two or more")
    index = {c: i for i, c in enumerate(classes)}
    test_texts = test_labels = None
    test = train.parent / f"test{suffix}"
    if where.is_dir() and test.is_file():
        test_records = reader(test)
        for line, _, label in test_records:
            if label not in index:
                raise InvalidArgument(
                    f"{test}, line {line}: label {label!r} is not one of the training labels ({', '.join(classes)})"
                )
        test_texts = [t for _, t, _ in test_records]
        test_labels = [index[label] for _, _, label in test_records]
    texts = [t for _, t, _ in records]
    labels = [index[label] for _, _, label in records]
    return _text_dataset(name, texts, labels, classes, test_texts, test_labels, str(where), settings)


@register_dataset("text-csv", modality="text")
def text_csv(
    path: str = "", data_dir: str | None = None, max_length: int = 64, min_freq: int = 2, max_size: int = 20000
) -> Dataset:
    """Your texts: a CSV with 'text' and 'label' columns, or a folder with train.csv (and test.csv)."""
    return labelled_text("text-csv", path, data_dir, ".csv", _settings(max_length, min_freq, max_size))


@register_dataset("text-jsonl", modality="text")
def text_jsonl(
    path: str = "", data_dir: str | None = None, max_length: int = 64, min_freq: int = 2, max_size: int = 20000
) -> Dataset:
    """Your texts: JSON Lines of {"text": ..., "label": ...}, or a folder with train.jsonl (and test.jsonl)."""
    return labelled_text("text-jsonl", path, data_dir, ".jsonl", _settings(max_length, min_freq, max_size))
