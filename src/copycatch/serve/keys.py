"""API keys: a file of key ids and SHA-256 hashes of their secrets; the secrets themselves are never stored.

File format, one key per line (``#`` starts a comment)::

    alice  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    thief  sha256:...

``copycatch serve --new-key ID --api-keys FILE`` appends a fresh random key and prints its secret once;
a secret you already have is added with ``printf %s SECRET | sha256sum``. A client sends the secret in the
``X-API-Key`` header; the server hashes it and looks the hash up, so neither the file nor the ledger nor
the logs ever contain a secret. Secrets are high-entropy random strings, so an unsalted hash is enough.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from ..core.errors import CorruptFile, InvalidArgument

HEADER = "X-API-Key"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_LINE = re.compile(r"^(\S+)\s+sha256:([0-9a-fA-F]{64})$")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Keyring:
    """Key id ↔ secret hash. ``identify(secret)`` answers the key id or ``None``."""

    def __init__(self, hashes: dict[str, str] | None = None):
        self._by_hash: dict[str, str] = {}
        for key_id, digest in (hashes or {}).items():
            self.add_hash(key_id, digest)

    def add_hash(self, key_id: str, digest: str) -> None:
        if not _ID.match(key_id):
            raise InvalidArgument(f"API key id {key_id!r} must be 1-64 characters of letters, digits, _ . @ -")
        if key_id in self._by_hash.values():
            raise InvalidArgument(f"API key id {key_id!r} appears twice")
        digest = digest.lower()
        if digest in self._by_hash:
            raise InvalidArgument(f"API keys {self._by_hash[digest]!r} and {key_id!r} have the same secret")
        self._by_hash[digest] = key_id

    @property
    def ids(self) -> list[str]:
        return sorted(self._by_hash.values())

    def __len__(self) -> int:
        return len(self._by_hash)

    def identify(self, secret: str | None) -> str | None:
        if not secret:
            return None
        return self._by_hash.get(hash_secret(secret))

    @classmethod
    def load(cls, path: str | os.PathLike, *, allow_empty: bool = False) -> Keyring:
        path = Path(path)
        if not path.is_file():
            raise InvalidArgument(f"{path}: no such API key file (create one with --new-key ID --api-keys {path})")
        ring = cls()
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            m = _LINE.match(line)
            if not m:
                # Do not quote the line: it may be a plaintext secret pasted by mistake.
                raise CorruptFile(
                    f"{path}:{number}: expected 'KEY_ID sha256:<64 hex digits>' (store hashes of "
                    "secrets, never the secrets)"
                )
            try:
                ring.add_hash(m.group(1), m.group(2))
            except InvalidArgument as exc:
                raise CorruptFile(f"{path}:{number}: {exc}") from None
        if not len(ring) and not allow_empty:
            raise CorruptFile(f"{path}: holds no API keys")
        return ring


def new_key(path: str | os.PathLike, key_id: str) -> str:
    """Append a fresh key to the file (created 0600 if missing) and return its secret, to be shown once."""
    path = Path(path)
    ring = Keyring.load(path, allow_empty=True) if path.is_file() else Keyring()
    if key_id in ring.ids:
        raise InvalidArgument(f"API key id {key_id!r} already exists in {path}")
    secret = "cc_" + secrets.token_urlsafe(32)
    ring.add_hash(key_id, hash_secret(secret))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{key_id} sha256:{hash_secret(secret)}\n".encode())
    finally:
        os.close(fd)
    return secret
