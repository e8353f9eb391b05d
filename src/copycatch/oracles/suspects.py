"""Turn whatever the user points at into an :class:`~copycatch.oracles.base.Oracle`.

``open_suspect(spec)`` understands:

* a copycatch model file (``.safetensors``) → :class:`~copycatch.oracles.base.ModelOracle`;
* ``http://…`` / ``https://…`` → :class:`copycatch.oracles.http.HttpOracle` (any prediction API);
* a ``.onnx`` file → :class:`copycatch.oracles.onnx.OnnxOracle` (the ``onnx`` extra);
* ``package.module:function`` → :class:`~copycatch.oracles.base.CallableOracle` (returns probabilities or labels);
* ``path/to/file.py:function`` → the same, importing the file (it runs: only name code you trust);
* a ``.evasion.safetensors`` deployment file → the thief's model behind its input-side evasions
  (:func:`copycatch.attacks.removal.evasion.open_deployment`);

and passes oracles, models and callables through. Options not used by a kind of suspect are ignored.
A bound method of a fitted scikit-learn estimator (``mymodule:clf.predict_proba``) gets flat N×D rows
unless ``input_format`` says otherwise, so ``predict_proba`` and ``predict`` work unchanged.

:func:`describe_suspect` fingerprints a suspect for the evidence record, and :func:`add_suspect_arguments` /
:func:`suspect_options` give every verb that queries a suspect the same command-line options.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import InvalidArgument
from .base import CallableOracle, ModelOracle, Oracle

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_FILE_CALLABLE = re.compile(r"^(?P<file>.+\.py):(?P<attr>[A-Za-z_][\w.]*)$")


def open_suspect(spec: Any, *, num_classes: int | None = None, input_shape: Sequence[int] | None = None,
                 budget: int | None = None, device: str | None = None, **options: Any) -> Oracle:
    from ..models.base import Classifier, load_model

    if isinstance(spec, Oracle):
        if budget is not None:
            spec.set_budget(budget)
        return spec
    if isinstance(spec, torch.nn.Module):
        return ModelOracle(spec, num_classes=num_classes, input_shape=input_shape, budget=budget,
                           name=getattr(spec, "arch", "model"))
    if callable(spec):
        if num_classes is None:
            raise InvalidArgument("a callable suspect needs num_classes")
        return CallableOracle(spec, num_classes, input_shape=input_shape, budget=budget,
                              input_format=_input_format(spec, options.get("input_format")))
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidArgument(f"cannot query a {type(spec).__name__}: give a model file, URL, .onnx file, "
                              "module:function, a model, a callable or an Oracle")
    text = str(spec)
    if text.startswith(("http://", "https://")):
        from .http import HttpOracle

        return HttpOracle(text, num_classes=num_classes, input_shape=input_shape, budget=budget,
                          **_accepted(HttpOracle, options))
    if text.endswith(".onnx"):
        from .onnx import OnnxOracle

        return OnnxOracle(text, num_classes=num_classes, input_shape=input_shape, budget=budget,
                          **_accepted(OnnxOracle, options))
    if text.endswith(".evasion.safetensors"):  # a thief's deployment: the model behind its input-side evasions
        from ..attacks.removal.evasion import open_deployment

        return open_deployment(text, budget=budget, device=device)
    if _FILE_CALLABLE.match(text) and not Path(text).exists():
        return _callable_suspect(text, num_classes=num_classes, input_shape=input_shape, budget=budget, **options)
    if _CALLABLE.match(text) and not Path(text).exists():
        return _callable_suspect(text, num_classes=num_classes, input_shape=input_shape, budget=budget, **options)
    model: Classifier = load_model(text, device=device or "cpu")
    return ModelOracle(model, budget=budget, name=Path(text).name)


def _callable_suspect(text: str, *, num_classes: int | None, input_shape: Sequence[int] | None, budget: int | None,
                      **options: Any) -> Oracle:
    file_match = _FILE_CALLABLE.match(text)
    if file_match:
        module_name, attr = file_match["file"], file_match["attr"]
        target: Any = _import_file(module_name, text)
    else:
        module_name, _, attr = text.partition(":")
        try:
            target = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidArgument(f"cannot import {module_name!r} for suspect {text!r}: {exc}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InvalidArgument(f"{module_name!r} has no attribute {attr!r} (suspect {text!r})") from None
    if not callable(target):
        raise InvalidArgument(f"suspect {text!r} is not callable")
    if num_classes is None:
        raise InvalidArgument(f"suspect {text!r} needs the number of classes (the key provides it)")
    return CallableOracle(target, num_classes, input_shape=input_shape, budget=budget,
                          input_format=_input_format(target, options.get("input_format")), name=text)


def _import_file(path: str, text: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise InvalidArgument(f"no such file {path!r} for suspect {text!r}")
    name = "copycatch_suspect_" + hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"cannot import {path!r} for suspect {text!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file failing to import is their error, named as such
        del sys.modules[name]
        raise InvalidArgument(f"importing {path!r} for suspect {text!r} failed: {type(exc).__name__}: {exc}") from None
    return module


def _input_format(target: Any, requested: str | None) -> str:
    """The batch layout a callable gets: as requested, else flat rows for scikit-learn estimators, else N×C×H×W."""
    if requested not in (None, "auto"):
        return requested
    owner = getattr(target, "__self__", None)
    if owner is not None and hasattr(owner, "n_features_in_"):  # a fitted scikit-learn estimator's method
        return "flat"
    return "nchw"


def _accepted(cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options ``cls`` takes (options meant for other kinds of suspects are ignored, as documented)."""
    names = set(inspect.signature(cls).parameters)
    return {k: v for k, v in options.items() if k in names and v is not None}


# ---------------------------------------------------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------------------------------------------------


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_suspect(spec: Any, oracle: Oracle | None = None) -> dict[str, Any]:
    """A fingerprint of the suspect for the evidence record: what it is (``kind``, ``identity``) and digests.

    Files are hashed whole; an HTTP suspect is its URL plus its self-description (``/v1/info``); a callable
    is its ``module:function`` plus the SHA-256 of the module's source file. The transcript's hash chain
    fingerprints the suspect's behaviour on the key.
    """
    from ..models.base import read_model_info

    out: dict[str, Any] = {}
    if isinstance(spec, Oracle) or isinstance(spec, torch.nn.Module) or (callable(spec) and not isinstance(spec, str)):
        name = getattr(spec, "name", None) or getattr(spec, "__qualname__", None) or type(spec).__name__
        out = {"kind": "python object", "identity": f"{type(spec).__module__}.{type(spec).__qualname__}:{name}"}
        if isinstance(spec, torch.nn.Module):
            from ..models.base import weights_digest

            out["weights_sha256"] = weights_digest(spec)
    else:
        text = str(spec)
        if text.startswith(("http://", "https://")):
            out = {"kind": "http", "identity": text}
            info = getattr(oracle, "info", None)
            if info is not None:
                out["info"] = info
                out["info_sha256"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
        elif text.endswith(".onnx") and Path(text).is_file():
            out = {"kind": "onnx", "identity": Path(text).name, "file": str(Path(text).resolve()),
                   "sha256": _file_sha256(text)}
        elif Path(text).is_file():
            out = {"kind": "model file", "identity": Path(text).name, "file": str(Path(text).resolve()),
                   "sha256": _file_sha256(text)}
            try:
                info = read_model_info(text)
                out.update({"arch": info.get("arch"), "weights_sha256": info.get("weights_sha256")})
            except Exception:  # a fingerprint must not fail where loading succeeded; the file hash suffices
                pass
        else:
            out = {"kind": "python callable", "identity": text}
            file_match = _FILE_CALLABLE.match(text)
            source = file_match["file"] if file_match else None
            if source is None:
                module = sys.modules.get(text.partition(":")[0])
                source = getattr(module, "__file__", None)
            if source and Path(source).is_file():
                out["source"] = str(Path(source).resolve())
                out["source_sha256"] = _file_sha256(source)
    if oracle is not None:
        out.update({"num_classes": oracle.num_classes, "output_kind": oracle.output_kind,
                    "input_shape": list(oracle.input_shape) if oracle.input_shape else None})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# command-line options shared by the verbs that query a suspect
# ---------------------------------------------------------------------------------------------------------------------

API_KEY_ENV = "COPYCATCH_API_KEY"


def add_suspect_arguments(parser: argparse.ArgumentParser) -> None:
    """Options describing how to talk to a suspect (HTTP shape, ONNX graph, callable layout)."""
    g = parser.add_argument_group("suspect access (HTTP APIs, ONNX files, Python callables)")
    g.add_argument("--num-classes", type=int, default=None, help="classes the suspect answers, when the key does not say")
    g.add_argument("--input-format", choices=["auto", "nchw", "nhwc", "flat"], default="auto",
                   help="layout of the inputs a callable, ONNX file or HTTP API (--encoding lists) receives; auto: "
                        "flat rows for scikit-learn estimators, else N×C×H×W")
    g.add_argument("--api-key", default=None,
                   help=f"API key for an HTTP suspect (prefer the environment variable {API_KEY_ENV})")
    g.add_argument("--api-key-header", default="X-API-Key", help="header that carries the API key")
    g.add_argument("--header", action="append", metavar="NAME:VALUE", help="extra HTTP header (repeatable)")
    g.add_argument("--predict-path", default="/v1/predict",
                   help="path of the prediction endpoint under the URL ('' to post to the URL itself)")
    g.add_argument("--info-path", default="/v1/info", help="path of the self-description endpoint ('' for none)")
    g.add_argument("--encoding", choices=["lists", "png"], default="lists",
                   help="send inputs as nested lists of floats, or as base64 PNG images (quantised to 1/255)")
    g.add_argument("--input-field", default=None, help="request field for the inputs (default: inputs, or images "
                   "with --encoding png)")
    g.add_argument("--output-field", default=None,
                   help="response field holding the answers, dotted for nested objects (default: probabilities, "
                        "else labels)")
    g.add_argument("--output-kind", choices=["auto", "probs", "labels", "logits"], default="auto",
                   help="what the answers are (auto: 2-D probabilities or 1-D labels)")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each HTTP answer")
    g.add_argument("--retries", type=int, default=5, help="retries after a timeout, connection error, 5xx or 429")
    g.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds (doubles each retry)")
    g.add_argument("--max-retry-after", type=float, default=300.0,
                   help="longest Retry-After (seconds) worth waiting for before giving up")
    g.add_argument("--request-batch", type=int, default=256, help="inputs per HTTP request or ONNX run")


def suspect_options(args: argparse.Namespace) -> dict[str, Any]:
    """``open_suspect`` keyword options from :func:`add_suspect_arguments`' parsed values."""
    headers = {}
    for item in getattr(args, "header", None) or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise InvalidArgument(f"--header needs NAME:VALUE, got {item!r}")
        headers[name.strip()] = value.strip()
    input_format = getattr(args, "input_format", "auto")
    return {
        "api_key": getattr(args, "api_key", None) or os.environ.get(API_KEY_ENV) or None,
        "api_key_header": args.api_key_header,
        "headers": headers or None,
        "predict_path": args.predict_path,
        "info_path": args.info_path,
        "encoding": args.encoding,
        "input_layout": None if input_format == "auto" else input_format,
        "input_format": input_format,
        "input_field": args.input_field,
        "output_field": args.output_field,
        "output_kind": args.output_kind,
        "output": args.output_kind,  # the ONNX oracle's name for it
        "timeout": args.timeout,
        "retries": args.retries,
        "backoff": args.backoff,
        "max_retry_after": args.max_retry_after,
        "batch_size": args.request_batch,
    }
