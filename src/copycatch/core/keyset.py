"""Several keys for one victim in one file, with a digest: what ``copycatch protect`` writes (``.cckeys``).

A key set bundles the keys of stacked protections (a training-time watermark, an API-time mark) with set-level
metadata: ``independent`` — true when the parts' secrets were drawn independently of each other, so that under
the null hypothesis their p-values are independent and Fisher's combination is valid — and how the parts were made.

File format ``copycatch.keyset/1``: safetensors. Tensor ``"<i>/<name>"`` is tensor ``name`` of part ``i``. The
metadata entry ``copycatch.keyset`` holds the JSON header ``{"format", "meta", "parts": [{"scheme", "params",
"meta", "digest"}, …]}``, where a part's digest is the one it has as a key file of its own (evidence and
calibrations name a part the same either way), and ``digest`` holds the SHA-256 over the canonical header and every
tensor, as for a key (:func:`copycatch.core.key.compute_digest`). Loading recomputes the set's digest and every
part's; a mismatch, a truncated file or a foreign file is an error naming the file. Nothing is unpickled.

:func:`load_key_file` reads either kind of file; :func:`open_keys` turns a key, a key set or a file of either into
a list of keys and whether they are declared independent.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from .errors import CorruptFile, InvalidArgument
from .key import HEADER as KEY_HEADER
from .key import KEYSET_HEADER as HEADER
from .key import Key, checked_header, compute_digest, read_safetensors, write_safetensors

FORMAT = "copycatch.keyset/1"
SUFFIX = ".cckeys"  # single keys are .cckey


@dataclasses.dataclass
class KeySet:
    """Keys for one victim; ``meta["independent"]`` declares whether their secrets were drawn independently."""

    keys: list[Key]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = list(self.keys)
        if not self.keys:
            raise InvalidArgument("a key set needs at least one key")
        for key in self.keys:
            if not isinstance(key, Key):
                raise InvalidArgument(f"a key set holds keys, not a {type(key).__name__}")
        digests = [k.digest for k in self.keys]
        if len(set(digests)) != len(digests):
            raise InvalidArgument("a key set cannot hold the same key twice")
        self.meta.setdefault("independent", False)
        self.meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.meta.setdefault("package_version", __version__)

    @property
    def independent(self) -> bool:
        return self.meta.get("independent") is True

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)

    # -- identity --------------------------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        parts = [{"scheme": k.scheme, "params": k.params, "meta": k.meta, "digest": k.digest} for k in self.keys]
        return {"format": FORMAT, "meta": self.meta, "parts": parts}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{i}/{name}": t for i, key in enumerate(self.keys) for name, t in key.tensors.items()}

    @property
    def digest(self) -> str:
        return compute_digest(self.header(), self.tensors())

    # -- files -----------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        return write_safetensors(Path(path), self.tensors(), HEADER, self.header(), "key set")

    @classmethod
    def load(cls, path: str | os.PathLike) -> KeySet:
        path = Path(path)
        return cls.from_file_contents(path, *read_safetensors(path, "key set file"))

    @classmethod
    def from_file_contents(cls, path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> KeySet:
        """The key set in a file read by :func:`~copycatch.core.key.read_safetensors`, every digest checked."""
        if KEY_HEADER in meta:
            raise InvalidArgument(
                f"{path} is a single key, not a key set: load it with copycatch.core.key.Key.load, "
                "or open_keys for either kind"
            )
        header = checked_header(path, meta, tensors, entry=HEADER, fmt=FORMAT, what="key set")
        return cls(_parts(path, header.get("parts"), tensors), header.get("meta") or {})

    # -- display ---------------------------------------------------------------------------------------------------
    def summary(self, *, secrets: bool = False) -> dict[str, Any]:
        """What ``copycatch key show`` prints for a key set: its digest and meta, and every part's summary."""
        return {
            "format": FORMAT,
            "digest": self.digest,
            "independent": self.independent,
            "meta": self.meta,
            "parts": [key.summary(secrets=secrets) for key in self.keys],
        }


def _parts(path: Path, parts: Any, tensors: dict[str, torch.Tensor]) -> list[Key]:
    """The parts of a key set's header as keys, each with the digest the header records for it."""
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise CorruptFile(f"{path}: the key-set header lists no parts")
    grouped: list[dict[str, torch.Tensor]] = [{} for _ in parts]
    for name, t in tensors.items():
        index, _, tensor_name = name.partition("/")
        if not index.isdigit() or int(index) >= len(parts) or not tensor_name:
            raise CorruptFile(f"{path}: tensor {name!r} belongs to no part of the key set")
        grouped[int(index)][tensor_name] = t
    keys = []
    for i, (part, part_tensors) in enumerate(zip(parts, grouped)):
        try:
            key = Key(str(part["scheme"]), dict(part.get("params") or {}), part_tensors, dict(part.get("meta") or {}))
        except (KeyError, TypeError, ValueError):
            raise CorruptFile(f"{path}: part {i} of the key set is malformed") from None
        if key.digest != part.get("digest"):
            raise CorruptFile(f"{path}: part {i} ({key.scheme}) digest mismatch: the key set was modified")
        keys.append(key)
    return keys


def load_key_file(path: str | os.PathLike) -> Key | KeySet:
    """A key file or a key-set file, whichever ``path`` holds (read once, every digest checked)."""
    path = Path(path)
    meta, tensors = read_safetensors(path, "key file")
    if HEADER in meta:
        return KeySet.from_file_contents(path, meta, tensors)
    return Key.from_file_contents(path, meta, tensors)


def open_keys(source: Key | KeySet | Sequence[Key] | str | os.PathLike) -> tuple[list[Key], bool]:
    """The keys in ``source`` (a key, a key set, a list of keys, or a file of a key or key set) and whether they
    are declared independent: true only for a key set whose ``meta["independent"]`` is true."""
    if isinstance(source, (str, os.PathLike)):
        source = load_key_file(source)
    if isinstance(source, KeySet):
        return list(source.keys), source.independent
    if isinstance(source, Key):
        return [source], False
    if isinstance(source, (list, tuple)) and all(isinstance(k, Key) for k in source):
        return list(source), False
    raise InvalidArgument(f"expected a key, a key set or a key file path, got {type(source).__name__}")
