"""Trained models cached by the hash of the configuration that produced them.

Cells that share a victim (same data, architecture, training, scheme and seed) train it once; the same goes
for clean models, surrogates and innocent models. Layout under the cache root::

    <kind>/<hash>.safetensors   the model (save_model: safetensors, digest-checked, written atomically)
    <kind>/<hash>.cckey         the key, for victims (Key.save: digest-checked, written atomically)
    <kind>/<hash>.json          what it cost and what it produced; written last, so its presence marks the
                                entry complete
    <kind>/<hash>.lock          held while the entry is built, so two workers never train the same model

Safe under concurrency: a worker that finds no ``.json`` takes the lock, looks again, builds, writes the files
by atomic rename and then the ``.json``; the other waits on the lock and then reads. A run killed while building
leaves at most a ``.part`` file or a model without its ``.json``, which the next run overwrites.
Nothing here is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..core.errors import CorruptFile
from ..core.key import Key
from ..models.base import Classifier
from ..models.io import load_model, save_model

KINDS = ("clean", "victim", "surrogate", "innocent")


class ArtifactCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _paths(self, kind: str, digest: str) -> dict[str, Path]:
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind {kind!r}")
        base = self.root / kind / digest
        return {
            "model": base.with_suffix(".safetensors"),
            "key": base.with_suffix(".cckey"),
            "record": base.with_suffix(".json"),
            "lock": base.with_suffix(".lock"),
        }

    def get_or_build(
        self,
        kind: str,
        digest: str,
        build: Callable[[], tuple[Classifier, Key | None, dict[str, Any]]],
        *,
        device: str = "cpu",
    ) -> tuple[Classifier, Key | None, dict[str, Any], bool]:
        """(model, key, record, was_cached). ``build`` returns (model, key or None, record dict)."""
        paths = self._paths(kind, digest)
        found = self._read(paths, device)
        if found is not None:
            return (*found, True)
        paths["lock"].parent.mkdir(parents=True, exist_ok=True)
        with _locked(paths["lock"]):
            found = self._read(paths, device)  # another worker may have finished it while we waited
            if found is not None:
                return (*found, True)
            model, key, record = build()
            record = {**record, "has_key": key is not None}
            save_model(model, paths["model"])
            if key is not None:
                key.save(paths["key"])
            tmp = paths["record"].with_name(paths["record"].name + ".part")
            tmp.write_text(json.dumps(record, sort_keys=True, default=str), encoding="utf-8")
            os.replace(tmp, paths["record"])
        return model, key, record, False

    def _read(self, paths: dict[str, Path], device: str) -> tuple[Classifier, Key | None, dict[str, Any]] | None:
        if not paths["record"].is_file():
            return None
        try:
            record = json.loads(paths["record"].read_text(encoding="utf-8"))
            model = load_model(paths["model"], device=device)
            key = Key.load(paths["key"]) if record.get("has_key") else None
        except (CorruptFile, OSError, ValueError):
            return None  # damaged or half-deleted: rebuild it
        return model, key, record


def timed(build: Any) -> Any:
    """A cache builder returning (model, key, record) with the seconds it took, from ``build() -> model`` or
    ``(model, key)`` or ``(model, key, record)``."""

    def wrapped() -> tuple[Any, Any, dict[str, Any]]:
        start = time.perf_counter()
        out = build()
        model, key, record = (out, None, {}) if not isinstance(out, tuple) else (*out, {})[:3]
        return model, key, {**record, "seconds": time.perf_counter() - start}

    return wrapped


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) on ``path``; where fcntl is missing, atomic renames alone keep us safe."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
