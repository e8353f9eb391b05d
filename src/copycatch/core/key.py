"""The owner's key: everything needed to verify, in one file, with a digest.

A key holds the scheme name, its (public) parameters, its secret tensors
(trigger inputs, secret labels, secret API-time parameters) and metadata
(creation time, package version, data set, architecture, victim digest).

File format: safetensors. The header metadata carries ``copycatch.key`` (JSON of
format, scheme, params and meta) and ``digest``: SHA-256 over a canonical
encoding of that JSON (sorted keys, compact separators) followed by every tensor
in name order (name, dtype, shape, little-endian bytes). Loading recomputes the
digest; a mismatch, a truncated file or a foreign file is an error naming the
file — never a warning. Nothing is unpickled.
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
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = self.header()
        try:
            text = _canonical(header)
        except TypeError as exc:
            raise InvalidArgument(f"key metadata is not JSON-serialisable: {exc}") from None
        tmp = path.with_name(path.name + ".part")
        save_file(dict(self.tensors), str(tmp), metadata={"copycatch.key": text, "digest": self.digest})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Key:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InvalidArgument(f"{path}: no such key file")
        try:
            tensors = {}
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                for name in f.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                    tensors[name] = f.get_tensor(name)
        except Exception as exc:  # safetensors raises several types for damaged files
            raise CorruptFile(f"{path}: not a readable key file ({exc})") from None
        if "copycatch.key" not in meta or "digest" not in meta:
            raise CorruptFile(f"{path}: not a copycatch key (no key header)")
        try:
            header = json.loads(meta["copycatch.key"])
        except json.JSONDecodeError:
            raise CorruptFile(f"{path}: key header is not valid JSON") from None
        if header.get("format") != FORMAT:
            raise CorruptFile(f"{path}: unsupported key format {header.get('format')!r} (expected {FORMAT})")
        actual = compute_digest(header, tensors)
        if actual != meta["digest"]:
            raise CorruptFile(
                f"{path}: key digest mismatch (stored {meta['digest'][:12]}…, computed {actual[:12]}…): "
                "the key was modified or damaged"
            )
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


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def compute_digest(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(_canonical(header).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(b"\x00" + name.encode() + b"\x00")
        h.update(str(t.dtype).encode())
        h.update(json.dumps(list(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
