"""Input-side evasions: the thief changes how its deployed model answers queries, not the weights.

Two attacks use this (``noise`` and ``reject``). Both are :class:`InputEvasion` subclasses and
registered removal attacks, so ``copycatch remove --attack noise:sigma=0.1`` and ``run_chain``
reach them like any other removal. What they produce is a *deployment*: the (unchanged) model
behind a chain of evasions, outermost first.

Design (the simplest honest one we found):

* **Python.** ``evasion.wrap(model)`` (or ``RemovalResult.oracle()``) returns an
  :class:`EvadingOracle`, an ordinary :class:`~copycatch.oracles.base.Oracle` that a verifier queries
  exactly as it would query the thief's API: ``cc.verify(result.oracle(), key)``. Noise also wraps
  any black-box oracle; rejection needs the model itself (its features or logits), which the
  thief has.
* **Files.** The weights go to the usual model file; the evasions go to a *deployment file*
  ``<model>.evasion.safetensors`` next to it: safetensors whose JSON header names the model file
  (relative path) and its weight digest, and lists every evasion with its parameters and fitted
  state (thresholds); tensors hold what a detector must remember (LOF's reference features).
  Nothing is pickled; loading refits LOF from the stored features (deterministic).
  ``copycatch verify --suspect stolen.evasion.safetensors`` queries the deployment (see
  :func:`open_deployment`; :mod:`copycatch.oracles.suspects` recognises the suffix), while
  ``--suspect stolen.safetensors`` still queries the bare model. The verifier never has to
  know which evasions the thief used: a deployment file is just another suspect.

Evasions are fitted to the model they guard (a detector's threshold depends on its features),
so they come after every weight change; :func:`~.base.run_chain` enforces this and a
deployment file refuses a model whose weights changed since.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...core.errors import CorruptFile, InvalidArgument
from ...data.base import TensorData
from ...models.base import Classifier
from ...models.io import load_model, weights_digest
from ...models.train import TrainConfig
from ...oracles.suspects import ModelFileSuspect, register_suspect_protocol
from .base import REMOVAL_ATTACKS, RemovalAttack, RemovalResult, check_modality
from .deployment import AnswerFn, EvadingOracle

FORMAT = "copycatch.evasion/1"
SUFFIX = ".evasion.safetensors"


class InputEvasion(RemovalAttack):
    """Base class: :meth:`apply` fits the evasion to a model; :meth:`respond` answers through it."""

    input_side: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False  # True: respond() reads the model's features or logits

    def __init__(self, params=None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.fitted_to: str | None = None  # weight digest of the model the evasion was fitted to

    # -- interface -------------------------------------------------------------------------------------------------
    def apply(
        self, model: Classifier, data: TensorData, *, train: TrainConfig, progress: bool | None = None
    ) -> dict[str, Any]:
        """Fit to ``model`` (thresholds, reference features); the weights stay as they are."""
        return {}

    def respond(self, oracle: EvadingOracle, index: int, x: torch.Tensor, answer: AnswerFn) -> torch.Tensor:
        """Answer the batch ``x``; ``answer`` is the rest of the deployment (inner evasions, then the model)."""
        raise NotImplementedError

    def report(self, model: Classifier, test: TensorData) -> dict[str, Any]:
        """Extra figures on the test data for the attack's report (e.g. how many queries a detector rejects)."""
        return {}

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What a deployment file stores beyond the parameters: (JSON-able values, tensors)."""
        return {}, {}

    def load_state(self, values: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        pass

    # -- use -------------------------------------------------------------------------------------------------------
    def wrap(self, target: Any, **options: Any) -> EvadingOracle:
        """An oracle answering through this evasion: ``target`` is a model, or (noise only) any oracle."""
        return EvadingOracle(target, [self], **options)

    def run(
        self,
        model: Classifier,
        data: TensorData,
        *,
        test: TensorData | None = None,
        train: TrainConfig | None = None,
        progress: bool | None = None,
        prior: Sequence[InputEvasion] = (),
    ) -> RemovalResult:
        """Fit to ``model`` and report test accuracy through ``prior`` evasions before and after adding this one."""
        check_modality(self, model)
        start = time.perf_counter()
        work = copy.deepcopy(model).eval()
        evasion = copy.deepcopy(self)  # the attack object stays reusable; the result owns the fitted copy
        info = evasion.apply(work, data, train=train or TrainConfig(), progress=progress) or {}
        evasion.fitted_to = weights_digest(work)
        chain = [*prior, evasion]
        before = after = None
        if test is not None and len(test):
            before = deployed_accuracy(work, list(prior), test)
            after = deployed_accuracy(work, chain, test)
            info.update(evasion.report(work, test))
        work.provenance = {
            **model.provenance,
            "removals": [
                *model.provenance.get("removals", []),
                {"attack": self.name, "params": self.params.to_dict(), "input_side": True},
            ],
        }
        return RemovalResult(work, before, after, time.perf_counter() - start, info, evasions=chain)


def deployed_accuracy(model: Classifier, evasions: Sequence[InputEvasion], test: TensorData) -> float:
    """Accuracy of the deployment (model behind ``evasions``) on ``test``; a fresh, seeded oracle."""
    if not evasions:
        from ...models.train import accuracy

        return accuracy(model, test)
    oracle = EvadingOracle(model, evasions)
    pred = torch.cat([oracle.query(test.subset(slice(i, i + 1024)).x).argmax(1) for i in range(0, len(test), 1024)])
    return (pred == test.y.cpu()).float().mean().item()


# ---------------------------------------------------------------------------------------------------------------------
# deployment files
# ---------------------------------------------------------------------------------------------------------------------


def deployment_path(model_path: str | os.PathLike) -> Path:
    """``laundered.safetensors`` → ``laundered.evasion.safetensors``."""
    p = Path(model_path)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(stem + SUFFIX)


def is_deployment(path: str | os.PathLike) -> bool:
    return str(path).endswith(SUFFIX)


def save_deployment(
    model_path: str | os.PathLike,
    model: Classifier,
    evasions: Sequence[InputEvasion],
    path: str | os.PathLike | None = None,
) -> Path:
    """Write the deployment file for ``model`` (already saved at ``model_path``) behind ``evasions``."""
    from safetensors.torch import save_file

    if not evasions:
        raise InvalidArgument("a deployment file needs at least one input-side evasion")
    path = Path(path) if path is not None else deployment_path(model_path)
    digest = weights_digest(model)
    entries, tensors = [], {}
    for i, ev in enumerate(evasions):
        if ev.fitted_to not in (None, digest):
            raise InvalidArgument(f"evasion {ev.name!r} was fitted to another model than the one being saved")
        values, state_tensors = ev.state()
        entries.append(
            {"attack": ev.name, "params": ev.params.to_dict(), "state": values, "tensors": sorted(state_tensors)}
        )
        for name, t in state_tensors.items():
            tensors[f"{i}/{name}"] = t.detach().cpu().contiguous()
    try:
        model_ref = os.path.relpath(Path(model_path).resolve(), path.resolve().parent)
    except ValueError:  # another drive on Windows
        model_ref = str(Path(model_path).resolve())
    header = {"format": FORMAT, "model": model_ref, "model_sha256": digest, "evasions": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata={"copycatch": json.dumps(header, sort_keys=True)})
    os.replace(tmp, path)
    return path


def load_deployment(path: str | os.PathLike, *, device: str = "cpu") -> tuple[Classifier, list[InputEvasion]]:
    """The model and the fitted evasions of a deployment file (validated; nothing unpickled)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such deployment file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle is not iterable)
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise CorruptFile(f"{path}: not a readable deployment file ({exc})") from None
    try:
        header = json.loads(meta["copycatch"])
    except (KeyError, json.JSONDecodeError):
        raise CorruptFile(f"{path}: no copycatch deployment header") from None
    found = header.get("format") if isinstance(header, dict) else None
    if found != FORMAT:
        raise CorruptFile(f"{path}: unsupported deployment format {found!r} (expected {FORMAT})")
    entries = header.get("evasions")
    if not isinstance(entries, list) or not entries or not isinstance(header.get("model"), str):
        raise CorruptFile(f"{path}: deployment header lacks the model or the evasions")
    model_path = (path.parent / header["model"]) if not os.path.isabs(header["model"]) else Path(header["model"])
    if not model_path.is_file():
        raise InvalidArgument(f"{path}: the model file it guards, {model_path}, is missing")
    model = load_model(model_path, device=device)
    digest = weights_digest(model)
    if digest != header.get("model_sha256"):
        raise CorruptFile(f"{path}: {model_path} changed since the deployment was written (weight digest differs)")
    evasions: list[InputEvasion] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("attack") not in REMOVAL_ATTACKS:
            raise CorruptFile(f"{path}: evasion #{i} names no known removal attack")
        cls = REMOVAL_ATTACKS.get(entry["attack"]).factory
        if not (isinstance(cls, type) and issubclass(cls, InputEvasion)):
            raise CorruptFile(f"{path}: {entry['attack']!r} is not an input-side evasion")
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise CorruptFile(f"{path}: evasion #{i}: parameters are not a mapping")
        try:
            ev = REMOVAL_ATTACKS.create(entry["attack"], **params)
        except InvalidArgument as exc:
            raise CorruptFile(f"{path}: evasion #{i}: {exc}") from None
        names = entry.get("tensors") or []
        missing = [n for n in names if f"{i}/{n}" not in tensors]
        if missing:
            raise CorruptFile(f"{path}: evasion #{i} lacks tensor {missing[0]!r}")
        try:
            ev.load_state(entry.get("state") or {}, {n: tensors[f"{i}/{n}"] for n in names})
        except InvalidArgument as exc:
            raise CorruptFile(f"{path}: evasion #{i}: {exc}") from None
        ev.fitted_to = digest
        evasions.append(ev)
    return model, evasions


def open_deployment(path: str | os.PathLike, *, budget: int | None = None, device: str | None = None) -> EvadingOracle:
    """A deployment file as an oracle: what a verifier queries when the thief serves it."""
    model, evasions = load_deployment(path, device=device or "cpu")
    return EvadingOracle(model, evasions, budget=budget, name=Path(path).name)


@register_suspect_protocol
class DeploymentSuspect(ModelFileSuspect):
    """A thief's deployment file (``.evasion.safetensors``): the model behind its input-side evasions."""

    name = "deployment"
    priority = 25

    def matches(self, spec: str) -> bool:
        return is_deployment(spec)

    def open(self, spec, *, num_classes, input_shape, budget, device, **options):
        return open_deployment(spec, budget=budget, device=device)
