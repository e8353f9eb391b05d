"""``wordnet-topics``: an offline stand-in for AG News, built from WordNet's noun glosses.

Each document is one WordNet noun synset: its first lemmas as the title and its gloss — the definition and the
example sentences — as the description; its class is the lexicographer file the synset belongs to (``noun.animal``,
``noun.artifact``, …). The data set is written in AG News's CSV format (``train.csv``, ``test.csv``,
``classes.txt``), so it is read by the same loader as AG News.

WordNet comes from Debian's ``wordnet-base`` package (``/usr/share/wordnet``). Its ``data.noun`` is parsed here
following ``wndb(5WN)``: a synset's line holds ``offset lex_filenum ss_type w_cnt word lex_id … | gloss``, with
``w_cnt`` in hexadecimal; lines starting with two spaces are the licence. The lexicographer file numbers are named
by ``lexnames(5WN)`` (:data:`NOUN_LEXNAMES`).

Generation, for a seed: the synsets of each category in file order, a seeded permutation, the first
``test_per_class`` to the test part and the next ``per_class - test_per_class`` to training (a category with fewer
synsets gives all it has); rows are then shuffled so the file is not sorted by class. The defaults give 6 classes ×
2,500 = 15,000 documents (12,600 + 2,400).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import CorruptFile, DataNotFound, InvalidArgument
from ..core.params import Params
from ..core.runtime import progress as progress_bar
from .base import Dataset, register_dataset
from .prepare import MANIFEST, locate, register_generator
from .text import ag_news_format, read_utf8
from .vocabulary import VocabularySettings

WORDNET_DIR = "/usr/share/wordnet"
NOUN_LEXNAMES = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute", 8: "noun.body",
    9: "noun.cognition", 10: "noun.communication", 11: "noun.event", 12: "noun.feeling", 13: "noun.food",
    14: "noun.group", 15: "noun.location", 16: "noun.motive", 17: "noun.object", 18: "noun.person",
    19: "noun.phenomenon", 20: "noun.plant", 21: "noun.possession", 22: "noun.process", 23: "noun.quantity",
    24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance", 28: "noun.time",
}  # fmt: skip
TITLE_LEMMAS = 3  # a synset can have dozens of lemmas; a headline-sized title keeps the first few


@dataclasses.dataclass(frozen=True)
class WordnetTopicsParams(Params):
    """What ``copycatch data prepare wordnet-topics -p K=V`` may change."""

    kind = "wordnet-topics"
    categories: tuple[str, ...] = ("animal", "artifact", "food", "location", "person", "plant")
    per_class: int = 2500  # documents per category, test included
    test_per_class: int = 400
    wordnet_dir: str = WORDNET_DIR

    def validate(self) -> None:
        valid = sorted(name.removeprefix("noun.") for name in NOUN_LEXNAMES.values())
        for category in self.categories:
            if category not in valid:
                raise InvalidArgument(f"unknown WordNet noun category {category!r}; valid: {', '.join(valid)}")
        if len(set(self.categories)) < 2:
            raise InvalidArgument("wordnet-topics needs at least 2 distinct categories")
        if not 1 <= self.test_per_class < self.per_class:
            raise InvalidArgument(
                f"need 1 <= test_per_class < per_class, got test_per_class={self.test_per_class}, "
                f"per_class={self.per_class}"
            )


@dataclasses.dataclass(frozen=True)
class Synset:
    offset: int
    lexname: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]

    def title(self) -> str:
        return ", ".join(self.lemmas[:TITLE_LEMMAS])

    def description(self) -> str:
        return " ".join([f"{self.definition}.", *(f"{e}." if e[-1:] not in ".!?" else e for e in self.examples)])


_EXAMPLE = re.compile(r'"([^"]*)"')


def parse_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """The definition and the quoted example sentences of a gloss (``definition; "example"; "example"``)."""
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss) if e.strip())
    definition = _EXAMPLE.sub("", gloss)
    definition = re.sub(r"(\s*;\s*)+$", "", definition.strip()).strip(" ;")
    return definition, examples


def read_data_noun(path: Path, *, progress: bool | None = None) -> list[Synset]:
    """Every synset of a WordNet ``data.noun`` file, in file order; a line that is not a synset is an error."""
    synsets = []
    lines = read_utf8(path).splitlines()
    for number, line in enumerate(progress_bar(lines, desc="read WordNet", enabled=progress, unit="line"), 1):
        if line.startswith("  ") or not line.strip():
            continue
        head, sep, gloss = line.partition(" | ")
        fields = head.split()
        try:
            lexfile, w_cnt = int(fields[1]), int(fields[3], 16)
            lemmas = tuple(w.replace("_", " ") for w in fields[4 : 4 + 2 * w_cnt : 2])
        except (IndexError, ValueError):
            raise CorruptFile(f"{path}, line {number}: not a WordNet synset line") from None
        if lexfile not in NOUN_LEXNAMES or len(lemmas) != w_cnt or not sep:
            raise CorruptFile(f"{path}, line {number}: not a WordNet noun synset line")
        definition, examples = parse_gloss(gloss)
        if definition:
            synsets.append(Synset(int(fields[0]), NOUN_LEXNAMES[lexfile], lemmas, definition, examples))
    if not synsets:
        raise CorruptFile(f"{path}: no synsets")
    return synsets


@register_generator("wordnet-topics", params=WordnetTopicsParams, version=1)
def generate_wordnet_topics(
    out: Path, *, seed: int, params: WordnetTopicsParams, workers: int, progress: bool | None
) -> dict[str, Any]:
    """Write train.csv, test.csv and classes.txt (AG News's format) into ``out``; see the module docstring."""
    del workers  # parsing one file takes about a second; nothing to spread over processes
    source = Path(params.wordnet_dir) / "data.noun"
    if not source.is_file():
        raise DataNotFound(
            f"wordnet-topics is built from WordNet's data.noun, not found in {params.wordnet_dir}: install it with "
            "`sudo apt-get install -y wordnet-base` (Debian/Ubuntu), or give -p wordnet_dir=DIR"
        )
    synsets = read_data_noun(source, progress=progress)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, category in enumerate(params.categories, 1):
        members = [s for s in synsets if s.lexname == f"noun.{category}"]
        chosen = [members[i] for i in rng.permutation(len(members))[: params.per_class]]
        test += [(label, s) for s in chosen[: params.test_per_class]]
        train += [(label, s) for s in chosen[params.test_per_class :]]
    for name, rows in (("train.csv", train), ("test.csv", test)):
        with open(out / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
            for i in rng.permutation(len(rows)):
                label, synset = rows[i]
                writer.writerow([label, synset.title(), synset.description()])
    lexnames = [f"noun.{c}" for c in params.categories]
    (out / "classes.txt").write_text("".join(f"{n}\n" for n in lexnames), encoding="utf-8")
    return {
        "source": {"file": str(source), "sha256": hashlib.sha256(source.read_bytes()).hexdigest()},
        "classes": lexnames,
        "documents": {"train": len(train), "test": len(test)},
    }


@register_dataset("wordnet-topics", modality="text")
def wordnet_topics(
    path: str = "", data_dir: str | None = None, max_length: int = 48, min_freq: int = 2, max_size: int = 20000
) -> Dataset:
    """Offline stand-in for AG News: WordNet noun glosses by category (copycatch data prepare wordnet-topics)."""
    where = locate("wordnet-topics", path, data_dir, lambda d: (d / MANIFEST).is_file() and (d / "train.csv").is_file())
    settings = VocabularySettings(max_length=max_length, min_freq=min_freq, max_size=max_size)
    return ag_news_format(where, "wordnet-topics", settings)
