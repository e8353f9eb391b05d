"""The public commitment record of a key or key set, with each scheme's secret parameters left out.

The record and its checks are :mod:`copycatch.core.commitment`'s; this module knows which parameters each scheme
keeps secret (``Scheme.secret_params``, e.g. MEA-Defender's classes and rule, which the paper keeps secret): the
public record writes them as ``"(secret)"``, and the key digest it carries still binds their values.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from ..core.commitment import HIDDEN, Commitment, make_commitment
from ..core.key import Key
from ..core.keyset import KeySet
from .base import SCHEMES


def public_params(key: Key) -> dict[str, Any]:
    """``key.params`` with the parameters its scheme declares secret replaced by ``"(secret)"``."""
    hidden = SCHEMES.get(key.scheme).factory.secret_params if key.scheme in SCHEMES else ()
    return {name: HIDDEN if name in hidden else value for name, value in key.params.items()}


def commit_key(
    keys: Key | KeySet, victim_sha256: str | None = None, *, created: _dt.datetime | None = None
) -> Commitment:
    """The commitment record of ``keys`` for the victim with weights digest ``victim_sha256`` (None: the one the
    key records), made now (or at ``created``)."""
    parts = list(keys) if isinstance(keys, KeySet) else [keys]
    shown = {k.digest: public_params(k) for k in parts}
    return make_commitment(keys, victim_sha256, public_params=shown, created=created)
