"""Architectures (one family per file, registered on import), training, adversarial primitives and model files."""

from ..core.discover import import_submodules
from .base import MODELS, Backbone, Classifier, create_for, create_model, list_models, model_modality, register_model
from .io import load_model, read_model_info, save_model, weights_digest

import_submodules(__name__, __path__, skip=("base", "io", "train", "adversarial", "simclr"))

__all__ = [
    "MODELS",
    "Backbone",
    "Classifier",
    "create_for",
    "create_model",
    "list_models",
    "load_model",
    "model_modality",
    "read_model_info",
    "register_model",
    "save_model",
    "weights_digest",
]
