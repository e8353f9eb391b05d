"""Owner signing keys (Ed25519) and detached signatures: anyone holding the owner's public key can check, byte for
byte, that a file (evidence, a transcript) is the one the owner signed; only the holder of the private key can sign.

The files are standard encodings, so a check needs nothing from copycatch:

* the private key, ``owner.key``: PKCS#8 PEM, unencrypted, written with mode 0600 (keep it offline; whoever reads it
  can sign evidence in the owner's name);
* the public key, ``owner.pub``: SubjectPublicKeyInfo PEM, the one to publish or hand to a court or an expert;
* the signature of ``FILE``: ``FILE.sig``, the 64 raw bytes of the Ed25519 signature of FILE's exact bytes
  (``openssl pkeyutl -verify -pubin -inkey owner.pub -rawin -in FILE -sigfile FILE.sig``, OpenSSL 3).

A public key is named by its fingerprint, the SHA-256 of its DER encoding
(``openssl pkey -pubin -in owner.pub -outform DER | sha256sum``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import CorruptFile, InvalidArgument

ALGORITHM = "Ed25519"
SIGNATURE_SUFFIX = ".sig"
SIGNATURE_BYTES = 64
_MAX_KEY_FILE = 64 * 1024  # a PEM Ed25519 key is about 120 bytes; anything far larger is some other file


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """Where :func:`write_key_pair` put a new key pair, and the public key's fingerprint."""

    private: Path
    public: Path
    fingerprint: str


def key_pair_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """``owner`` → ``owner.key`` and ``owner.pub`` (``owner.key`` or ``owner.pub`` name the same pair)."""
    path = Path(prefix)
    if path.suffix in (".key", ".pub"):
        path = path.with_suffix("")
    if not path.name:
        raise InvalidArgument(f"give a file name for the key pair, got {str(prefix)!r}")
    return path.with_name(path.name + ".key"), path.with_name(path.name + ".pub")


def write_key_pair(prefix: str | os.PathLike, *, force: bool = False) -> KeyPair:
    """A new Ed25519 key pair at ``prefix.key`` (mode 0600) and ``prefix.pub``; an existing file of either name is
    replaced only with ``force``, since evidence already signed with it would lose its proof of origin."""
    private_path, public_path = key_pair_paths(prefix)
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise InvalidArgument(
                    f"{path} already exists: evidence signed with it can only be checked with that key pair; "
                    "keep it, write the new pair elsewhere, or replace it with --force"
                )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_secret(private_path, pem)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomic(public_path, public_pem)
    return KeyPair(private_path, public_path, fingerprint(key.public_key()))


def _write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only, from the first byte on (never world-readable for an instant)."""
    tmp = path.with_name(path.name + ".part")
    tmp.unlink(missing_ok=True)  # a leftover of an interrupted run: O_EXCL must create the file anew, mode 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_key_file(path: str | os.PathLike, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise InvalidArgument(f"{what} {p}: no such file")
    if p.stat().st_size > _MAX_KEY_FILE:
        raise CorruptFile(f"{what} {p} is not a PEM key file ({p.stat().st_size} bytes)")
    return p.read_bytes()


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """The owner's private key from a PEM file written by :func:`write_key_pair` (or ``openssl genpkey -algorithm
    ed25519``); every other content is refused with one line that says what the file holds instead."""
    data = _read_key_file(path, "signing key")
    if b"PUBLIC KEY-----" in data:
        raise InvalidArgument(f"{path} is a public key; sign with the private key (the .key file of the pair)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying the PEM is encrypted
        raise InvalidArgument(
            f"{path} is encrypted with a passphrase; copycatch reads unencrypted keys (kept with mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CorruptFile(
            f"{path} is not a PEM private key (expected the .key file written by `copycatch key keygen`)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{path} holds a {type(key).__name__}; copycatch signs with {ALGORITHM} keys only")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """The owner's public key from a PEM file (the ``.pub`` of the pair); a private key is refused, since whoever
    checks evidence must never need (or be handed) the key that signs it."""
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise InvalidArgument(
            f"{path} is a private key; check with the public key (the .pub file of the pair) and keep this one secret"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CorruptFile(
            f"{path} is not a PEM public key (expected the .pub file written by `copycatch key keygen`)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidArgument(f"{path} holds a {type(key).__name__}; copycatch signatures are {ALGORITHM} only")
    return key


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the public key's DER encoding: what ``openssl pkey -pubin -outform DER | sha256sum`` gives."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def signature_path(path: str | os.PathLike) -> Path:
    """Where the detached signature of ``path`` lies: ``path.sig``."""
    p = Path(path)
    return p.with_name(p.name + SIGNATURE_SUFFIX)


def sign_file(path: str | os.PathLike, private_key: Ed25519PrivateKey) -> Path:
    """Sign ``path``'s exact bytes; the signature goes to ``path.sig`` (returned)."""
    out = signature_path(path)
    _write_atomic(out, private_key.sign(Path(path).read_bytes()))
    return out


def check_signature(path: str | os.PathLike, public_key: Ed25519PublicKey) -> tuple[bool, str]:
    """Whether ``path.sig`` is ``public_key``'s signature of ``path``'s exact bytes, and why not in words."""
    sig_path = signature_path(path)
    if not sig_path.is_file():
        return False, f"no signature: {sig_path} does not exist (the file is not signed)"
    signature = sig_path.read_bytes()
    if len(signature) != SIGNATURE_BYTES:
        return False, f"{sig_path} is not an {ALGORITHM} signature ({len(signature)} bytes, not {SIGNATURE_BYTES})"
    try:
        public_key.verify(signature, Path(path).read_bytes())
    except InvalidSignature:
        return False, (
            f"the signature in {sig_path} does not match: the file changed after it was signed, or another key "
            "signed it"
        )
    return True, f"valid {ALGORITHM} signature ({sig_path.name}) by public key sha256 {fingerprint(public_key)[:16]}…"
