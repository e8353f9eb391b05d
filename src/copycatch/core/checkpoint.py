"""Resumable long runs: the checkpoint ``embed``, ``protect`` and ``steal`` keep beside their output.

The method: a resumed run is *replayed*, not unpickled. It runs the same code again with the same arguments, and
the two things that are expensive or must not happen twice come from the checkpoint instead:

* **Training stages.** Every call of :func:`~copycatch.models.train.fit` inside the run is its next *stage*
  (stage 0, 1, … in call order). After each epoch the stage's state is saved: the weights, the optimiser and LR
  scheduler, the epoch and step, the loop's own random generator and the global torch, NumPy and Python random
  states, the hooks' state (a scheme's running perturbations, counters and generators), the history and the early
  stopping's best weights. On resume, a finished stage is restored whole (its final weights, the random states and
  hook states it ended with, its result) without training, and the stage that was interrupted continues from its
  last finished epoch. Everything between stages (trigger search, key derivation, Jacobian steps) is cheap and
  seeded, so it simply runs again and gives the same values; each stage checks that the run reached it with the
  same description, data size and recipe it was saved with. So does a short stage its caller leaves out
  (``fit(checkpoint=False)``: Knockoff's hundreds of one-epoch online updates), which trains again.
* **Answers already bought.** ``steal`` records every batch of answers the victim gave (with a SHA-256 of the
  batch's inputs), appended and flushed to disk as it arrives. On resume the replayed run asks the same
  inputs again and gets the recorded answers (the digest must match), and only queries past the record reach the
  victim: the interrupted and the resumed run together buy exactly what one uninterrupted run buys. A batch whose
  answers arrived but were not yet written when the process died is the one thing bought twice.

On a CPU with the same seed, the resumed run's result is bit-identical to an uninterrupted run's (the tests check
it). On a GPU the kernels themselves are not deterministic and the CUDA generator is not saved, so a resumed run
reaches the same accuracy within run-to-run noise, not the same bits.

Files. The checkpoint is a folder ``<output>.ckpt``: ``state.pt`` (``torch.save`` of tensors, numbers, strings,
lists and dicts only, rewritten atomically after every epoch, read back with ``torch.load(weights_only=True)``,
which never unpickles arbitrary objects) and ``answers.bin`` (length-prefixed JSON headers and raw float32
answers). It is created when the first epoch ends or the first answer arrives, and removed when the run has
written its output. It holds a SHA-256 of the run's resolved arguments (:func:`identity` of each): resuming with
other arguments is refused, naming the ones that differ, and a run that finds a checkpoint without ``resume``
refuses to start over silently. Secret arguments (the key seed ``embed`` draws at random) are kept in the
checkpoint so that the resumed run gets them back, and appear in the digest only as their SHA-256.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CorruptFile, InvalidArgument

FORMAT = "copycatch.checkpoint/1"
STATE = "state.pt"
ANSWERS = "answers.bin"
SUFFIX = ".ckpt"

_ACTIVE: contextvars.ContextVar[RunCheckpoint | None] = contextvars.ContextVar("copycatch_checkpoint", default=None)


def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where the checkpoint of a run writing ``output`` lives: ``<output>.ckpt``."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


class RunCheckpoint:
    """The checkpoint of one run (see the module docstring): its training stages and the answers it bought.

    ``arguments`` are the run's resolved arguments (each described by :func:`identity`). Without ``resume`` an
    existing checkpoint is refused; with it, the checkpoint must exist and belong to the same arguments.

    ``secrets`` are arguments the run must get back as they were, such as a key seed drawn at random: the
    checkpoint keeps them (and is then as secret as they are), the arguments' digest holds only their SHA-256. On
    resume a secret given as None is the checkpoint's (:attr:`secrets`); any other value must be the same.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        arguments: dict[str, Any],
        *,
        resume: bool,
        secrets: dict[str, str | None] | None = None,
    ):
        self.path = Path(path)
        self.resumed = resume
        self.stages: list[dict[str, Any]] = []
        self.epochs_restored = 0
        self.answers_replayed = 0  # answers (rows) taken from the record instead of bought
        self._next_stage = 0
        self._recorded: list[tuple[str, torch.Tensor]] = []
        self._position = 0  # the next recorded batch to replay
        self._created = False
        if self.path.exists() and not resume:
            raise InvalidArgument(
                f"checkpoint {self.path} exists from an interrupted run: continue it with --resume (resume=True), "
                f"or delete it (rm -r {self.path}) to start over"
            )
        if resume and not (self.path / STATE).is_file():
            raise InvalidArgument(f"{self.path}: no checkpoint to resume; run without --resume")
        payload = self._read_state() if resume else {}
        kept = payload.get("secrets", {})
        self.secrets = {k: v if v is not None else kept.get(k) for k, v in (secrets or {}).items()}
        hidden = {k: hashlib.sha256(v.encode()).hexdigest() if v is not None else None for k, v in self.secrets.items()}
        self.arguments = identity({**arguments, "secrets_sha256": hidden})
        self.digest = hashlib.sha256(_canonical(self.arguments).encode()).hexdigest()
        if resume:
            self._resume(payload)

    @classmethod
    def beside(
        cls,
        output: str | os.PathLike | None,
        arguments: dict[str, Any],
        *,
        resume: bool,
        secrets: dict[str, str | None] | None = None,
    ) -> RunCheckpoint | None:
        """The checkpoint of a run writing ``output`` (None when nothing is written: nothing to resume)."""
        if output is None:
            if resume:
                raise InvalidArgument("resuming needs the output path: the checkpoint lives beside it")
            return None
        return cls(checkpoint_path(output), arguments, resume=resume, secrets=secrets)

    # -- training stages ---------------------------------------------------------------------------------------------
    def next_stage(self, what: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """Begin the run's next training stage, described by ``what``: its index, and what the checkpoint saved of
        it (None: nothing, train from the start). A saved stage must have been described the same way."""
        index = self._next_stage
        self._next_stage += 1
        if index >= len(self.stages):
            return index, None
        saved = self.stages[index]
        if saved["what"] != what:
            raise CorruptFile(
                f"checkpoint {self.path} does not fit this run: its training stage {index + 1} is "
                f"{_canonical(saved['what'])}, this run's is {_canonical(what)} (the code changed since it was "
                f"written?); delete it (rm -r {self.path}) to start over"
            )
        self.epochs_restored += saved["epoch"]
        return index, saved

    def save_stage(self, index: int, record: dict[str, Any]) -> None:
        """Save stage ``index``'s state (after an epoch, or finished) and rewrite the checkpoint atomically."""
        if index == len(self.stages):
            self.stages.append(record)
        else:
            self.stages[index] = record
        self._write_state()

    # -- answers bought ---------------------------------------------------------------------------------------------
    def answers(self, inputs: torch.Tensor, buy: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Answers to the batch ``inputs``: the recorded ones while the replay is within the record (the inputs
        must be the ones recorded), else ``buy()``'s, appended to the record before they are returned."""
        digest = hashlib.sha256(inputs.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
        if self._position < len(self._recorded):
            recorded, answers = self._recorded[self._position]
            if recorded != digest:
                raise CorruptFile(
                    f"checkpoint {self.path} does not fit this run: query batch {self._position + 1} asks other "
                    f"inputs than the recorded ones (the code or data changed since it was written?); delete it "
                    f"(rm -r {self.path}) to start over"
                )
            self._position += 1
            self.answers_replayed += len(answers)
            return answers.clone()
        answers = buy()
        self._append_answers(digest, answers)
        return answers

    def _append_answers(self, digest: str, answers: torch.Tensor) -> None:
        self._create()
        values = answers.detach().float().cpu().contiguous()
        header = json.dumps({"inputs": digest, "rows": values.shape[0], "cols": values.shape[1]}).encode()
        with open(self.path / ANSWERS, "ab") as f:
            f.write(struct.pack("<I", len(header)) + header + values.numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())  # an answer paid for must survive the process that bought it
        self._recorded.append((digest, values))
        self._position = len(self._recorded)

    # -- the files ---------------------------------------------------------------------------------------------------
    def remove(self) -> None:
        """The run wrote its output: the checkpoint is no longer needed."""
        shutil.rmtree(self.path, ignore_errors=True)

    def summary(self) -> dict[str, Any]:
        """What a resumed run took from the checkpoint (for the user: how much work was not redone)."""
        return {
            "checkpoint": str(self.path),
            "epochs_restored": self.epochs_restored,
            "answers_replayed": self.answers_replayed,
        }

    def _create(self) -> None:
        """Write the checkpoint's state file on first use, so that even answers bought before any epoch ends are
        tied to this run's arguments."""
        if not self._created:
            self._write_state()

    def _write_state(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT,
            "digest": self.digest,
            "arguments": _canonical(self.arguments),
            "secrets": self.secrets,
            "stages": self.stages,
        }
        tmp = self.path / (STATE + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / STATE)
        self._created = True

    def _read_state(self) -> dict[str, Any]:
        try:
            payload = torch.load(self.path / STATE, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file, or one that is not ours: never unpickled beyond plain data
            raise CorruptFile(
                f"checkpoint {self.path / STATE} is unreadable ({type(exc).__name__}); delete it (rm -r {self.path}) "
                "to start over"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CorruptFile(f"{self.path / STATE} is not a copycatch checkpoint ({FORMAT})")
        return payload

    def _resume(self, payload: dict[str, Any]) -> None:
        if payload["digest"] != self.digest:
            differ = _differences(json.loads(payload["arguments"]), self.arguments)
            raise InvalidArgument(
                f"checkpoint {self.path} belongs to other arguments (they differ in {', '.join(differ)}): resume "
                f"with the arguments it was made with, or delete it (rm -r {self.path}) to start over"
            )
        self.stages = list(payload["stages"])
        self._recorded = self._read_answers()
        self._created = True

    def _read_answers(self) -> list[tuple[str, torch.Tensor]]:
        """The recorded answer batches; a last batch cut short by a kill is dropped (and cut from the file)."""
        path = self.path / ANSWERS
        if not path.exists():
            return []
        data = path.read_bytes()
        out, offset = [], 0
        while offset + 4 <= len(data):
            (size,) = struct.unpack_from("<I", data, offset)
            try:
                header = json.loads(data[offset + 4 : offset + 4 + size])
                rows, cols, digest = int(header["rows"]), int(header["cols"]), str(header["inputs"])
            except (ValueError, KeyError, TypeError):
                break
            start, end = offset + 4 + size, offset + 4 + size + 4 * rows * cols
            if end > len(data):
                break
            values = torch.frombuffer(bytearray(data[start:end]), dtype=torch.float32).reshape(rows, cols)
            out.append((digest, values))
            offset = end
        if offset < len(data):
            with open(path, "r+b") as f:
                f.truncate(offset)
        return out


def active() -> RunCheckpoint | None:
    """The checkpoint of the run in progress in this context (None outside a resumable run)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def checkpointing(checkpoint: RunCheckpoint | None) -> Iterator[RunCheckpoint | None]:
    """Make ``checkpoint`` the active one while the block runs (None: no checkpoint, the block runs as is)."""
    token = _ACTIVE.set(checkpoint)
    try:
        yield checkpoint
    finally:
        _ACTIVE.reset(token)


# ---------------------------------------------------------------------------------------------------------------------
# What identifies a run's arguments
# ---------------------------------------------------------------------------------------------------------------------


def identity(value: Any) -> Any:
    """A JSON-able description of an argument that changes whenever the argument does: numbers and strings as they
    are; tensors, models and data by a SHA-256 of their contents; parameter objects by their fields; keys by their
    digest; data splits by their provenance (data fingerprint, seed, fractions, sizes); oracles by their kind,
    name, shape and, for a local model, its weights; files by their contents; functions by their qualified name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        path = Path(value)
        return {"path": str(path), "sha256": _file_digest(path) if path.is_file() else None}
    if isinstance(value, dict):
        return {str(k): identity(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [identity(v) for v in value]
    if isinstance(value, torch.Tensor):
        return {"sha256": _tensor_digest(value), "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, torch.nn.Module):
        h = hashlib.sha256()
        for name, tensor in sorted(value.state_dict().items()):
            h.update(name.encode() + b"\x00" + _tensor_digest(tensor).encode())
        return {"weights_sha256": h.hexdigest()}
    if callable(getattr(value, "to_dict", None)):
        return identity(value.to_dict())
    if isinstance(getattr(value, "digest", None), str):
        return {"digest": value.digest}
    if callable(getattr(value, "provenance", None)):
        return identity(value.provenance())
    if isinstance(getattr(value, "stored", None), torch.Tensor):
        return {"inputs": identity(value.stored), "labels": identity(value.y)}
    if callable(getattr(value, "query", None)) and hasattr(value, "num_classes"):
        return {
            "oracle": type(value).__name__,
            "name": getattr(value, "name", None),
            "num_classes": value.num_classes,
            "input_shape": identity(getattr(value, "input_shape", None)),
            "model": identity(getattr(value, "model", None)),
        }
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return type(value).__qualname__


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{list(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the arguments that differ between two :func:`identity` descriptions."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for name in sorted(set(old) | set(new)):
            out += _differences(old.get(name), new.get(name), f"{prefix}.{name}" if prefix else name)
        return out
    return [] if old == new else [prefix or "the arguments"]


# ---------------------------------------------------------------------------------------------------------------------
# Saving states: random generators and the attributes of training hooks
# ---------------------------------------------------------------------------------------------------------------------


def rng_states() -> dict[str, Any]:
    """The global torch, NumPy and Python random states, as plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def pack_state(value: Any) -> Any:
    """A hook attribute as plain data ``torch.load(weights_only=True)`` reads back: generators as their state,
    NumPy arrays and tensors as CPU tensors, containers item by item. Anything else is refused here, when the
    checkpoint is written, rather than when it is read."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.array(value))}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(pack_state(v) for v in value)
    if isinstance(value, dict):
        return {k: pack_state(v) for k, v in value.items()}
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def unpack_state(value: Any, current: Any = None) -> Any:
    """The attribute :func:`pack_state` saved. ``current`` is the attribute's value now: a generator is set to the
    saved state in place (whoever else holds it sees the change), a tensor goes to its device."""
    if isinstance(value, dict) and "__generator__" in value:
        generator = current if isinstance(current, torch.Generator) else torch.Generator()
        generator.set_state(value["__generator__"])
        return generator
    if isinstance(value, dict) and "__ndarray__" in value:
        return value["__ndarray__"].numpy()
    if isinstance(value, torch.Tensor):
        return value.to(current.device) if isinstance(current, torch.Tensor) else value
    if isinstance(value, (list, tuple)):
        return type(value)(unpack_state(v) for v in value)
    if isinstance(value, dict):
        return {k: unpack_state(v) for k, v in value.items()}
    return value
