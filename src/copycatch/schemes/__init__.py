"""Watermarking schemes; one file per scheme, registered on import (every module here is imported)."""

from ..core.discover import import_submodules
from .base import SCHEMES, Embedding, Scheme, create_scheme, list_schemes, register_scheme, scheme_for_key
from .embedding import embed_scheme
from .protection import Protection, protect_model, protect_oracle

import_submodules(__name__, __path__, skip=("base", "embedding", "protection"))

__all__ = [
    "SCHEMES",
    "Embedding",
    "Protection",
    "Scheme",
    "create_scheme",
    "embed_scheme",
    "list_schemes",
    "protect_model",
    "protect_oracle",
    "register_scheme",
    "scheme_for_key",
]
