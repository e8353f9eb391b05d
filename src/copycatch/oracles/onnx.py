"""ONNX files as suspects (:class:`OnnxOracle`, onnxruntime) and :func:`export_onnx` for copycatch models.

Needs the ``onnx`` extra (``pip install 'copycatch[onnx]'``); without it, a one-line error says so.
ONNX files hold a computation graph and weights, nothing executable by Python, so opening a file handed
over by a suspect is safe in the way unpickling is not.

:class:`OnnxOracle` options (defaults):
    num_classes (None): else from the file's copycatch metadata, else the output's static last dimension.
    input_shape (None): C×H×W; else from the metadata, else the input's static dimensions.
    input_format ("auto"): "nchw", "nhwc" or "flat" (N×D rows, e.g. a converted scikit-learn model); "auto" is
        "flat" when the graph's input has two dimensions, else "nchw".
    input_name / output_name (None): which graph input and output; default the only input and, of several
        outputs, the scores: the first output named like ``prob`` that holds scores, else the first that holds
        scores (a float tensor that is not 1-D, or a sequence of maps), else the first output. A scikit-learn model
        converted by skl2onnx answers ``label`` and ``probabilities`` (a tensor with ``zipmap=False``, else a
        ZipMap: one {class: probability} map per row, put in the order of the ZipMap's class labels, which is
        the order of ``predict_proba``'s columns).
    output ("auto"): "probs", "logits" (softmax applied), "labels" (class indices, or a score matrix reduced
        to its argmax) or "auto": the metadata's word if :func:`export_onnx` wrote the file, else labels for an
        integer or 1-D output, else probabilities when the first answered batch has non-negative rows summing
        to 1 (±1e-3) and logits otherwise; the choice is then kept for every batch. "probs" and "logits" are
        refused for a graph with no score output.
    batch_size (256): rows per ``session.run``; a graph with a static batch dimension B gets batches of exactly B
        (the last one padded).
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

from ..core.errors import CopycatchError, CorruptFile, InvalidArgument, SuspectError
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
        self.input = _pick(self.session.get_inputs(), input_name, "input", path)
        self.output = _pick_output(self.session.get_outputs(), output_name, output, path)
        # a ZipMap answers one {class: score} map per row; its class labels fix the columns' order
        self._maps = _is_map_sequence(self.output)
        self.zipmap_classes = _zipmap_classes(data, self.output.name) if self._maps else None
        if input_format == "auto":  # a 2-D graph input takes flat rows (e.g. a converted scikit-learn model)
            input_format = "flat" if len(self.input.shape) == 2 else "nchw"
        self.input_format = input_format
        meta_shape = self._meta("input_shape")
        if input_shape is None:
            input_shape = meta_shape or _static_shape(self.input.shape, input_format)
        classes = num_classes if num_classes is not None else self._meta("num_classes")
        if classes is None and self.zipmap_classes is not None:
            classes = len(self.zipmap_classes)
        if classes is None and len(self.output.shape) == 2 and isinstance(self.output.shape[1], int):
            classes = self.output.shape[1]
        if classes is None:
            raise InvalidArgument(f"{path}: cannot tell the number of classes from the graph; pass num_classes")
        super().__init__(int(classes), input_shape, budget=budget, name=name or path.name)
        self.path, self.batch_size, self.requested_output = path, batch_size, output
        batch_dim = self.input.shape[0] if self.input.shape else None
        self.static_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        if self.static_batch is not None:
            self.batch_size = self.static_batch
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
        rows = len(arr)
        if self.static_batch is not None and rows < self.static_batch:  # the graph takes batches of one size only
            arr = np.concatenate([arr, np.zeros((self.static_batch - rows, *arr.shape[1:]), dtype=arr.dtype)])
        try:
            out = self.session.run([self.output.name], {self.input.name: arr})[0]
        except Exception as exc:  # the suspect's own failure (bad shapes, unsupported ops), reported as such
            raise SuspectError(
                f"{self.name} failed on a batch of {len(arr)}: {str(exc).splitlines()[0][:300]}"
            ) from None
        out = self._map_rows(out) if self._maps else np.asarray(out)
        out = out[:rows]
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

    def _map_rows(self, out: Any) -> np.ndarray:
        """A ZipMap's answer (one {class: score} map per row) as an N×C array in the ZipMap's class order."""
        if self.zipmap_classes is None:  # no ZipMap node found (or no onnx to read it): sorted, as predict_proba's
            self.zipmap_classes = sorted(out[0]) if len(out) else []
        classes = self.zipmap_classes
        try:
            return np.array([[row[c] for c in classes] for row in out], dtype=np.float64).reshape(-1, len(classes))
        except (KeyError, TypeError) as exc:
            raise SuspectError(
                f"{self.name} answered maps whose keys are not the classes {classes[:10]} ({exc!r})"
            ) from None

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"file": str(self.path), "sha256": self.sha256, "output": self._kind, "output_name": self.output.name})
        return d


def _pick(items: Sequence[Any], wanted: str | None, what: str, path: Path) -> Any:
    names = [i.name for i in items]
    if wanted is not None:
        for item in items:
            if item.name == wanted:
                return item
        raise InvalidArgument(f"{path}: no {what} named {wanted!r}; it has {', '.join(names)}")
    if len(items) != 1:
        raise InvalidArgument(f"{path}: the graph has {len(items)} {what}s ({', '.join(names)}); name one")
    return items[0]


def _is_map_sequence(arg: Any) -> bool:
    return arg.type.startswith("seq(map(")


def _holds_scores(arg: Any) -> bool:
    """A graph output that can hold per-class scores: a ZipMap's maps, or a float tensor that is not 1-D."""
    return _is_map_sequence(arg) or (arg.type in _FLOAT_TYPES and len(arg.shape) != 1)


def _pick_output(outputs: Sequence[Any], wanted: str | None, output: str, path: Path) -> Any:
    """The output to read: ``wanted``, else the scores among several outputs (see the module docstring)."""
    listed = ", ".join(f"{o.name} ({o.type})" for o in outputs)
    if wanted is not None:
        chosen = next((o for o in outputs if o.name == wanted), None)
        if chosen is None:
            raise InvalidArgument(f"{path}: no output named {wanted!r}; it has {listed}")
    else:
        scores = [o for o in outputs if _holds_scores(o)]
        named = [o for o in scores if "prob" in o.name.lower()]
        chosen = (named or scores or list(outputs))[0]
    if output in ("probs", "logits") and not _holds_scores(chosen):
        raise InvalidArgument(
            f"{path}: output={output!r} needs per-class scores, but output {chosen.name!r} ({chosen.type}) holds "
            f"none; the graph's outputs: {listed}"
        )
    return chosen


def _zipmap_classes(model_bytes: bytes, output_name: str) -> list[Any] | None:
    """The class labels of the ZipMap node that makes ``output_name``, in its order (None when none is found)."""
    try:
        import onnx
    except ImportError:
        return None
    for node in onnx.load_from_string(model_bytes).graph.node:
        if node.op_type == "ZipMap" and output_name in node.output:
            for attribute in node.attribute:
                if attribute.name == "classlabels_int64s":
                    return list(attribute.ints)
                if attribute.name == "classlabels_strings":
                    return [value.decode() for value in attribute.strings]
    return None


def _static_shape(shape: Sequence[Any], input_format: str) -> tuple[int, ...] | None:
    dims = list(shape[1:])
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    if input_format == "nhwc" and len(dims) == 3:
        return (dims[2], dims[0], dims[1])
    if input_format == "flat":
        return None  # a flat width does not say C×H×W; the key's input shape will be used
    return tuple(dims)


_FLOAT_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)")


def _numpy_type(onnx_type: str) -> Any:
    types = {"tensor(double)": np.float64, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
    return types.get(onnx_type, np.float32)


def _guess_kind(out: np.ndarray) -> str:
    if out.ndim == 1 or out.dtype.kind in "iu":
        return "labels"
    if out.ndim == 2 and np.all(np.isfinite(out)) and (out >= 0).all() and np.allclose(out.sum(axis=1), 1, atol=1e-3):
        return "probs"
    return "logits"


# The TorchScript exporter (the one that works offline, without onnxscript) writes opsets 9 to 20, and onnxruntime
# 1.17, the extra's floor, runs all of them.
OPSETS = range(9, 21)
EXPORT_OUTPUTS = {"probs": "probabilities", "logits": "logits"}  # what the file answers -> its default output name


class ExportMismatch(CopycatchError):
    """An exported ONNX file answers differently from the PyTorch model it was exported from; ``result`` holds the
    comparison (:func:`check_onnx_export`'s return value)."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


class _Probabilities(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    output: str = "probs",
    input_name: str = "input",
    output_name: str | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Write a copycatch :class:`~copycatch.models.base.Classifier` as ONNX answering probabilities (or logits).

    ``opset`` is one of :data:`OPSETS`; ``output`` is ``"probs"`` (softmax in the graph) or ``"logits"``; the graph's
    input is named ``input_name`` and its output ``output_name`` (default ``probabilities`` or ``logits``). The batch
    dimension is dynamic unless ``dynamic_batch`` is false (then the file takes one input at a time). The file's
    metadata records the input shape, the number of classes, the class names, the output and the weights' SHA-256,
    which :class:`OnnxOracle` reads back.
    """
    from ..models.base import Classifier
    from ..models.io import weights_digest

    if not isinstance(model, Classifier):
        raise InvalidArgument(f"export_onnx needs a copycatch Classifier, got {type(model).__name__}")
    if output not in EXPORT_OUTPUTS:
        raise InvalidArgument(f"output must be one of {', '.join(EXPORT_OUTPUTS)}, got {output!r}")
    if not isinstance(opset, int) or opset not in OPSETS:
        raise InvalidArgument(f"opset must be an integer from {OPSETS[0]} to {OPSETS[-1]}, got {opset!r}")
    output_name = EXPORT_OUTPUTS[output] if output_name is None else output_name
    for what, name in (("input_name", input_name), ("output_name", output_name)):
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(f"{what} must be a non-empty name, got {name!r}")
    if input_name == output_name:
        raise InvalidArgument(f"input_name and output_name must differ, both are {input_name!r}")
    wrapped = _Probabilities(model) if output == "probs" else model
    meta = {
        "num_classes": model.num_classes,
        "input_shape": list(model.input_shape),
        "class_names": list(model.class_names or []),
        "arch": model.arch,
        "output": output,
        "weights_sha256": weights_digest(model),
    }
    return write_onnx(
        wrapped, sample_inputs(model, 1), path, input_name, output_name, opset=opset, dynamic=dynamic_batch, meta=meta
    )


def write_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    input_name: str,
    output_name: str,
    *,
    opset: int,
    dynamic: bool,
    meta: dict[str, Any],
) -> Path:
    """Export ``module`` (traced on ``example``) to ``path`` atomically, with copycatch's ``meta`` in the graph's
    metadata (what :class:`OnnxOracle` and the encoder oracle read back)."""
    try:
        import onnx
    except ImportError:
        raise InvalidArgument("exporting to ONNX needs onnx: pip install 'copycatch[onnx]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of one that needs onnxscript; it is what works offline
        warnings.simplefilter("ignore")
        kwargs: dict[str, Any] = {"input_names": [input_name], "output_names": [output_name], "opset_version": opset}
        if dynamic:
            kwargs["dynamic_axes"] = {input_name: {0: "batch"}, output_name: {0: "batch"}}
        module = module.eval().cpu()
        try:
            torch.onnx.export(module, example, str(tmp), dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(module, example, str(tmp), **kwargs)
    graph = onnx.load(str(tmp))
    for field, value in {"format": "copycatch.onnx/1", **meta}.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = META_PREFIX + field, json.dumps(value)
    onnx.save(graph, str(tmp))
    os.replace(tmp, path)
    return path


def sample_inputs(model: Any, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` seeded random inputs in the model's input domain: token ids below the vocabulary's size for a text
    model, samples in [-1, 1) for audio, pixels in [0, 1) for images."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, *model.input_shape)
    if model.modality == "text":
        return torch.randint(0, int(model.arch_kwargs.get("vocab_size", 2)), shape, generator=generator)
    x = torch.rand(shape, generator=generator)
    return x * 2 - 1 if model.modality == "audio" else x


def check_onnx_export(
    model: Any, path: str | os.PathLike, *, atol: float = 1e-5, inputs: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Run the ONNX file written by :func:`export_onnx` with onnxruntime on ``inputs`` seeded random inputs of the
    model's shape and compare with PyTorch in the file's output space (probabilities or logits).

    A dynamic-batch file is run on all inputs in one batch and on the first alone; a static one input at a time.
    Returns the largest absolute difference and the batch sizes run; raises :class:`ExportMismatch` above ``atol``.
    """
    if not atol >= 0:
        raise InvalidArgument(f"atol must be >= 0, got {atol}")
    if inputs < 1:
        raise InvalidArgument(f"inputs must be >= 1, got {inputs}")
    ort = _runtime()
    path = Path(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map or {})
    logits = json.loads(meta.get(META_PREFIX + "output", '"probs"')) == "logits"
    feed, fetch = session.get_inputs()[0], session.get_outputs()[0]
    x = sample_inputs(model, inputs, seed=seed)
    with torch.no_grad():
        scores = model.eval().cpu()(x)
        expected = (scores if logits else torch.softmax(scores, dim=1)).numpy()
    dynamic = not isinstance(feed.shape[0], int)
    batches = [slice(0, inputs), slice(0, 1)] if dynamic else [slice(i, i + 1) for i in range(inputs)]
    worst = 0.0
    for rows in batches:
        got = session.run([fetch.name], {feed.name: x[rows].numpy()})[0]
        worst = max(worst, float(np.abs(got - expected[rows]).max()))
    result = {"max_abs_diff": worst, "atol": atol, "inputs": inputs, "batch_sizes": [b.stop - b.start for b in batches]}
    if not worst <= atol:
        raise ExportMismatch(
            f"{path}: onnxruntime and PyTorch differ by up to {worst:.3g} on {inputs} random inputs, more than "
            f"atol={atol:g} (the file is kept for inspection)",
            result,
        )
    return result
