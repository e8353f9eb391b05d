"""copycatch: watermark a model so the mark survives extraction, and prove theft with an exact p-value.

The Python API (:mod:`copycatch.api`) runs the code each ``copycatch`` verb runs; the names below are the public
surface. The layers underneath (``core``, ``data``, ``models``, ``oracles``, ``schemes``, ``attacks``, ``serve``,
``verification``, ``bench``, ``cli``) are described in docs/ARCHITECTURE.md.

The names are imported on first use (PEP 562), so ``import copycatch`` and ``copycatch --version`` do not load
torch; ``import copycatch as cc; cc.embed(...)`` works as if they were imported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# Each public name and the module it comes from.
_SOURCES = {
    ".api": (
        "analyze", "as_oracle", "bench_report", "calibrate", "demo", "embed", "ledger_summary", "new_api_key",
        "open_server", "plan_bench", "protect", "remove", "run_bench", "steal", "train", "verify",
    ),
    ".attacks.extraction": ("create_extraction_attack", "list_extraction_attacks"),
    ".attacks.removal": ("create_removal_attack", "list_removal_attacks"),
    ".core.errors": ("AccuracyCostExceeded", "CopycatchError"),
    ".core.evidence": ("Evidence",),
    ".core.key": ("Key",),
    ".core.keyset": ("KeySet",),
    ".data": ("SplitFractions", "Splits", "TensorData", "list_datasets", "load_dataset", "load_splits", "make_splits"),
    ".models": ("Classifier", "create_for", "create_model", "list_models", "load_model", "save_model"),
    ".models.train": ("TrainConfig", "accuracy", "agreement", "fit"),
    ".oracles.base": ("Oracle",),
    ".oracles.callable": ("CallableOracle",),
    ".oracles.local": ("ModelOracle",),
    ".oracles.postprocess": ("create_postprocessor", "list_postprocessors"),
    ".schemes": ("create_scheme", "list_schemes", "scheme_for_key"),
}  # fmt: skip
_LAZY = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "AccuracyCostExceeded",
    "CallableOracle",
    "Classifier",
    "CopycatchError",
    "Evidence",
    "Key",
    "KeySet",
    "ModelOracle",
    "Oracle",
    "SplitFractions",
    "Splits",
    "TensorData",
    "TrainConfig",
    "__version__",
    "accuracy",
    "agreement",
    "analyze",
    "as_oracle",
    "bench_report",
    "calibrate",
    "create_extraction_attack",
    "create_for",
    "create_model",
    "create_postprocessor",
    "create_removal_attack",
    "create_scheme",
    "demo",
    "embed",
    "fit",
    "ledger_summary",
    "list_datasets",
    "list_extraction_attacks",
    "list_models",
    "list_postprocessors",
    "list_removal_attacks",
    "list_schemes",
    "load_dataset",
    "load_model",
    "load_splits",
    "make_splits",
    "new_api_key",
    "open_server",
    "plan_bench",
    "protect",
    "remove",
    "run_bench",
    "save_model",
    "scheme_for_key",
    "steal",
    "train",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return list(__all__)


if TYPE_CHECKING:  # what type checkers and IDEs see: the names as if imported here
    from .api import (
        analyze,
        as_oracle,
        bench_report,
        calibrate,
        demo,
        embed,
        ledger_summary,
        new_api_key,
        open_server,
        plan_bench,
        protect,
        remove,
        run_bench,
        steal,
        train,
        verify,
    )
    from .attacks.extraction import create_extraction_attack, list_extraction_attacks
    from .attacks.removal import create_removal_attack, list_removal_attacks
    from .core.errors import AccuracyCostExceeded, CopycatchError
    from .core.evidence import Evidence
    from .core.key import Key
    from .core.keyset import KeySet
    from .data import SplitFractions, Splits, TensorData, list_datasets, load_dataset, load_splits, make_splits
    from .models import Classifier, create_for, create_model, list_models, load_model, save_model
    from .models.train import TrainConfig, accuracy, agreement, fit
    from .oracles.base import Oracle
    from .oracles.callable import CallableOracle
    from .oracles.local import ModelOracle
    from .oracles.postprocess import create_postprocessor, list_postprocessors
    from .schemes import create_scheme, list_schemes, scheme_for_key
