"""The owner's key: everything needed to verify, in one file, with a digest.

A key holds the scheme name, its (public) parameters, its secret tensors
(trigger inputs, secret labels, secret API-time parameters) and metadata
(creation time, package version, data set, architecture, victim digest).

File format: safetensors. The header metadata carries ``copycatch.key`` (JSON of
format, scheme, params and meta) and ``digest``: SHA-256 over a canonical
encoding of that JSON (sorted keys, compact separators) followed by every tensor
in name order (name, dtype, shape, little-endian bytes). Loading recomputes the
digest; a mismatch, a truncated file or a foreign file is an error naming the
file — never a warning. Nothing is unpickled. Several keys bundled in one file
are a key set (:mod:`copycatch.core.keyset`); each loader names the other.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from .errors import CorruptFile, InvalidArgument

FORMAT = "copycatch.key/1"
HEADER = "copycatch.key"  # the safetensors metadata entry holding the key's JSON header
KEYSET_HEADER = "copycatch.keyset"  # a key set's entry (core/keyset.py): named here to point at the right loader


@dataclasses.dataclass
class Key:
    scheme: str
    params: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.meta.setdefault("package_version", __version__)
        for name, t in self.tensors.items():
            if not isinstance(t, torch.Tensor):
                raise InvalidArgument(f"key tensor {name!r} is a {type(t).__name__}, not a tensor")
        self.tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}

    # -- identity --------------------------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {"format": FORMAT, "scheme": self.scheme, "params": self.params, "meta": self.meta}

    @property
    def digest(self) -> str:
        return compute_digest(self.header(), self.tensors)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise CorruptFile(f"key for scheme {self.scheme!r} lacks tensor {name!r}") from None

    # -- files -----------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        return write_safetensors(Path(path), self.tensors, HEADER, self.header(), "key")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Key:
        path = Path(path)
        return cls.from_file_contents(path, *read_safetensors(path, "key file"))

    @classmethod
    def from_file_contents(cls, path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> Key:
        """The key in a file read by :func:`read_safetensors`, its header and digest checked."""
        if KEYSET_HEADER in meta:
            raise InvalidArgument(
                f"{path} is a key set (several keys in one file), not a single key: load it with "
                "copycatch.core.keyset.KeySet.load, or open_keys for either kind"
            )
        header = checked_header(path, meta, tensors, entry=HEADER, fmt=FORMAT, what="key")
        return cls(header["scheme"], header.get("params") or {}, tensors, header.get("meta") or {})

    # -- display ---------------------------------------------------------------------------------------------------
    def summary(self, *, secrets: bool = False) -> dict[str, Any]:
        """What ``copycatch key show`` prints; tensor values only when ``secrets``."""
        out: dict[str, Any] = {
            "scheme": self.scheme,
            "digest": self.digest,
            "params": self.params,
            "meta": self.meta,
            "tensors": {
                name: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                for name, t in sorted(self.tensors.items())
            },
        }
        if secrets:
            for name, t in self.tensors.items():
                out["tensors"][name]["values"] = t.tolist()
        return out


def checked_header(
    path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor], *, entry: str, fmt: str, what: str
) -> dict[str, Any]:
    """The JSON header in metadata entry ``entry``, its format ``fmt`` and the file's digest checked."""
    if entry not in meta or "digest" not in meta:
        raise CorruptFile(f"{path}: not a copycatch {what} (no {what} header)")
    try:
        header = json.loads(meta[entry])
    except json.JSONDecodeError:
        raise CorruptFile(f"{path}: {what} header is not valid JSON") from None
    if not isinstance(header, dict) or header.get("format") != fmt:
        found = header.get("format") if isinstance(header, dict) else None
        raise CorruptFile(f"{path}: unsupported {what} format {found!r} (expected {fmt})")
    actual = compute_digest(header, tensors)
    if actual != meta["digest"]:
        raise CorruptFile(
            f"{path}: {what} digest mismatch (stored {meta['digest'][:12]}…, computed {actual[:12]}…): "
            f"the {what} was modified or damaged"
        )
    return header


def read_safetensors(path: Path, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A safetensors file's metadata and tensors; a missing file or one safetensors cannot read is one-line error."""
    from safetensors import safe_open

    if not path.is_file():
        raise InvalidArgument(f"{path}: no such {what}")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for name in f.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                tensors[name] = f.get_tensor(name)
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CorruptFile(f"{path}: not a readable {what} ({exc})") from None
    return meta, tensors


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], entry: str, header: dict[str, Any], what: str
) -> Path:
    """Write ``tensors`` with ``header`` (canonical JSON, metadata entry ``entry``) and their digest, atomically."""
    from safetensors.torch import save_file

    try:
        text = canonical(header)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} metadata is not JSON-serialisable: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(dict(tensors), str(tmp), metadata={entry: text, "digest": compute_digest(header, tensors)})
    os.replace(tmp, path)
    return path


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def compute_digest(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(canonical(header).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(b"\x00" + name.encode() + b"\x00")
        h.update(str(t.dtype).encode())
        h.update(json.dumps(list(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
