"""copycatch: watermark a classifier so the mark survives extraction, and prove theft with an exact p-value.

The Python API mirrors the CLI (``copycatch train|embed|steal|verify``); see :mod:`copycatch.api`.
"""

from ._version import __version__
from .api import as_oracle, embed, steal, train, verify
from .attacks.extraction import create_extraction_attack, list_extraction_attacks
from .data.base import SplitFractions, Splits, TensorData, list_datasets, load_dataset, load_splits, make_splits
from .core.errors import CopycatchError
from .core.evidence import Evidence
from .core.key import Key
from .models.base import Classifier, create_for, create_model, list_models, load_model, save_model
from .oracles.base import CallableOracle, ModelOracle, Oracle
from .oracles.postprocess import create_postprocessor, list_postprocessors
from .schemes import create_scheme, list_schemes, scheme_for_key
from .models.train import TrainConfig, accuracy, agreement, fit

__all__ = [
    "__version__", "as_oracle", "embed", "steal", "train", "verify",
    "create_extraction_attack", "list_extraction_attacks",
    "SplitFractions", "Splits", "TensorData", "list_datasets", "load_dataset", "load_splits", "make_splits",
    "CopycatchError", "Evidence", "Key",
    "Classifier", "create_for", "create_model", "list_models", "load_model", "save_model",
    "CallableOracle", "ModelOracle", "Oracle", "create_postprocessor", "list_postprocessors",
    "create_scheme", "list_schemes", "scheme_for_key", "TrainConfig", "accuracy", "agreement", "fit",
]
