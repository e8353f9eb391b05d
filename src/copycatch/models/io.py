"""Model files: safetensors with a JSON ``copycatch`` header entry; loading never unpickles anything.

A text model's file also holds the vocabulary its ids come from (:class:`~copycatch.data.vocabulary.Vocabulary`,
as its canonical JSON in the header entry ``copycatch.vocabulary``, with its SHA-256 and size in the ``copycatch``
entry), so that whoever queries the model encodes strings as it was trained to read them. Loading checks the
vocabulary against that digest, against the embedding size (``vocab_size``) and against the digest prefix of the
data provenance, and refuses a file where they disagree; a file written before vocabularies were stored loads
with ``model.vocabulary = None``.
"""

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
from ..data.vocabulary import Vocabulary
from .base import FORMAT, Classifier, create_model

VOCABULARY_ENTRY = "copycatch.vocabulary"  # the safetensors header entry holding a text model's vocabulary JSON


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


def save_model(
    model: Classifier,
    path: str | os.PathLike,
    *,
    provenance: dict[str, Any] | None = None,
    vocabulary: Vocabulary | None = None,
) -> Path:
    """Write ``model`` as safetensors with its description in the header. Writes atomically.

    A text model's ``vocabulary`` (default: ``model.vocabulary``, when the model carries one) is stored with it,
    after :func:`check_vocabulary`; it becomes ``model.vocabulary``."""
    from safetensors.torch import save_file

    if not isinstance(model, Classifier):
        raise InvalidArgument(f"save_model needs a copycatch Classifier, got {type(model).__name__}")
    if provenance:
        model.provenance.update(provenance)
    vocabulary = vocabulary if vocabulary is not None else getattr(model, "vocabulary", None)
    if vocabulary is not None:
        check_vocabulary(model, vocabulary)
        model.vocabulary = vocabulary
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = model.describe()
    meta["package_version"] = __version__
    meta["weights_sha256"] = weights_digest(model)
    header = {}
    if vocabulary is not None:
        meta["vocabulary"] = {"sha256": vocabulary.digest(), "size": len(vocabulary)}
        header[VOCABULARY_ENTRY] = vocabulary.to_json()
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp), metadata={"copycatch": json.dumps(meta, sort_keys=True), **header})
    os.replace(tmp, path)
    return path


def check_vocabulary(model: Classifier, vocabulary: Vocabulary, *, what: str = "the vocabulary") -> None:
    """Refuse ``vocabulary`` for ``model`` unless the model reads text with an embedding of exactly its size and,
    when the model's provenance names the vocabulary of its training data, this is that vocabulary."""
    if model.modality != "text":
        raise InvalidArgument(f"{what} belongs with a text model; {model.arch!r} reads {model.modality} inputs")
    size = model.arch_kwargs.get("vocab_size")
    if size != len(vocabulary):
        raise InvalidArgument(
            f"{what} holds {len(vocabulary)} tokens but the {model.arch!r} model embeds vocab_size={size} ids"
        )
    recorded = (model.provenance.get("vocabulary") or {}).get("digest")
    if recorded and not vocabulary.digest().startswith(recorded):
        raise InvalidArgument(
            f"{what} (digest {vocabulary.digest()[:16]}) is not the one the model's training data were encoded with "
            f"(digest {recorded})"
        )


def read_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description stored in a model file, without loading the weights."""
    return _read_header(path)[0]


def _read_header(path: str | os.PathLike) -> tuple[dict[str, Any], Vocabulary | None]:
    """The JSON description stored in a model file and the vocabulary stored beside it (None without one)."""
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
    return info, _stored_vocabulary(path, info, meta.get(VOCABULARY_ENTRY))


def _stored_vocabulary(path: Path, info: dict[str, Any], text: str | None) -> Vocabulary | None:
    """The vocabulary of the header entry, checked against the digest and size the description records."""
    recorded = info.get("vocabulary")
    if text is None and recorded is None:
        return None
    if text is None or not isinstance(recorded, dict):
        missing = "vocabulary" if text is None else "vocabulary's digest"
        raise CorruptFile(f"{path}: the {missing} of this text model is missing from the file (damaged)")
    try:
        vocabulary = Vocabulary.from_json(text)
    except CorruptFile as exc:
        raise CorruptFile(f"{path}: stored {exc}") from None
    if vocabulary.digest() != recorded.get("sha256"):
        raise CorruptFile(
            f"{path}: the stored vocabulary (digest {vocabulary.digest()[:16]}) does not match the digest in the file "
            f"({str(recorded.get('sha256'))[:16]}): modified or damaged"
        )
    return vocabulary


def load_model(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", verify_digest: bool = True
) -> Classifier:
    """Load a model file written by :func:`save_model` (no pickle involved)."""
    from safetensors.torch import load_file

    path = Path(path)
    info, vocabulary = _read_header(path)
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
    if vocabulary is not None:
        try:
            check_vocabulary(model, vocabulary, what="the stored vocabulary")
        except InvalidArgument as exc:
            raise CorruptFile(f"{path}: {exc}") from None
    model.vocabulary = vocabulary
    return model.to(device).eval()
