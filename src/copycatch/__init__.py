"""copycatch: watermark a model so the mark survives extraction, and prove theft with an exact p-value.

The Python API (:mod:`copycatch.api`) runs the code each ``copycatch`` verb runs; the names below are the public
surface. The layers underneath (``core``, ``data``, ``models``, ``oracles``, ``schemes``, ``attacks``, ``serve``,
``verification``, ``bench``, ``cli``) are described in docs/ARCHITECTURE.md.
"""

from ._version import __version__
from .api import (
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
