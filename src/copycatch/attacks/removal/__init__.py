"""Removal attacks (see :mod:`.base`); one file per attack, registered on import (every module here is imported)."""

from ...core.discover import import_submodules
from .base import (
    REMOVAL_ATTACKS,
    RemovalAttack,
    RemovalResult,
    create_removal_attack,
    list_removal_attacks,
    register_removal,
    run_chain,
)

import_submodules(__name__, __path__, skip=("base", "deployment", "evasion"))

__all__ = [
    "REMOVAL_ATTACKS",
    "RemovalAttack",
    "RemovalResult",
    "create_removal_attack",
    "list_removal_attacks",
    "register_removal",
    "run_chain",
]
