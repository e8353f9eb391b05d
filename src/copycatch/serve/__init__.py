"""Serve a model behind a protected prediction API (the ``serve`` extra: FastAPI + uvicorn).

>>> import torch, copycatch as cc
>>> from copycatch.serve import ServeConfig, create_app, serve_in_thread
>>> model = cc.create_model("mlp", (1, 8, 8), 4, seed=0)      # or a model file, .onnx, module:function
>>> app = create_app(model, ServeConfig(output="top-k", top_k=2, rate="100/s"))  # key=…: scheme.protect server-side
>>> with serve_in_thread(app) as url:                          # http://127.0.0.1:<free port>
...     answers = cc.as_oracle(url).query(torch.rand(3, 1, 8, 8))
>>> answers.shape, int((answers > 0).sum(dim=1).max())
(torch.Size([3, 4]), 2)

Modules: :mod:`.app` (routes, request pipeline, offline ``/docs``), :mod:`.config` (:class:`ServeConfig`),
:mod:`.decoders` (what a request may hold, per modality: JSON, raw image/WAV/text bodies, multipart files; images
through :mod:`copycatch.data.image_codec`), :mod:`.validation` (request checks and refusals), :mod:`.limits`
(token bucket, budgets), :mod:`.redis_state` (the same counts shared by replicas in Redis), :mod:`.ledger`
(append-only query ledger), :mod:`.keys` (hashed API keys), :mod:`.batching` (cross-request batching),
:mod:`.runner` (uvicorn).

The config, ledger, limits and keys modules need neither FastAPI nor uvicorn (``copycatch ledger`` works without
the extra); the app and runner are imported on first use.
"""

from __future__ import annotations

from typing import Any

from ..data.image_codec import decode_image, encode_png
from .config import ServeConfig
from .keys import Keyring, new_key
from .ledger import Ledger, read_ledger, row_digests, summarize
from .limits import Budget, QueryLimiter, Rate

EXTRA_HINT = "pip install 'copycatch[serve]'"

_LAZY = {
    "create_app": "app",
    "Service": "service",
    "protected_oracle": "service",
    "serve_in_thread": "runner",
    "bind_socket": "runner",
    "run": "runner",
}


def require_extra() -> None:
    """Raise a one-line :class:`~copycatch.core.errors.CopycatchError` when FastAPI or uvicorn is missing."""
    from ..core.errors import CopycatchError

    missing = []
    # python_multipart reads multipart forms, fastapi_offline ships the /docs assets, PIL decodes images
    for name in ("fastapi", "uvicorn", "python_multipart", "fastapi_offline", "PIL"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CopycatchError(f"serving needs {' and '.join(missing)}: {EXTRA_HINT}")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        require_extra()
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXTRA_HINT",
    "Budget",
    "Keyring",
    "Ledger",
    "QueryLimiter",
    "Rate",
    "ServeConfig",
    "Service",
    "bind_socket",
    "create_app",
    "decode_image",
    "encode_png",
    "new_key",
    "protected_oracle",
    "read_ledger",
    "require_extra",
    "row_digests",
    "run",
    "serve_in_thread",
    "summarize",
]
