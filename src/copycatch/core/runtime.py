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


def return_freed_memory() -> None:
    """Make glibc hand freed tensor buffers back to the system (the CLI calls this once; a library leaves the host
    process's allocator alone).

    glibc serves an allocation above its mmap threshold from a fresh mapping, but raises that threshold to the
    size of every such block freed (up to 32 MB), so after the first few batches of activations every later buffer
    comes from the heap, where freed memory stays resident: an embed of Fashion-MNIST peaked at 640 MB instead of
    about 400. Fixing the threshold at 256 kB (``mallopt(M_MMAP_THRESHOLD)``, which also stops the adjustment)
    returns each freed buffer at once. No-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    if sys.platform != "linux" or os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None:
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 256 * 1024)


def default_threads() -> None:
    """Use every core but do not oversubscribe (tests and the CLI call this once)."""
    if os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
