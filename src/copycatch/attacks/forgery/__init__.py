"""Forged-key (ownership-ambiguity) attacks (see :mod:`.base`); one file per attack, registered on import (every
module here is imported)."""

from ...core.discover import import_submodules
from .base import FORGERIES, forge, list_forgeries, register_forgery

import_submodules(__name__, __path__)

__all__ = ["FORGERIES", "forge", "list_forgeries", "register_forgery"]
