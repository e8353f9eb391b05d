"""Small shared helpers: devices, progress bars, threads."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

from .errors import InvalidArgument

T = TypeVar("T")

PROGRESS_ENV = "COPYCATCH_PROGRESS"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` → CUDA when present, else CPU; an unavailable device is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgument(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(
            f"device {device!r} requested but CUDA is not available on this machine; use --device cpu"
        )
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InvalidArgument(f"device {device!r} requested but MPS is not available on this machine; use --device cpu")
    return dev


def progress_enabled(requested: bool | None = None) -> bool:
    if requested is not None:
        return requested
    env = os.environ.get(PROGRESS_ENV)
    if env is not None:
        return env.lower() not in {"0", "false", "no", "off"}
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool | None = None,
    unit: str = "it",
    leave: bool = False,
) -> Iterator[T]:
    """tqdm when wanted (a terminal, or COPYCATCH_PROGRESS=1), the bare iterable otherwise."""
    if not progress_enabled(enabled):
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=sys.stderr)


def default_threads() -> None:
    """Use every core but do not oversubscribe (tests and the CLI call this once)."""
    if os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
