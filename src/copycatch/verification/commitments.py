"""The commitment checks of a verification: each key's commitment found, checked before any query, and stated in
the evidence.

For every key source given to ``verify`` (a key file, a key-set file, or a key in memory) the commitment is the file
given for it (``commitments``, in the order of the keys) or, for a file, the one beside it (``<key
file>.commit.json``, :func:`~copycatch.core.commitment.commitment_path`). A commitment the key does not match
(:func:`~copycatch.core.commitment.check_commitment`: the key changed after the commitment, was re-derived from
another seed, the commitment names another victim, or it is not older than the suspect's first sighting) refuses
the verification with :class:`~copycatch.core.commitment.CommitmentRefused` before the suspect is asked anything:
a verdict from such a key would not be admissible. Without a commitment the verification runs, and the evidence
says that nothing shows the key predates the suspect; ``require`` (or a ``suspect_since`` to compare with) refuses
it instead.

Each evidence then carries ``details["commitment"]``: the commitment's file, id (what the owner published or had
timestamped), its time as the record states it, the committed victim digest and seed kind, the suspect's first
sighting when given, and ``admissible``: True when the commitment is older than that sighting, None when the tool
cannot tell (no sighting given, or no commitment). A third party compares the time with the suspect's first
appearance and with the external timestamp of the id; the tool cannot know either.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.commitment import (
    TRAINING,
    Commitment,
    CommitmentRefused,
    check_commitment,
    commitment_path,
    parse_time,
)
from ..core.errors import InvalidArgument
from ..core.key import Key
from ..core.keyset import KeySet, load_key_file

NO_COMMITMENT = (
    "no commitment for this key: nothing shows that it was made before the suspect existed, and a key forged from "
    "the suspect's own answers would verify alike (copycatch embed and protect write one beside the key; "
    "copycatch key commit prints it for publishing or timestamping)"
)


@dataclasses.dataclass
class CommitmentStatus:
    """One key source's commitment (None: none found) and the digests of the keys it holds."""

    source: str
    digests: list[str]
    commitment: Commitment | None = None
    path: Path | None = None

    def record(self, suspect_since: _dt.datetime | None) -> dict[str, Any]:
        """What the evidence states (``details["commitment"]``)."""
        since = suspect_since.isoformat(timespec="seconds") if suspect_since is not None else None
        if self.commitment is None:
            return {"status": "none", "admissible": None, "suspect_first_seen": since}
        record = self.commitment.record
        return {
            "status": "matches",
            "file": str(self.path) if self.path is not None else None,
            "id": self.commitment.id,
            "committed_at": record["created"],
            "key_digest": record["key_digest"],
            "victim_sha256": record["victim_sha256"],
            "seed": record["seed"],
            "suspect_first_seen": since,
            "admissible": True if suspect_since is not None else None,
        }

    def note(self, suspect_since: _dt.datetime | None) -> str:
        if self.commitment is None:
            return NO_COMMITMENT
        record, short = self.commitment.record, self.commitment.id[:16]
        public = record["seed"] == TRAINING
        seed = "; its random choices come from the public training seed, which anyone can repeat" if public else ""
        if suspect_since is None:
            return (
                f"key matches its commitment of {record['created']} (id {short}…){seed}: it predates the suspect if "
                "the suspect first appeared later and the id's external timestamp confirms that time"
            )
        return (
            f"admissible: key committed at {record['created']} (id {short}…), before the suspect was first seen "
            f"({suspect_since.isoformat(timespec='seconds')}){seed}; a third party confirms the time with the id's "
            "external timestamp"
        )


def check_commitments(
    keys: Sequence[Key | KeySet | str | os.PathLike],
    commitments: Sequence[Commitment | str | os.PathLike] | None = None,
    *,
    suspect_since: _dt.datetime | str | None = None,
    require: bool = False,
) -> list[CommitmentStatus]:
    """Each key source's commitment, checked (see the module docstring); raises
    :class:`~copycatch.core.commitment.CommitmentRefused` naming the key, the commitment and every reason."""
    since = as_time(suspect_since)
    given = list(commitments or [])
    if given and len(given) != len(keys):
        raise InvalidArgument(
            f"{len(given)} commitments for {len(keys)} keys: give one commitment per key, in the order of the keys"
        )
    statuses = []
    for i, source in enumerate(keys):
        is_file = isinstance(source, (str, os.PathLike))
        loaded = load_key_file(source) if is_file else source
        if not isinstance(loaded, (Key, KeySet)):
            raise InvalidArgument(f"expected a key, a key set or a key file path, got {type(loaded).__name__}")
        name = str(source) if is_file else f"key {loaded.digest[:12]}… (in memory)"
        parts = list(loaded) if isinstance(loaded, KeySet) else [loaded]
        status = CommitmentStatus(name, [k.digest for k in parts])
        status.commitment, status.path = _find(given[i] if given else None, source if is_file else None)
        if status.commitment is None:
            if require or since is not None:
                beside = f" (none at {commitment_path(source)})" if is_file else ""
                raise CommitmentRefused(
                    f"{name}: no commitment{beside}; it is required to show that the key predates the suspect"
                )
        else:
            problems = check_commitment(status.commitment, loaded, suspect_since=since)
            if problems:
                where = status.path or "the commitment given"
                raise CommitmentRefused(
                    f"{name} does not match its commitment {where}: {'; '.join(problems)}. Verification refused: "
                    "a verdict from this key would not be admissible"
                )
        statuses.append(status)
    return statuses


def state_commitments(evidences: Sequence[Any], statuses: Sequence[CommitmentStatus], suspect_since: Any) -> None:
    """Put each key's commitment status into its evidence (``details["commitment"]`` and a note)."""
    since = as_time(suspect_since)
    by_digest = {digest: status for status in statuses for digest in status.digests}
    for evidence in evidences:
        status = by_digest.get(evidence.key_digest)
        if status is None:
            continue
        evidence.details["commitment"] = status.record(since)
        evidence.notes.append(status.note(since))


def as_time(when: _dt.datetime | str | None) -> _dt.datetime | None:
    """``when`` as an aware UTC time (a string in ISO 8601; a naive time is taken as UTC)."""
    if when is None:
        return None
    if isinstance(when, _dt.datetime):
        return (when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    return parse_time(when, "the suspect's first sighting")


def _find(given: Commitment | str | os.PathLike | None, key_file: Any) -> tuple[Commitment | None, Path | None]:
    """The commitment given for a key (object or file), else the one beside its file, else none."""
    if isinstance(given, Commitment):
        return given, None
    if given is not None:
        return Commitment.load(given), Path(given)
    if key_file is not None and commitment_path(key_file).is_file():
        path = commitment_path(key_file)
        return Commitment.load(path), path
    return None, None
