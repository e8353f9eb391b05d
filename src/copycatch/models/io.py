"""Model files: safetensors with a JSON ``copycatch`` header entry; loading never unpickles anything."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..core.errors import CorruptFile, InvalidArgument
from .base import FORMAT, Classifier, create_model


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, bytes) in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(model: Classifier, path: str | os.PathLike, *, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors with its description in the header. Writes atomically."""
    from safetensors.torch import save_file

    if not isinstance(model, Classifier):
        raise InvalidArgument(f"save_model needs a copycatch Classifier, got {type(model).__name__}")
    if provenance:
        model.provenance.update(provenance)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = model.describe()
    meta["package_version"] = __version__
    meta["weights_sha256"] = weights_digest(model)
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp), metadata={"copycatch": json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)
    return path


def read_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description stored in a model file, without loading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several error types for damaged headers
        raise CorruptFile(f"{path}: not a readable safetensors model file ({exc})") from None
    if "copycatch" not in meta:
        raise CorruptFile(f"{path}: safetensors file without copycatch metadata (not a copycatch model file)")
    try:
        info = json.loads(meta["copycatch"])
    except json.JSONDecodeError:
        raise CorruptFile(f"{path}: model metadata is not valid JSON") from None
    if info.get("format") != FORMAT:
        raise CorruptFile(f"{path}: unsupported model format {info.get('format')!r} (expected {FORMAT})")
    return info


def load_model(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", verify_digest: bool = True
) -> Classifier:
    """Load a model file written by :func:`save_model` (no pickle involved)."""
    from safetensors.torch import load_file

    path = Path(path)
    info = read_model_info(path)
    try:
        model = create_model(
            info["arch"],
            info["input_shape"],
            info["num_classes"],
            mean=info["mean"],
            std=info["std"],
            class_names=tuple(info.get("class_names") or ()) or None,
            **info.get("arch_kwargs", {}),
        )
    except KeyError as exc:
        raise CorruptFile(f"{path}: model metadata lacks {exc}") from None
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CorruptFile(f"{path}: cannot read weights ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CorruptFile(
            f"{path}: weights do not fit architecture {info['arch']!r} ({str(exc).splitlines()[0]})"
        ) from None
    if verify_digest and info.get("weights_sha256") and weights_digest(model) != info["weights_sha256"]:
        raise CorruptFile(f"{path}: weights do not match the digest in the file (modified or damaged)")
    model.provenance = dict(info.get("provenance") or {})
    return model.to(device).eval()
