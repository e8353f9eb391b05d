"""Turn whatever the user points at into an :class:`~copycatch.oracle.Oracle`.

``open_suspect(spec)`` understands:

* a copycatch model file (``.safetensors``) → :class:`~copycatch.oracle.ModelOracle`;
* ``http://…`` / ``https://…`` → :class:`copycatch.http_oracle.HttpOracle` (any prediction API);
* a ``.onnx`` file → :class:`copycatch.onnx_oracle.OnnxOracle` (the ``onnx`` extra);
* ``package.module:function`` → :class:`~copycatch.oracle.CallableOracle` (returns probabilities or labels);

and passes oracles, models and callables through. Options not used by a kind of suspect are ignored.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidArgument
from .oracle import CallableOracle, ModelOracle, Oracle

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def open_suspect(spec: Any, *, num_classes: int | None = None, input_shape: Sequence[int] | None = None,
                 budget: int | None = None, device: str | None = None, **options: Any) -> Oracle:
    from .models import Classifier, load_model

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
                              input_format=options.get("input_format", "nchw"))
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidArgument(f"cannot query a {type(spec).__name__}: give a model file, URL, .onnx file, "
                              "module:function, a model, a callable or an Oracle")
    text = str(spec)
    if text.startswith(("http://", "https://")):
        from .http_oracle import HttpOracle

        return HttpOracle(text, num_classes=num_classes, input_shape=input_shape, budget=budget, **options)
    if text.endswith(".onnx"):
        from .onnx_oracle import OnnxOracle

        return OnnxOracle(text, num_classes=num_classes, input_shape=input_shape, budget=budget, **options)
    if _CALLABLE.match(text) and not Path(text).exists():
        return _callable_suspect(text, num_classes=num_classes, input_shape=input_shape, budget=budget, **options)
    model: Classifier = load_model(text, device=device or "cpu")
    return ModelOracle(model, budget=budget, name=Path(text).name)


def _callable_suspect(text: str, *, num_classes: int | None, input_shape: Sequence[int] | None, budget: int | None,
                      **options: Any) -> Oracle:
    module_name, _, attr = text.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
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
                          input_format=options.get("input_format", "nchw"), name=text)
