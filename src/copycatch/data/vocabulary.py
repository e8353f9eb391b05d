"""Word-level vocabulary: how texts become the int64 token ids a text model reads.

A :class:`Vocabulary` is built from the owner's training texts only (:func:`~copycatch.data.base.make_splits` does
this), so nothing the thief holds, and nothing of the test split, shapes the model's input space. It travels with
the model (:meth:`Vocabulary.to_json` / :meth:`Vocabulary.from_json`) so that a suspect's inputs, a key's trigger
sentences and a client's request are encoded exactly as the training data were.

Encoding, in order: optional lower-casing; the tokeniser, a regular expression that keeps runs of letters and digits
with inner apostrophes (``don't``, ``o'clock``) and drops punctuation and whitespace; each token's id, ``<unk>`` (1)
for a token outside the vocabulary; the first ``max_length`` ids, then ``<pad>`` (0) up to ``max_length``. Every
encoded row has the same length, so text batches are plain N×L tensors.

Which tokens are kept: those seen at least ``min_freq`` times in the training texts, most frequent first (ties in
alphabetical order, so the ids do not depend on the order of the texts), up to ``max_size`` entries counting the
two specials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..core.errors import CorruptFile, InvalidArgument
from ..core.params import Params

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
FORMAT = "copycatch.vocabulary/1"
# letters and digits (Unicode-aware, no underscore), joined by inner apostrophes
TOKEN_PATTERN = r"[^\W_]+(?:['’][^\W_]+)*"


@dataclasses.dataclass(frozen=True)
class VocabularySettings(Params):
    """How a vocabulary is built and how texts are cut: the knobs a text data set passes to :class:`Vocabulary`."""

    kind = "vocabulary"
    max_length: int = 64  # tokens per text after encoding (longer texts are cut, shorter padded)
    min_freq: int = 2  # a token seen fewer times in the owner's training texts is <unk>
    max_size: int = 20000  # entries, counting <pad> and <unk>
    lower: bool = True

    def validate(self) -> None:
        if self.max_length < 1:
            raise InvalidArgument(f"vocabulary max_length={self.max_length} must be at least 1")
        if self.min_freq < 1:
            raise InvalidArgument(f"vocabulary min_freq={self.min_freq} must be at least 1")
        if self.max_size < 3:
            raise InvalidArgument(f"vocabulary max_size={self.max_size} leaves no room for a word beside the specials")


class Vocabulary:
    """Token ↔ id table plus the settings that encode a text; see the module docstring."""

    def __init__(
        self, tokens: Sequence[str], settings: VocabularySettings | None = None, pattern: str = TOKEN_PATTERN
    ) -> None:
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK]:
            raise InvalidArgument(f"a vocabulary starts with {PAD!r} and {UNK!r}, not {tokens[:2]}")
        self.settings = settings or VocabularySettings()
        if len(tokens) > self.settings.max_size:
            raise InvalidArgument(f"{len(tokens)} tokens exceed the vocabulary's max_size={self.settings.max_size}")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        if len(self.index) != len(tokens):
            duplicate = next(t for t, n in Counter(tokens).items() if n > 1)
            raise InvalidArgument(f"token {duplicate!r} appears twice in the vocabulary")
        self.pattern = pattern
        self._regex = re.compile(pattern)

    @classmethod
    def build(cls, texts: Iterable[str], settings: VocabularySettings | None = None) -> Vocabulary:
        """The vocabulary of ``texts`` (the owner's training texts) under ``settings``."""
        settings = settings or VocabularySettings()
        vocab = cls([PAD, UNK], settings)
        counts = Counter(token for text in texts for token in vocab.tokenize(text))
        kept = sorted((t for t, n in counts.items() if n >= settings.min_freq), key=lambda t: (-counts[t], t))
        return cls([PAD, UNK, *kept[: settings.max_size - 2]], settings)

    @property
    def max_length(self) -> int:
        return self.settings.max_length

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, max_length {self.max_length}, digest {self.digest()[:12]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.digest())

    def tokenize(self, text: str) -> list[str]:
        """The tokens of one text (lower-cased first when the settings say so)."""
        return self._regex.findall(text.lower() if self.settings.lower else text)

    def ids(self, text: str) -> list[int]:
        """The ids of one text's tokens, cut to ``max_length`` but not padded."""
        get = self.index.get
        return [get(t, UNK_ID) for t in self.tokenize(text)[: self.max_length]]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """int64 N×max_length ids of ``texts``: unknown tokens are ``<unk>`` (1), rows are padded with ``<pad>`` (0)."""
        if isinstance(texts, str):
            raise InvalidArgument("encode takes a list of texts, not one string")
        out = np.full((len(texts), self.max_length), PAD_ID, dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidArgument(f"text {row} is a {type(text).__name__}, not a string")
            ids = self.ids(text)
            out[row, : len(ids)] = ids  # NumPy takes a list in one call; a tensor per row would cost more than the ids
        return torch.from_numpy(out)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """The tokens of each row of ids joined by spaces, padding dropped (for reading, not a round trip)."""
        rows = ids.reshape(-1, ids.shape[-1]).tolist() if ids.ndim else [[int(ids)]]
        return [" ".join(self.tokens[i] for i in row if i != PAD_ID) for row in rows]

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces) of the tokens and settings: equal vocabularies give equal text."""
        body = {"format": FORMAT, "pattern": self.pattern, "settings": self.settings.to_dict(), "tokens": self.tokens}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Vocabulary:
        """A vocabulary from :meth:`to_json`'s text; anything else is a :class:`CorruptFile` saying what is wrong."""
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptFile(f"vocabulary is not JSON ({exc})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            found = body.get("format") if isinstance(body, dict) else type(body).__name__
            raise CorruptFile(f"not a copycatch vocabulary (format {found!r}, expected {FORMAT!r})")
        tokens, pattern, settings = body.get("tokens"), body.get("pattern"), body.get("settings")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise CorruptFile("vocabulary 'tokens' must be a list of strings")
        if not isinstance(pattern, str) or not isinstance(settings, dict):
            raise CorruptFile("vocabulary needs a 'pattern' string and a 'settings' object")
        try:
            re.compile(pattern)
            return cls(tokens, VocabularySettings.from_dict(settings), pattern)
        except (re.error, InvalidArgument) as exc:
            raise CorruptFile(f"vocabulary is inconsistent: {exc}") from None

    def digest(self) -> str:
        """SHA-256 of :meth:`to_json`: names this exact encoding in provenance records."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def describe(self) -> dict:
        return {"size": len(self), **self.settings.to_dict(), "digest": self.digest()[:16]}
