"""Extraction attacks (see :mod:`.base`); one file per attack, registered on import."""

from .base import (EXTRACTION_ATTACKS, ExtractionAttack, ExtractionResult, create_extraction_attack,
                   list_extraction_attacks, query_all, register_extraction)
from . import soft_label  # noqa: F401  (registers)

__all__ = ["EXTRACTION_ATTACKS", "ExtractionAttack", "ExtractionResult", "create_extraction_attack",
           "list_extraction_attacks", "query_all", "register_extraction"]
