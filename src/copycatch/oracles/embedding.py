"""Encoders as oracles: inputs in, embedding vectors out, every query counted against a hard budget.

An embedding oracle is an :class:`~copycatch.oracles.base.Oracle` whose ``output_kind`` is ``"embedding"`` and whose
answer width (``num_classes`` in the base class, :attr:`dim` here) is the embedding's: budgets, ``query_all``, answer
checks (shape, NaN/Inf) and transcripts work unchanged. What an encoder API serves is the encoder's raw output (the
``features`` of a copycatch encoder, see :mod:`copycatch.models.encoder`), never a softmax.

Oracles (options beyond ``budget`` and ``name``):

* :class:`EncoderOracle`: an in-process encoder (a copycatch model: its ``features``; any other ``nn.Module``: its
  output, ``dim`` then required).
* :class:`CallableEncoderOracle`: ``fn(batch) -> N×dim`` (a NumPy N×C×H×W batch, or the tensor with
  ``input_format="torch"``).
* :class:`OnnxEncoderOracle`: an ONNX file answering embeddings (:func:`export_encoder_onnx` writes one from a
  copycatch encoder; its metadata give ``dim`` and the input shape).
* :class:`HttpEncoderOracle`: copycatch's embedding API (``POST {url}/v1/embed`` → ``{"embeddings": [...]}``,
  ``GET {url}/v1/embed/info``; :mod:`copycatch.serve.embedding`), through the prediction client's machinery
  (retries, ``Retry-After``, deadlines, API keys: every option of :class:`~copycatch.oracles.http.HttpOracle`).

:func:`as_encoder_oracle` opens any of them from an object, a model or ONNX file, or a URL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import InvalidArgument, SuspectError
from ..models.train import EVAL_BATCH
from .base import Oracle
from .callable import CallableOracle
from .http import HttpOracle
from .onnx import OnnxOracle, write_onnx

EMBEDDING = "embedding"
EMBED_PATH = "/v1/embed"
EMBED_INFO_PATH = "/v1/embed/info"


class _Embeddings:
    """Mixin: answers are embeddings (``output_kind``), ``dim`` wide."""

    output_kind = EMBEDDING
    num_classes: int

    @property
    def dim(self) -> int:
        return self.num_classes


def is_embedding_oracle(oracle: Any) -> bool:
    """Whether ``oracle`` answers embeddings (declared by its ``output_kind``)."""
    return isinstance(oracle, Oracle) and oracle.output_kind == EMBEDDING


def require_embedding_oracle(oracle: Any, what: str) -> Oracle:
    """``oracle`` if it answers embeddings, else an error saying that ``what`` needs an encoder API."""
    if not is_embedding_oracle(oracle):
        kind = getattr(oracle, "output_kind", type(oracle).__name__)
        raise InvalidArgument(
            f"{what} needs an encoder that answers embeddings (an embedding oracle), got an oracle answering {kind}; "
            "open encoders with copycatch.oracles.embedding.as_encoder_oracle"
        )
    return oracle


class EncoderOracle(_Embeddings, Oracle):
    """An in-process encoder: a copycatch model's ``features``, or a plain module's output (then give ``dim``)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        dim: int | None = None,
        input_shape: Sequence[int] | None = None,
        budget: int | None = None,
        batch_size: int = EVAL_BATCH,
        name: str = "encoder",
    ):
        from ..models.base import Classifier
        from ..models.encoder import embedding_dim

        self.embed = model.features if isinstance(model, Classifier) else model
        dim = dim or (embedding_dim(model) if isinstance(model, Classifier) else None)
        if dim is None:
            raise InvalidArgument("EncoderOracle needs dim (the embedding width) for a plain nn.Module")
        super().__init__(dim, input_shape or getattr(model, "input_shape", None), budget=budget, name=name)
        self.model = model.eval()
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        outs = [
            self.embed(x[i : i + self.batch_size].to(self.device)).float().cpu()
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(outs)


class CallableEncoderOracle(_Embeddings, CallableOracle):
    """Any callable answering N×dim embeddings (see :class:`~copycatch.oracles.callable.CallableOracle`)."""

    def __init__(self, fn: Callable[[Any], Any], dim: int, **options: Any):
        super().__init__(fn, dim, **options)

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        out = super()._answer(x)
        if self.output_kind != EMBEDDING:  # CallableOracle took a 1-D answer for labels
            raise SuspectError(f"{self.name} answered a 1-D array; an encoder answers N×{self.dim} embeddings")
        return out


class OnnxEncoderOracle(_Embeddings, OnnxOracle):
    """An ONNX encoder (``dim`` from the file's copycatch metadata or the output's static width, else give it)."""

    def __init__(self, path: str | os.PathLike, *, dim: int | None = None, **options: Any):
        if options.get("output", "probs") != "probs":
            raise InvalidArgument(f"an ONNX encoder answers embeddings as they are, got output={options['output']!r}")
        options["output"] = "probs"  # the float matrix passes unchanged (no softmax, no argmax)
        super().__init__(path, num_classes=dim, **options)
        self.output_kind = EMBEDDING


class HttpEncoderOracle(_Embeddings, HttpOracle):
    """copycatch's embedding API over HTTP (``dim`` and the input shape from ``/v1/embed/info`` unless given)."""

    def __init__(self, url: str, *, dim: int | None = None, **options: Any):
        options.setdefault("predict_path", EMBED_PATH)
        options.setdefault("info_path", EMBED_INFO_PATH)
        options.setdefault("output_field", "embeddings")
        if options.get("output_kind", "probs") != "probs":
            raise InvalidArgument(f"an encoder API answers embeddings, got output_kind={options['output_kind']!r}")
        options["output_kind"] = "probs"  # the float matrix passes unchanged
        super().__init__(url, num_classes=dim, **options)
        self.output_kind = EMBEDDING


def as_encoder_oracle(source: Any, **options: Any) -> Oracle:
    """An embedding oracle for ``source``: an embedding oracle (returned as is), a copycatch encoder or ``nn.Module``,
    a model file (``.safetensors``), an ONNX file, an ``http(s)://`` URL of an encoder API, or a callable (then
    ``dim`` is required). ``options`` go to the oracle (``budget``, ``dim``, ``api_key`` …)."""
    if is_embedding_oracle(source):
        if options.get("budget") is not None:
            source.set_budget(options["budget"])
        return source
    if isinstance(source, nn.Module):
        return EncoderOracle(source, **options)
    if isinstance(source, (str, Path)):
        text = str(source)
        if text.startswith(("http://", "https://")):
            return HttpEncoderOracle(text, **options)
        if text.endswith(".onnx"):
            return OnnxEncoderOracle(text, **options)
        from ..models.io import load_model

        return EncoderOracle(load_model(text), **options)
    if callable(source):
        if "dim" not in options:
            raise InvalidArgument("a callable encoder needs dim (the embedding width)")
        return CallableEncoderOracle(source, options.pop("dim"), **options)
    raise InvalidArgument(f"cannot open {type(source).__name__} as an encoder")


class _Features(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def export_encoder_onnx(model: Any, path: str | os.PathLike, *, opset: int = 17) -> Path:
    """Write a copycatch encoder's embedding (its ``features``, normalisation included) as ONNX; the metadata record
    the input shape, the embedding width and the weights' SHA-256 (:class:`OnnxEncoderOracle` reads them)."""
    from ..models.base import Classifier
    from ..models.encoder import embedding_dim
    from ..models.io import weights_digest

    if not isinstance(model, Classifier):
        raise InvalidArgument(f"export_encoder_onnx needs a copycatch model, got {type(model).__name__}")
    dim = embedding_dim(model)
    meta = {
        "num_classes": dim,  # the answer's width, what OnnxOracle reads
        "embedding_dim": dim,
        "input_shape": list(model.input_shape),
        "arch": model.arch,
        "output": EMBEDDING,
        "weights_sha256": weights_digest(model),
    }
    example = torch.zeros(1, *model.input_shape)
    return write_onnx(_Features(model), example, path, "input", "embedding", opset=opset, dynamic=True, meta=meta)
