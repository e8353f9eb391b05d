"""Data sets (one source per file, registered on import), the standard owner/thief split, and the PNG codec."""

from ..core.discover import import_submodules
from .base import (
    DATASETS,
    Dataset,
    SplitFractions,
    Splits,
    TensorData,
    list_datasets,
    load_dataset,
    load_splits,
    make_splits,
    register_dataset,
)

import_submodules(__name__, __path__, skip=("base", "png"))

__all__ = [
    "DATASETS",
    "Dataset",
    "SplitFractions",
    "Splits",
    "TensorData",
    "list_datasets",
    "load_dataset",
    "load_splits",
    "make_splits",
    "register_dataset",
]
