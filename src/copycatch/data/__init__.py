"""Data sets (one source per file, registered on import, each declaring its modality), the standard owner/thief
split, the text vocabulary, ``copycatch data prepare``, and the image (Pillow) and WAV codecs."""

from ..core.discover import import_submodules
from .base import (
    DATASETS,
    MODALITIES,
    Dataset,
    SplitFractions,
    Splits,
    TensorData,
    dataset_modality,
    list_datasets,
    load_dataset,
    load_splits,
    make_splits,
    register_dataset,
)
from .prepare import GENERATORS, Prepared, data_root, prepare_dataset
from .vocabulary import Vocabulary, VocabularySettings

import_submodules(__name__, __path__, skip=("base", "image_codec"))

__all__ = [
    "DATASETS",
    "GENERATORS",
    "MODALITIES",
    "Dataset",
    "Prepared",
    "SplitFractions",
    "Splits",
    "TensorData",
    "Vocabulary",
    "VocabularySettings",
    "data_root",
    "dataset_modality",
    "list_datasets",
    "load_dataset",
    "load_splits",
    "make_splits",
    "prepare_dataset",
    "register_dataset",
]
