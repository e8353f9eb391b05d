"""Serve a model behind a protected prediction API (the ``serve`` extra: FastAPI + uvicorn).

    from copycatch.serve import ServeConfig, create_app, serve_in_thread
    app = create_app("victim.safetensors", ServeConfig(output="top-k", rate="100/s", ledger="ledger.jsonl"),
                     key="victim.cckey")            # scheme.protect applied server-side
    with serve_in_thread(app) as url:               # http://127.0.0.1:<free port>
        ...

Modules: :mod:`.app` (routes, request pipeline), :mod:`.config` (:class:`ServeConfig`), :mod:`.validation`
(request checks, PNG through :mod:`copycatch.data.png`), :mod:`.limits` (token bucket, budgets), :mod:`.ledger`
(append-only query ledger), :mod:`.keys` (hashed API keys), :mod:`.batching` (cross-request batching),
:mod:`.runner` (uvicorn).

The config, ledger, limits and keys modules need neither FastAPI nor uvicorn (``copycatch ledger`` works without
the extra); the app and runner are imported on first use.
"""

from __future__ import annotations

from typing import Any

from ..data.png import decode_png, encode_png
from .config import ServeConfig
from .keys import Keyring, new_key
from .ledger import Ledger, read_ledger, row_digests, summarize
from .limits import Budget, QueryLimiter, Rate

EXTRA_HINT = "pip install 'copycatch[serve]'"

_LAZY = {
    "create_app": "app",
    "Service": "app",
    "protected_oracle": "app",
    "serve_in_thread": "runner",
    "bind_socket": "runner",
    "run": "runner",
}


def require_extra() -> None:
    """Raise a one-line :class:`~copycatch.core.errors.CopycatchError` when FastAPI or uvicorn is missing."""
    from ..core.errors import CopycatchError

    missing = []
    for name in ("fastapi", "uvicorn"):
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
    "Budget",
    "EXTRA_HINT",
    "Keyring",
    "Ledger",
    "QueryLimiter",
    "Rate",
    "decode_png",
    "encode_png",
    "new_key",
    "read_ledger",
    "require_extra",
    "row_digests",
    "summarize",
    "ServeConfig",
    "create_app",
    "Service",
    "protected_oracle",
    "serve_in_thread",
    "bind_socket",
    "run",
]
