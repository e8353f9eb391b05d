"""Watermarking schemes; one file per scheme, registered on import (every module here is imported)."""

from ..core.discover import import_submodules
from .base import SCHEMES, Embedding, Scheme, create_scheme, list_schemes, register_scheme, scheme_for_key

import_submodules(__name__, __path__)

__all__ = ["SCHEMES", "Embedding", "Scheme", "create_scheme", "list_schemes", "register_scheme", "scheme_for_key"]
