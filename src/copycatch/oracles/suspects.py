"""Turn whatever the user points at into an :class:`~copycatch.oracles.base.Oracle`.

``open_suspect(spec)`` passes oracles through, wraps models (``nn.Module``) and Python callables, and hands a
string to the first *suspect protocol* that claims it. Built in, in the order they are tried:

* ``http`` — ``http://…`` / ``https://…``: :class:`~copycatch.oracles.http.HttpOracle` (any prediction API; the
  ``protocol`` option names its serving stack's format, :mod:`copycatch.oracles.protocols`);
* ``onnx`` — a ``.onnx`` file: :class:`~copycatch.oracles.onnx.OnnxOracle` (the ``onnx`` extra);
* ``python-file`` — ``path/to/file.py:function`` (the file is imported and runs: only name code you trust);
* ``python`` — ``package.module:function`` (returns probabilities or labels);
* ``model-file`` — anything else: a copycatch model file (``.safetensors``).

Other layers add protocols with :func:`register_suspect_protocol` (the thief's deployment files,
``.evasion.safetensors``, come from :mod:`copycatch.attacks.removal.evasion`). Options a protocol does not
take are ignored, so every verb can pass the same suspect options. A bound method of a fitted scikit-learn
estimator (``mymodule:clf.predict_proba``) gets flat N×D rows unless ``input_format`` says otherwise.

:func:`describe_suspect` fingerprints a suspect for the evidence record.
"""

from __future__ import annotations

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
from typing import Any, ClassVar

import torch

from ..core.errors import InvalidArgument
from ..core.registry import Registry
from ..models.io import load_model, read_model_info, weights_digest
from .base import Oracle
from .callable import CallableOracle
from .local import ModelOracle

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_FILE_CALLABLE = re.compile(r"^(?P<file>.+\.py):(?P<attr>[A-Za-z_][\w.]*)$")


class SuspectProtocol:
    """How to reach one kind of suspect named by a string; subclasses set ``name`` and ``priority``."""

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 50  # protocols are tried from the lowest priority up; the model-file fallback is last

    def matches(self, spec: str) -> bool:
        raise NotImplementedError

    def open(
        self,
        spec: str,
        *,
        num_classes: int | None,
        input_shape: Sequence[int] | None,
        budget: int | None,
        device: str | None,
        **options: Any,
    ) -> Oracle:
        raise NotImplementedError

    def describe(self, spec: str, oracle: Oracle | None) -> dict[str, Any]:
        """The suspect's identity and digests for the evidence record (never its secrets)."""
        return {"kind": self.name, "identity": spec}


SUSPECT_PROTOCOLS: Registry[type[SuspectProtocol]] = Registry("suspect protocol")


def register_suspect_protocol(cls: type[SuspectProtocol]) -> type[SuspectProtocol]:
    SUSPECT_PROTOCOLS.register(cls.name)(cls)
    return cls


def _protocol_for(text: str) -> SuspectProtocol:
    ordered = sorted(SUSPECT_PROTOCOLS.list(), key=lambda n: (SUSPECT_PROTOCOLS.get(n).factory.priority, n))
    for name in ordered:
        protocol = SUSPECT_PROTOCOLS.create(name)
        if protocol.matches(text):
            return protocol
    raise InvalidArgument(f"no suspect protocol understands {text!r}")  # unreachable while model-file is registered


def open_suspect(
    spec: Any,
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    budget: int | None = None,
    device: str | None = None,
    **options: Any,
) -> Oracle:
    """An oracle for ``spec``: an Oracle, a model, a callable, or a string some suspect protocol understands."""
    if isinstance(spec, Oracle):
        if budget is not None:
            spec.set_budget(budget)
        return spec
    if isinstance(spec, torch.nn.Module):
        return ModelOracle(
            spec, num_classes=num_classes, input_shape=input_shape, budget=budget, name=getattr(spec, "arch", "model")
        )
    if callable(spec):
        if num_classes is None:
            raise InvalidArgument("a callable suspect needs num_classes")
        return CallableOracle(
            spec,
            num_classes,
            input_shape=input_shape,
            budget=budget,
            input_format=_input_format(spec, options.get("input_format")),
        )
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidArgument(
            f"cannot query a {type(spec).__name__}: give a model file, URL, .onnx file, "
            "module:function, a model, a callable or an Oracle"
        )
    text = str(spec)
    return _protocol_for(text).open(
        text, num_classes=num_classes, input_shape=input_shape, budget=budget, device=device, **options
    )


def describe_suspect(spec: Any, oracle: Oracle | None = None) -> dict[str, Any]:
    """A fingerprint of the suspect for the evidence record: what it is (``kind``, ``identity``) and digests.

    Files are hashed whole; an HTTP suspect is its URL plus its self-description (``/v1/info``); a callable
    is its ``module:function`` plus the SHA-256 of the module's source file. The transcript's hash chain
    fingerprints the suspect's behaviour on the key.
    """
    if isinstance(spec, (Oracle, torch.nn.Module)) or (callable(spec) and not isinstance(spec, str)):
        name = getattr(spec, "name", None) or getattr(spec, "__qualname__", None) or type(spec).__name__
        out = {"kind": "python object", "identity": f"{type(spec).__module__}.{type(spec).__qualname__}:{name}"}
        if isinstance(spec, torch.nn.Module):
            out["weights_sha256"] = weights_digest(spec)
    else:
        text = str(spec)
        out = _protocol_for(text).describe(text, oracle)
    if oracle is not None:
        out.update(
            {
                "num_classes": oracle.num_classes,
                "output_kind": oracle.output_kind,
                "input_shape": list(oracle.input_shape) if oracle.input_shape else None,
            }
        )
    return out


def accepted_options(cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options ``cls`` takes (options meant for other kinds of suspects are ignored, as documented)."""
    names = set(inspect.signature(cls).parameters)
    return {k: v for k, v in options.items() if k in names and v is not None}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_identity(kind: str, text: str) -> dict[str, Any]:
    return {"kind": kind, "identity": Path(text).name, "file": str(Path(text).resolve()), "sha256": file_sha256(text)}


# ---------------------------------------------------------------------------------------------------------------------
# built-in protocols
# ---------------------------------------------------------------------------------------------------------------------


@register_suspect_protocol
class HttpSuspect(SuspectProtocol):
    """A prediction API over HTTP(S)."""

    name = "http"
    priority = 10

    def matches(self, spec: str) -> bool:
        return spec.startswith(("http://", "https://"))

    def open(self, spec, *, num_classes, input_shape, budget, device, **options):
        from .http import HttpOracle

        return HttpOracle(
            spec,
            num_classes=num_classes,
            input_shape=input_shape,
            budget=budget,
            **accepted_options(HttpOracle, options),
        )

    def describe(self, spec, oracle):
        out: dict[str, Any] = {"kind": "http", "identity": spec}
        protocol = getattr(oracle, "protocol", None)
        if protocol is not None:  # the stack's format the answers were read in, and the endpoint asked
            out.update(protocol=protocol.name, endpoint=oracle.predict_url)
        info = getattr(oracle, "info", None)
        if info is not None:
            out["info"] = info
            out["info_sha256"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
        return out


@register_suspect_protocol
class OnnxSuspect(SuspectProtocol):
    """An ONNX file run by onnxruntime."""

    name = "onnx"
    priority = 20

    def matches(self, spec: str) -> bool:
        return spec.endswith(".onnx")

    def open(self, spec, *, num_classes, input_shape, budget, device, **options):
        from .onnx import OnnxOracle

        return OnnxOracle(
            spec,
            num_classes=num_classes,
            input_shape=input_shape,
            budget=budget,
            **accepted_options(OnnxOracle, options),
        )

    def describe(self, spec, oracle):
        return file_identity("onnx", spec) if Path(spec).is_file() else {"kind": "onnx", "identity": spec}


class _CallableSuspect(SuspectProtocol):
    """Shared by the two ways of naming a Python function."""

    def target(self, spec: str) -> tuple[Any, str, str]:
        """(the object the attribute path starts from, the module's name, the attribute path)."""
        raise NotImplementedError

    def source_file(self, spec: str) -> str | None:
        raise NotImplementedError

    def open(self, spec, *, num_classes, input_shape, budget, device, **options):
        target, module_name, attr = self.target(spec)
        for part in attr.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise InvalidArgument(f"{module_name!r} has no attribute {attr!r} (suspect {spec!r})") from None
        if not callable(target):
            raise InvalidArgument(f"suspect {spec!r} is not callable")
        if num_classes is None:
            raise InvalidArgument(f"suspect {spec!r} needs the number of classes (the key provides it)")
        return CallableOracle(
            target,
            num_classes,
            input_shape=input_shape,
            budget=budget,
            input_format=_input_format(target, options.get("input_format")),
            name=spec,
        )

    def describe(self, spec, oracle):
        out: dict[str, Any] = {"kind": "python callable", "identity": spec}
        source = self.source_file(spec)
        if source and Path(source).is_file():
            out["source"] = str(Path(source).resolve())
            out["source_sha256"] = file_sha256(source)
        return out


@register_suspect_protocol
class PythonFileSuspect(_CallableSuspect):
    """``path/to/file.py:function``: a function in a Python file (imported, so it runs)."""

    name = "python-file"
    priority = 30

    def matches(self, spec: str) -> bool:
        return bool(_FILE_CALLABLE.match(spec)) and not Path(spec).exists()

    def target(self, spec):
        match = _FILE_CALLABLE.match(spec)
        return _import_file(match["file"], spec), match["file"], match["attr"]

    def source_file(self, spec):
        return _FILE_CALLABLE.match(spec)["file"]


@register_suspect_protocol
class PythonSuspect(_CallableSuspect):
    """``package.module:function``: a function of an importable module."""

    name = "python"
    priority = 40

    def matches(self, spec: str) -> bool:
        return bool(_CALLABLE.match(spec)) and not Path(spec).exists()

    def target(self, spec):
        module_name, _, attr = spec.partition(":")
        try:
            return importlib.import_module(module_name), module_name, attr
        except ImportError as exc:
            raise InvalidArgument(f"cannot import {module_name!r} for suspect {spec!r}: {exc}") from None

    def source_file(self, spec):
        return getattr(sys.modules.get(spec.partition(":")[0]), "__file__", None)


@register_suspect_protocol
class ModelFileSuspect(SuspectProtocol):
    """A copycatch model file (``.safetensors``): the fallback for any other string."""

    name = "model-file"
    priority = 1000

    def matches(self, spec: str) -> bool:
        return True

    def open(self, spec, *, num_classes, input_shape, budget, device, **options):
        return ModelOracle(load_model(spec, device=device or "cpu"), budget=budget, name=Path(spec).name)

    def describe(self, spec, oracle):
        if not Path(spec).is_file():
            return {"kind": "python callable", "identity": spec}
        out = file_identity("model file", spec)
        try:
            info = read_model_info(spec)
            out.update({"arch": info.get("arch"), "weights_sha256": info.get("weights_sha256")})
        except Exception:  # a fingerprint must not fail where loading succeeded; the file hash suffices
            pass
        return out


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
