"""Watermarking schemes; one file per scheme, registered on import."""

from .base import SCHEMES, Embedding, Scheme, create_scheme, list_schemes, register_scheme, scheme_for_key
from . import margin  # noqa: F401  (registers)

__all__ = ["SCHEMES", "Embedding", "Scheme", "create_scheme", "list_schemes", "register_scheme", "scheme_for_key"]
