"""Extraction attacks (see :mod:`.base`); one file per attack, registered on import (every module here is imported)."""

from ...core.discover import import_submodules
from .base import (
    EXTRACTION_ATTACKS,
    ExtractionAttack,
    ExtractionResult,
    create_extraction_attack,
    list_extraction_attacks,
    register_extraction,
)

import_submodules(__name__, __path__)

__all__ = [
    "EXTRACTION_ATTACKS",
    "ExtractionAttack",
    "ExtractionResult",
    "create_extraction_attack",
    "list_extraction_attacks",
    "register_extraction",
]
