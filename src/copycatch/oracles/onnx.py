"""ONNX files as suspects (:class:`OnnxOracle`, onnxruntime) and :func:`export_onnx` for copycatch models.

Needs the ``onnx`` extra (``pip install 'copycatch[onnx]'``); without it, a one-line error says so.
ONNX files hold a computation graph and weights, nothing executable by Python, so opening a file handed
over by a suspect is safe in the way unpickling is not.

:class:`OnnxOracle` options (defaults):
    num_classes (None): else from the file's copycatch metadata, else the output's static last dimension.
    input_shape (None): C×H×W; else from the metadata, else the input's static dimensions.
    input_format ("auto"): "nchw", "nhwc" or "flat" (N×D rows, e.g. a converted scikit-learn model); "auto" is
        "flat" when the graph's input has two dimensions, else "nchw".
    input_name / output_name (None): which graph input and output; default the only input and the first output.
    output ("auto"): "probs", "logits" (softmax applied), "labels" (class indices, or a score matrix reduced
        to its argmax) or "auto": the metadata's word if :func:`export_onnx` wrote the file, else labels for an
        integer or 1-D output, else probabilities when the first answered batch has non-negative rows summing
        to 1 (±1e-3) and logits otherwise; the choice is then kept for every batch.
    batch_size (256): rows per ``session.run``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import CorruptFile, InvalidArgument, SuspectError
from .base import Oracle

META_PREFIX = "copycatch."
OUTPUTS = ("auto", "probs", "logits", "labels")


def _runtime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise InvalidArgument("ONNX suspects need onnxruntime: pip install 'copycatch[onnx]'") from None
    return onnxruntime


class OnnxOracle(Oracle):
    """An ONNX file answering probabilities, logits or labels (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        budget: int | None = None,
        output: str = "auto",
        input_format: str = "auto",
        input_name: str | None = None,
        output_name: str | None = None,
        batch_size: int = 256,
        name: str | None = None,
    ):
        ort = _runtime()
        path = Path(path)
        if not path.is_file():
            raise InvalidArgument(f"{path}: no such ONNX file")
        if output not in OUTPUTS:
            raise InvalidArgument(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if input_format not in ("auto", "nchw", "nhwc", "flat"):
            raise InvalidArgument(f"input_format must be auto, nchw, nhwc or flat, got {input_format!r}")
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        data = path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise CorruptFile(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map or {})
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input = _pick(inputs, input_name, "input", path, only=True)
        self.output = _pick(outputs, output_name, "output", path, only=False)
        if input_format == "auto":  # a 2-D graph input takes flat rows (e.g. a converted scikit-learn model)
            input_format = "flat" if len(self.input.shape) == 2 else "nchw"
        self.input_format = input_format
        meta_shape = self._meta("input_shape")
        if input_shape is None:
            input_shape = meta_shape or _static_shape(self.input.shape, input_format)
        classes = num_classes if num_classes is not None else self._meta("num_classes")
        if classes is None and len(self.output.shape) == 2 and isinstance(self.output.shape[1], int):
            classes = self.output.shape[1]
        if classes is None:
            raise InvalidArgument(f"{path}: cannot tell the number of classes from the graph; pass num_classes")
        super().__init__(int(classes), input_shape, budget=budget, name=name or path.name)
        self.path, self.batch_size, self.requested_output = path, batch_size, output
        self._kind = output if output != "auto" else self._meta("output")
        if self._kind == "labels":
            self.output_kind = "labels"

    def _meta(self, field: str) -> Any:
        value = self.metadata.get(META_PREFIX + field)
        return json.loads(value) if value is not None else None

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._run(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.numpy()
        if self.input_format == "nhwc":
            arr = arr.transpose(0, 2, 3, 1)
        elif self.input_format == "flat":
            arr = arr.reshape(len(arr), -1)
        arr = np.ascontiguousarray(arr, dtype=_numpy_type(self.input.type))
        try:
            out = self.session.run([self.output.name], {self.input.name: arr})[0]
        except Exception as exc:  # the suspect's own failure (bad shapes, unsupported ops), reported as such
            raise SuspectError(
                f"{self.name} failed on a batch of {len(arr)}: {str(exc).splitlines()[0][:300]}"
            ) from None
        out = np.asarray(out)
        kind = self._kind or _guess_kind(out)
        self._kind = kind
        if kind == "labels":
            self.output_kind = "labels"
            labels = out.argmax(axis=1) if out.ndim == 2 else out.reshape(-1)
            if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
                raise SuspectError(f"{self.name} answered NaN or Inf labels")
            if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
                raise SuspectError(f"{self.name} answered non-integer labels")
            t = torch.as_tensor(labels.astype(np.int64))
            if len(t) != len(x):
                raise SuspectError(f"{self.name} answered {len(t)} labels for {len(x)} inputs")
            if len(t) and (t.min() < 0 or t.max() >= self.num_classes):
                raise SuspectError(f"{self.name} answered labels outside 0..{self.num_classes - 1}")
            return torch.nn.functional.one_hot(t, self.num_classes).float()
        t = torch.as_tensor(out.astype(np.float32))
        if kind == "logits" and t.ndim == 2:
            t = torch.softmax(t, dim=1)
        return t

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"file": str(self.path), "sha256": self.sha256, "output": self._kind})
        return d


def _pick(items: Sequence[Any], wanted: str | None, what: str, path: Path, *, only: bool) -> Any:
    names = [i.name for i in items]
    if wanted is not None:
        for item in items:
            if item.name == wanted:
                return item
        raise InvalidArgument(f"{path}: no {what} named {wanted!r}; it has {', '.join(names)}")
    if only and len(items) != 1:
        raise InvalidArgument(f"{path}: the graph has {len(items)} {what}s ({', '.join(names)}); name one")
    return items[0]


def _static_shape(shape: Sequence[Any], input_format: str) -> tuple[int, ...] | None:
    dims = list(shape[1:])
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    if input_format == "nhwc" and len(dims) == 3:
        return (dims[2], dims[0], dims[1])
    if input_format == "flat":
        return None  # a flat width does not say C×H×W; the key's input shape will be used
    return tuple(dims)


def _numpy_type(onnx_type: str) -> Any:
    return {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(onnx_type, np.float32)


def _guess_kind(out: np.ndarray) -> str:
    if out.ndim == 1 or out.dtype.kind in "iu":
        return "labels"
    if out.ndim == 2 and np.all(np.isfinite(out)) and (out >= 0).all() and np.allclose(out.sum(axis=1), 1, atol=1e-3):
        return "probs"
    return "logits"


class _Probabilities(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_onnx(model: Any, path: str | os.PathLike, *, opset: int = 17) -> Path:
    """Write a copycatch :class:`~copycatch.models.base.Classifier` as ONNX answering probabilities.

    The batch dimension is dynamic; the file's metadata records the input shape, the number of classes,
    the class names and the weights' SHA-256, which :class:`OnnxOracle` reads back.
    """
    from ..models.base import Classifier
    from ..models.io import weights_digest

    if not isinstance(model, Classifier):
        raise InvalidArgument(f"export_onnx needs a copycatch Classifier, got {type(model).__name__}")
    try:
        import onnx
    except ImportError:
        raise InvalidArgument("exporting to ONNX needs onnx: pip install 'copycatch[onnx]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _Probabilities(model).eval().cpu()
    example = torch.zeros(1, *model.input_shape)
    tmp = path.with_name(path.name + ".part")
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of one that needs onnxscript; it is what works offline
        warnings.simplefilter("ignore")
        kwargs = {
            "input_names": ["input"],
            "output_names": ["probabilities"],
            "opset_version": opset,
            "dynamic_axes": {"input": {0: "batch"}, "probabilities": {0: "batch"}},
        }
        try:
            torch.onnx.export(wrapped, example, str(tmp), dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(wrapped, example, str(tmp), **kwargs)
    graph = onnx.load(str(tmp))
    meta = {
        "format": "copycatch.onnx/1",
        "num_classes": model.num_classes,
        "input_shape": list(model.input_shape),
        "class_names": list(model.class_names or []),
        "arch": model.arch,
        "output": "probs",
        "weights_sha256": weights_digest(model),
    }
    for field, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = META_PREFIX + field, json.dumps(value)
    onnx.save(graph, str(tmp))
    os.replace(tmp, path)
    return path
