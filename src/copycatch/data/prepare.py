"""Where text and audio data sets live on disk, and ``copycatch data prepare``.

A data set that needs files is looked for, in order, at the ``path=`` given to its loader, in ``data_dir``
(``--data-dir``) or ``data_dir/NAME``, and in ``DATA_ROOT/NAME``, where the data root is ``$COPYCATCH_DATA_DIR``,
else ``$XDG_CACHE_HOME/copycatch``, else ``~/.cache/copycatch``: outside any repository, so data are never committed.

:func:`prepare_dataset` puts a data set there, two ways:

* an offline stand-in (a name with a generator, :data:`GENERATORS`) is generated, deterministically from a seed,
  into a fresh folder that replaces the old one only when complete; a ``MANIFEST.json`` records the seed, the
  parameters, the tools' versions and a SHA-256 over every file, so a second run with the same seed and parameters
  is recognised (and skipped) and two machines can compare their copies;
* a real corpus (``path=``) is read whole — so a malformed file is reported now, naming the file and line — and
  then linked as ``DATA_ROOT/NAME`` (a symbolic link), so that afterwards it loads by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._version import __version__
from ..core.errors import DataNotFound, InvalidArgument
from ..core.params import Params
from ..core.registry import Registry
from .base import DATASETS, Dataset

DATA_DIR_ENV = "COPYCATCH_DATA_DIR"
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = "copycatch.standin/1"

# name → generate(out_dir, *, seed, params, workers, progress) -> dict of facts for the manifest, registered with
# register_generator, which attaches the generator's Params class and version
GENERATORS: Registry[Callable[..., dict[str, Any]]] = Registry("stand-in data set")


def register_generator(
    name: str, *, params: type[Params], version: int
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Decorator registering the generator of the stand-in ``name``: ``params`` validates its ``-p`` parameters,
    ``version`` is raised whenever the same seed and parameters would give other files (a folder made by an older
    version is then generated again)."""

    def decorator(generate: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        generate.params = params  # type: ignore[attr-defined]
        generate.version = version  # type: ignore[attr-defined]
        return GENERATORS.register(name)(generate)

    return decorator


def data_root() -> Path:
    """``$COPYCATCH_DATA_DIR``, else ``$XDG_CACHE_HOME/copycatch``, else ``~/.cache/copycatch``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache) if cache else Path.home() / ".cache") / "copycatch"


def locate(
    name: str, path: str | os.PathLike | None, data_dir: str | os.PathLike | None, found: Callable[[Path], bool]
) -> Path:
    """The file or folder a loader reads: ``path`` when given, else the first of ``data_dir/name``, ``data_dir``,
    ``data_root()/name`` for which ``found`` holds. Not finding it says where it looked and how to get it."""
    if path:
        where = Path(path).expanduser()
        if not where.exists():
            raise DataNotFound(f"{where}: no such file or folder")
        return where
    searched = [Path(data_dir) / name, Path(data_dir)] if data_dir else []
    searched.append(data_root() / name)
    for candidate in searched:
        if found(candidate):
            return candidate
    how = (
        f"run `copycatch data prepare {name}` (offline, a few minutes)"
        if name in GENERATORS
        else f"get it and run `copycatch data prepare {name} --path WHERE`, or pass --data-dir"
    )
    raise DataNotFound(f"data set {name!r} not found in {', '.join(map(str, searched))}: {how}")


@dataclasses.dataclass
class Prepared:
    """What :func:`prepare_dataset` did: where the data set is, whether it was generated now, and its size."""

    name: str
    directory: Path
    action: str  # "generated", "already prepared" or "linked"
    seconds: float
    files: int
    bytes: int
    dataset: Dataset

    def describe(self) -> dict[str, Any]:
        test = len(self.dataset.test) if self.dataset.test is not None else 0
        return {
            "dataset": self.name,
            "modality": self.dataset.modality,
            "directory": str(self.directory),
            "action": self.action,
            "seconds": round(self.seconds, 1),
            "files": self.files,
            "megabytes": round(self.bytes / 1e6, 1),
            "classes": list(self.dataset.class_names),
            "train": len(self.dataset.train),
            "test": test,
        }


def prepare_dataset(
    name: str,
    *,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    params: Mapping[str, Any] | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    force: bool = False,
) -> Prepared:
    """Generate the stand-in ``name`` into ``out`` (default ``data_root()/name``), or, with ``path``, check the real
    corpus there and link it as ``out``; then load it, so that what is reported is what loads by name."""
    DATASETS.get(name)  # an unknown name lists the valid ones
    dest = Path(out).expanduser() if out else data_root() / name
    start = time.perf_counter()
    if path is not None:
        if params:
            raise InvalidArgument("generator parameters (-p) apply to stand-ins, not to a corpus given with --path")
        if "path" not in inspect.signature(DATASETS.get(name).factory).parameters:
            raise InvalidArgument(f"data set {name!r} does not load from a path; see `copycatch data list`")
        source = Path(path).expanduser().resolve()
        dataset = DATASETS.create(name, path=str(source))
        _link(source, dest)
        files, size = _size(source)
        return Prepared(name, dest, "linked", time.perf_counter() - start, files, size, dataset)
    if name not in GENERATORS:
        raise InvalidArgument(
            f"data set {name!r} is not generated by copycatch: "
            + (
                f"get it and run `copycatch data prepare {name} --path WHERE`"
                if "path" in inspect.signature(DATASETS.get(name).factory).parameters
                else "it loads as it is (see `copycatch data list`)"
            )
        )
    generate = GENERATORS.get(name).factory
    settings = generate.params.from_dict(params or {})  # type: ignore[attr-defined]
    wanted = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "generator_version": generate.version,  # type: ignore[attr-defined]
        "seed": seed,
        "params": settings.to_dict(),
    }
    action = "already prepared"
    if force or not _matches(dest, wanted):
        _generate_into(dest, generate, wanted, settings, workers=workers or default_workers(), progress=progress)
        action = "generated"
    dataset = DATASETS.create(name, path=str(dest))
    files, size = _size(dest)
    return Prepared(name, dest, action, time.perf_counter() - start, files, size, dataset)


def default_workers() -> int:
    """Processes for a generator: two at most (the machines this runs on share two cores)."""
    return max(1, min(2, os.cpu_count() or 1))


def _generate_into(
    dest: Path, generate: Callable[..., dict[str, Any]], wanted: dict, settings: Params, **kwargs: Any
) -> None:
    """Generate into a sibling folder, then swap it in: an interrupted run never leaves a half data set behind."""
    if dest.exists() and not dest.is_symlink() and not (dest / MANIFEST).is_file() and any(dest.iterdir()):
        raise InvalidArgument(f"{dest} exists and is not a copycatch stand-in; remove it or choose another --out")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        facts = generate(partial, seed=wanted["seed"], params=settings, **kwargs)
        manifest = {**wanted, **facts, "copycatch": __version__, "content_sha256": content_digest(partial)}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if dest.is_symlink():
            dest.unlink()
        elif dest.exists():
            shutil.rmtree(dest)
        partial.rename(dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _matches(dest: Path, wanted: dict) -> bool:
    """Whether ``dest`` holds a complete stand-in made with the same name, seed and parameters."""
    try:
        manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(manifest.get(k) == v for k, v in wanted.items())


def content_digest(directory: Path) -> str:
    """SHA-256 over every file's relative path and bytes, in sorted order (the manifest left out)."""
    h = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = file.relative_to(directory).as_posix().encode("utf-8")
        h.update(len(rel).to_bytes(8, "little") + rel)
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


def _link(source: Path, dest: Path) -> None:
    if dest.is_symlink():
        dest.unlink()
    elif dest.exists():
        if dest.resolve() == source:
            return
        raise InvalidArgument(f"{dest} exists; remove it or choose another --out to link {source} to")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(source, target_is_directory=source.is_dir())


def _size(where: Path) -> tuple[int, int]:
    """Number of files and their bytes (a file counts as one)."""
    files = [where] if where.is_file() else [p for p in where.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)
