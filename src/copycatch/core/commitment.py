"""Key commitments: a small public record, made with a key, that binds the key before any suspect is judged.

Why. A p-value from a key is valid only if the key was fixed before the suspect existed. Whoever holds a model can
build, after the fact, a key that this model "fails": inputs it misclassifies with its own wrong answers as the
secret labels, its adversarial examples labelled with the adversarial class (forged-key or ambiguity attacks,
:mod:`copycatch.attacks.forgery`). Such a key verifies at a tiny p-value against a model its maker never trained.
Nothing in the key shows when it was made: its ``created`` field is whatever its maker wrote.

The secret key seed. Each key's random choices (which inputs become triggers, their secret labels, which true
adversaries are stitched, the API-time secrets …) come from a generator seeded from the owner's secret key seed:
63 bits of SHA-256(``copycatch.key-seed/<seed>/<scheme>/<purpose>``) (:func:`derived_seed`). The seed is 128 to
512 random bits written as hexadecimal (:func:`new_key_seed`: 256); it is kept in the key as the tensor
``key_seed`` (hidden by ``copycatch key show`` like every secret) and the key's metadata says ``key_seed:
"secret"``. Keys made without one derive those choices from the public training seed, as before (anyone who knows
the data split and the seed can recompute them).

The record (``copycatch.commitment/1``, JSON; ``<key file>.commit.json`` beside the key):

    kind             "key" or "key set"
    scheme, params   the scheme and its parameters, except those a scheme declares secret (written "(secret)"; the
                     key digest binds them all); a key set lists its parts, each with its own digest and seed digest
    key_digest       the key's SHA-256 digest (:attr:`Key.digest`, a key set's :attr:`KeySet.digest`)
    seed             "secret" or "training seed"
    seed_sha256      SHA-256 of the secret seed under a domain tag (:func:`seed_digest`): hiding, since the seed has at
                     least 128 random bits; null for a training-seed key
    victim_sha256    the digest of the victim model's weights (:func:`copycatch.models.io.weights_digest`)
    created          UTC time the record was made, as the maker's clock says
    package_version  the copycatch that wrote it

Its id, SHA-256 of the file as written (:attr:`Commitment.id`; what ``sha256sum`` prints), is what the owner
publishes or has timestamped by a third party (an RFC 3161 timestamp authority, a public post, a transparency log):
``created`` is only a claim, the external timestamp of the id is the proof of time.

Checks (:func:`check_commitment`): the key's digest equals the committed one (else the key changed after the
commitment, or a different key is presented), its seed's digest equals the committed one (else the key was
re-derived from another seed), the victim digest the key records equals the committed one (else the commitment is
for another model), and, when the verifier states when the suspect was first seen, the commitment is older. The
tool cannot know when a suspect appeared; the evidence states the commitment's id and time so that a third party
can compare them with the suspect's first appearance and the id's external timestamp.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from .errors import CopycatchError, CorruptFile, InvalidArgument
from .key import Key
from .keyset import KeySet

FORMAT = "copycatch.commitment/1"
SUFFIX = ".commit.json"
SEED_TENSOR = "key_seed"  # the key tensor holding the secret key seed's bytes
SECRET = "secret"  # meta["key_seed"] of a key whose random choices come from a secret seed
TRAINING = "training seed"  # ... and of one whose choices come from the public training seed
HIDDEN = "(secret)"  # a parameter value the public record leaves out
_HEX = re.compile(r"[0-9a-f]{32,128}")


class CommitmentRefused(CopycatchError):
    """The key does not match its commitment, or the commitment cannot show that the key predates the suspect."""


# -- the secret key seed -------------------------------------------------------------------------------------------
def new_key_seed() -> str:
    """A fresh secret key seed: 256 random bits from the operating system, as 64 hexadecimal digits."""
    return secrets.token_hex(32)


def check_key_seed(seed: str) -> str:
    """``seed`` lower-cased, if it is 32 to 128 hexadecimal digits (128 to 512 bits); the error never echoes it."""
    if not isinstance(seed, str):
        raise InvalidArgument(f"a key seed is a string of hexadecimal digits, not a {type(seed).__name__}")
    text = seed.strip().lower()
    if not _HEX.fullmatch(text):
        raise InvalidArgument(
            f"a key seed must be 32 to 128 hexadecimal digits (128 to 512 random bits), got {len(text)} characters"
            + ("" if all(c in "0123456789abcdef" for c in text) else " with a non-hexadecimal one")
        )
    return text


def derived_seed(seed: str, *purpose: object) -> int:
    """A generator seed for one random choice of a key: 63 bits of SHA-256(``copycatch.key-seed/<seed>/<purpose>``).

    Different purposes (a scheme's name and a constant) give independent streams; nobody without the secret seed
    can predict any of them."""
    text = "/".join(["copycatch.key-seed", check_key_seed(seed), *map(str, purpose)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def sub_seed(seed: str, *purpose: object) -> str:
    """A secret seed of its own for one part of a protection (256 bits, independent of the others')."""
    text = "/".join(["copycatch.key-seed.part", check_key_seed(seed), *map(str, purpose)])
    return hashlib.sha256(text.encode()).hexdigest()


def seed_digest(seed: str) -> str:
    """What a commitment publishes about a secret seed: SHA-256 under a domain tag (hiding: 128+ random bits)."""
    return hashlib.sha256(f"copycatch.key-seed.commitment/1/{check_key_seed(seed)}".encode()).hexdigest()


def seed_tensor(seed: str) -> torch.Tensor:
    """The key tensor holding ``seed`` (its bytes, uint8)."""
    return torch.tensor(list(bytes.fromhex(check_key_seed(seed))), dtype=torch.uint8)


def keep_seed(key: Key, seed: str) -> None:
    """Store the secret seed a key's random choices came from in the key (tensor ``key_seed``, metadata
    ``key_seed: "secret"``), so that its commitment can digest it and a later check can compare the two."""
    key.tensors[SEED_TENSOR] = seed_tensor(seed)
    key.meta["key_seed"] = SECRET


def key_seed_of(key: Key) -> str | None:
    """The secret seed a key was made from, or None for a key made from the training seed."""
    t = key.tensors.get(SEED_TENSOR)
    return None if t is None else bytes(t.to(torch.uint8).tolist()).hex()


# -- the record ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Commitment:
    """A commitment record (see the module docstring); ``record`` is the JSON object, as written."""

    record: dict[str, Any]

    @property
    def id(self) -> str:
        """SHA-256 of the record as written (:meth:`text`; ``sha256sum`` of the file): what the owner publishes or
        has timestamped."""
        return hashlib.sha256(self.text().encode()).hexdigest()

    @property
    def created(self) -> _dt.datetime:
        return parse_time(self.record["created"], "the commitment's created time")

    def text(self) -> str:
        """The file's text: indented JSON with sorted keys, ASCII only, so the same record always has the same id."""
        return json.dumps(self.record, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(self.text())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Commitment:
        path = Path(path)
        if not path.is_file():
            raise InvalidArgument(f"{path}: no such commitment file")
        try:
            record = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CorruptFile(f"{path}: not a commitment record (not JSON)") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            found = record.get("format") if isinstance(record, dict) else None
            raise CorruptFile(f"{path}: unsupported commitment format {found!r} (expected {FORMAT})")
        missing = [f for f in ("kind", "key_digest", "seed", "victim_sha256", "created") if f not in record]
        if missing:
            raise CorruptFile(f"{path}: the commitment record lacks {', '.join(missing)}")
        try:
            parse_time(record["created"], "created")
        except InvalidArgument:
            raise CorruptFile(f"{path}: the commitment's created time {record['created']!r} is not a time") from None
        return cls(record)


def commitment_path(key_path: str | os.PathLike) -> Path:
    """Where the commitment of the key (or key set) at ``key_path`` lives: ``<key file>.commit.json``."""
    key_path = Path(key_path)
    return key_path.with_name(key_path.name + SUFFIX)


def make_commitment(
    keys: Key | KeySet,
    victim_sha256: str | None,
    *,
    public_params: dict[str, dict[str, Any]] | None = None,
    created: _dt.datetime | None = None,
) -> Commitment:
    """The commitment record of a key or key set for the victim whose weights digest is ``victim_sha256`` (None:
    the one the key records). ``public_params`` maps each key's digest to the parameters it may publish (default:
    all of them); the schemes layer passes them with its secret parameters hidden
    (:func:`copycatch.schemes.commitment.commit_key`)."""
    when = (created or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    parts = list(keys) if isinstance(keys, KeySet) else [keys]
    victim = victim_sha256 or parts[0].meta.get("victim_sha256")
    if not victim:
        raise InvalidArgument("the key records no victim digest: give the victim model to commit to")
    described = [_part(k, (public_params or {}).get(k.digest, k.params)) for k in parts]
    record: dict[str, Any] = {"format": FORMAT}
    if isinstance(keys, KeySet):
        secret = all(p["seed"] == SECRET for p in described)
        record.update(kind="key set", parts=described, key_digest=keys.digest, seed=SECRET if secret else TRAINING)
    else:
        record.update(kind="key", **described[0])
    record.update(
        victim_sha256=victim,
        created=when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        package_version=__version__,
    )
    return Commitment(record)


def _part(key: Key, params: dict[str, Any]) -> dict[str, Any]:
    seed = key_seed_of(key)
    return {
        "scheme": key.scheme,
        "params": params,
        "key_digest": key.digest,
        "seed": SECRET if seed is not None else TRAINING,
        "seed_sha256": seed_digest(seed) if seed is not None else None,
    }


# -- checks --------------------------------------------------------------------------------------------------------
def check_commitment(
    commitment: Commitment, keys: Key | KeySet, *, suspect_since: _dt.datetime | None = None
) -> list[str]:
    """Every reason the key (or key set) fails its commitment, in words; empty when it matches (see the module
    docstring). ``suspect_since``: when the suspect was first seen; the commitment must be older."""
    record = commitment.record
    parts = list(keys) if isinstance(keys, KeySet) else [keys]
    digest = keys.digest
    problems = []
    if (record["kind"] == "key set") != isinstance(keys, KeySet):
        what = "a key set" if isinstance(keys, KeySet) else "a single key"
        problems.append(f"the commitment is for a {record['kind']}, but {what} is presented")
    elif record["key_digest"] != digest:
        committed = record.get("parts") if record["kind"] == "key set" else [record]
        problems.append(
            f"the key's digest {digest[:16]}… is not the committed {str(record['key_digest'])[:16]}…: the key "
            "changed after it was committed, or another key is presented"
        )
        for i, (key, entry) in enumerate(zip(parts, committed or [])):
            seed = key_seed_of(key)
            if (seed_digest(seed) if seed is not None else None) != entry.get("seed_sha256"):
                where = f"part {i} ({key.scheme})" if len(parts) > 1 else "the key"
                problems.append(f"{where} was derived from another seed than the committed one")
    recorded = {k.meta.get("victim_sha256") for k in parts} - {None}
    if recorded and record["victim_sha256"] not in recorded:
        problems.append(
            f"the commitment names victim {str(record['victim_sha256'])[:16]}…, but the key was made for victim "
            f"{sorted(recorded)[0][:16]}…: the commitment is for another model"
        )
    # to the second, as the record states its time: a commitment made in the suspect's first second is not older
    if suspect_since is not None and not commitment.created < suspect_since.replace(microsecond=0):
        problems.append(
            f"the key was committed at {record['created']}, not before the suspect was first seen "
            f"({suspect_since.isoformat(timespec='seconds')}): nothing shows the key predates the suspect"
        )
    return problems


def parse_time(text: Any, what: str) -> _dt.datetime:
    """An ISO 8601 date or time as an aware UTC datetime (a time without a zone is taken as UTC)."""
    try:
        when = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{what} {text!r} is not an ISO 8601 date or time (e.g. 2026-01-31T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc)
