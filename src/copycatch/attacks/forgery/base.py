"""The interface of forged-key attacks, and what they share.

A forged-key (ownership-ambiguity) attack builds, *after* seeing a model, a key that makes the model look
watermarked: a key of an existing scheme's format that ``copycatch verify`` accepts and that yields a tiny p-value
for a model the forger never trained. The attack class is the "ambiguity attack" of Fan, Ng and Chan, "Rethinking
Deep Neural Network Ownership Verification: Embedding Passports to Defeat Ambiguity Attacks", NeurIPS 2019: a
counterfeit watermark found for a given model casts doubt on every ownership claim. Each p-value is exact under its
scheme's null only if the key was fixed independently of the suspect; a forged key is a function of the suspect,
which is what :mod:`copycatch.core.commitment` lets a third party rule out.

Every attack is a function ``forge(target, data, *, …, seed=0) -> Key`` registered in :data:`FORGERIES` (one file
per attack): ``target`` is the model to make look watermarked (a :class:`~copycatch.models.base.Classifier`, or an
:class:`~copycatch.oracles.base.Oracle` for the black-box attacks), ``data`` the forger's own labelled inputs
(never the owner's). Bad parameter values raise :class:`~copycatch.core.errors.InvalidArgument` (a ValueError)
naming the value. The key's metadata describes the target (classes, input shape and, for a model, its weights
digest: the forger claims the target as their own model), like a key ``embed`` writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...core.errors import InvalidArgument
from ...core.key import Key
from ...core.registry import Registry
from ...data.base import TensorData
from ...models.adversarial import pgd
from ...models.base import Classifier
from ...models.io import weights_digest
from ...models.train import predict_logits
from ...oracles.base import Oracle, query_all

Forgery = Callable[..., Key]
FORGERIES: Registry[Forgery] = Registry("forgery attack")


def register_forgery(name: str) -> Callable[[Forgery], Forgery]:
    """Register a forgery function under ``name`` (its docstring's first line is its summary)."""
    return FORGERIES.register(name)


def list_forgeries(pattern: str = "*") -> list[str]:
    return FORGERIES.list(pattern)


def forge(name: str, target: Classifier | Oracle, data: TensorData, **params: Any) -> Key:
    """Run the forgery ``name`` against ``target`` with the forger's ``data``."""
    return FORGERIES.get(name).factory(target, data, **params)


# -- helpers shared by the attacks -------------------------------------------------------------------------------
def predicted_labels(target: Classifier | Oracle, x: torch.Tensor) -> torch.Tensor:
    """The target's labels for ``x`` (a model's argmax, or the oracle's answers' argmax)."""
    if isinstance(target, Classifier):
        return predict_logits(target, x).argmax(1).cpu()
    if isinstance(target, Oracle):
        return query_all(target, x, desc="forge").argmax(1).cpu()
    raise InvalidArgument(f"target must be a copycatch model or an oracle, got {type(target).__name__}")


def white_box(target: Classifier | Oracle, attack: str) -> Classifier:
    """The target as a model, for attacks that need its gradients."""
    if not isinstance(target, Classifier):
        raise InvalidArgument(
            f"the {attack} forgery needs the target's gradients (a copycatch model), got {type(target).__name__}"
        )
    return target


def quantised(x: torch.Tensor) -> torch.Tensor:
    """``x`` on [0, 1] as the uint8 a key stores."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def check_data(data: TensorData, num_classes: int) -> None:
    if not isinstance(data, TensorData) or not len(data):
        raise InvalidArgument(f"data must be labelled inputs (a non-empty TensorData), got {data!r:.80}")
    low, high = int(data.y.min()), int(data.y.max())
    if high >= num_classes or low < 0:
        raise InvalidArgument(f"data labels must lie in 0..{num_classes - 1}, got {low}..{high}")


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise InvalidArgument(f"{name} must be > 0, got {name}={value!r}")


def target_meta(target: Classifier | Oracle) -> dict[str, Any]:
    """A key's metadata for ``target``: what ``verify`` checks (classes, input shape) and, for a model, its weights
    digest, as a key ``embed`` writes for its victim."""
    meta: dict[str, Any] = {"num_classes": int(target.num_classes)}
    if target.input_shape is not None:
        meta["input_shape"] = list(target.input_shape)
    if isinstance(target, Classifier):
        meta.update(arch=target.arch, victim_sha256=weights_digest(target))
    return meta


def targeted_adversaries(
    model: Classifier,
    data: TensorData,
    count: int,
    generator: torch.Generator,
    *,
    eps: float,
    steps: int,
    step_size: float,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` targeted adversarial examples of ``model``: (inputs as uint8, true labels, adversarial classes).

    Inputs the model classifies correctly, taken in a random order, each get an adversarial class drawn uniformly
    from the other classes and an L∞ PGD of ``steps`` steps of ``step_size`` within ``eps`` towards it
    (:func:`copycatch.models.adversarial.pgd`, targeted); an example counts once the model, asked about its uint8
    quantisation (what the key stores), answers the adversarial class."""
    check_positive(eps=eps, step_size=step_size, steps=steps)
    c = model.num_classes
    order = torch.randperm(len(data), generator=generator)
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    have = tried = 0
    for start in range(0, len(order), chunk):
        x, y = data.batch(order[start : start + chunk])
        right = predict_logits(model, x).argmax(1).cpu() == y
        x, y = x[right], y[right]
        goal = (y + torch.randint(1, c, (len(y),), generator=generator)) % c
        tried += len(y)
        x_u8 = quantised(pgd(model, x, eps, step_size, steps, y=goal, targeted=True))
        hit = predict_logits(model, x_u8.float() / 255).argmax(1).cpu() == goal
        found.append((x_u8[hit], y[hit], goal[hit]))
        have += int(hit.sum())
        if have >= count:
            break
    if have < count:
        raise InvalidArgument(
            f"eps={eps} turned {have} of {tried} correctly classified inputs into targeted adversarial examples, "
            f"fewer than the {count} needed: raise eps or steps, or give more data"
        )
    x_u8, y, goal = (torch.cat(parts)[:count] for parts in zip(*found))
    return x_u8, y, goal
