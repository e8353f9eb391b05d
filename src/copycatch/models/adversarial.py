"""FGSM and PGD as pure functions, in the shape of cleverhans v4.

``model_fn`` is any callable returning logits. With ``y=None`` the model's own
predictions are used as labels, which avoids label leaking (Kurakin et al., 2016).
``targeted=True`` *descends* the loss of ``y`` (moves towards ``y``); otherwise the
loss of ``y`` is *ascended* (moves away from ``y``; with ``y`` a watermark label this
is the margin scheme's worst case).

Only the L∞ norm is implemented: it is what every scheme here uses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.errors import InvalidArgument

ModelFn = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_common(eps: float, clip: tuple[float, float] | None) -> None:
    if not isinstance(eps, (int, float)) or eps < 0:
        raise InvalidArgument(f"eps must be a non-negative number, got eps={eps!r}")
    if clip is not None:
        lo, hi = clip
        if lo > hi:
            raise InvalidArgument(f"clip range must have min <= max, got clip=({lo}, {hi})")


def _labels(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    if y is not None:
        if len(y) != len(x):
            raise InvalidArgument(f"y has {len(y)} labels for {len(x)} inputs")
        return y
    with torch.no_grad():
        return model_fn(x).argmax(dim=1)


def _signed_gradient(
    model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, targeted: bool, loss_fn: LossFn
) -> torch.Tensor:
    with torch.enable_grad():  # callers may sit inside torch.no_grad()
        x = x.detach().clone().requires_grad_(True)
        loss = loss_fn(model_fn(x), y)
        if targeted:
            loss = -loss
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


def fgsm(
    model_fn: ModelFn,
    x: torch.Tensor,
    eps: float,
    *,
    y: torch.Tensor | None = None,
    targeted: bool = False,
    clip: tuple[float, float] | None = (0.0, 1.0),
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al., 2015), L∞.

    :param model_fn: callable mapping inputs to logits.
    :param x: input batch.
    :param eps: L∞ size of the step (>= 0).
    :param y: labels; defaults to the model's predictions.
    :param targeted: step towards ``y`` instead of away from it.
    :param clip: (min, max) of valid inputs, or None for no clipping.
    :param loss_fn: defaults to cross-entropy.
    :return: the adversarial batch, detached.
    """
    _check_common(eps, clip)
    loss_fn = loss_fn or F.cross_entropy
    y = _labels(model_fn, x, y)
    x_adv = x.detach() + eps * _signed_gradient(model_fn, x, y, targeted, loss_fn)
    if clip is not None:
        x_adv = x_adv.clamp(*clip)
    return x_adv.detach()


def pgd(
    model_fn: ModelFn,
    x: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    *,
    y: torch.Tensor | None = None,
    targeted: bool = False,
    clip: tuple[float, float] | None = (0.0, 1.0),
    rand_init: bool = False,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al., 2018), L∞.

    :param eps: radius of the L∞ ball around ``x``.
    :param step_size: size of each signed-gradient step (> 0).
    :param steps: number of steps (>= 1).
    :param rand_init: start from a uniform point in the ball instead of ``x``.
    :param generator: torch generator for ``rand_init``.
    Other parameters as in :func:`fgsm`. The result stays within ``eps`` of ``x`` and inside ``clip``.
    """
    _check_common(eps, clip)
    if not isinstance(steps, int) or steps < 1:
        raise InvalidArgument(f"steps must be a positive integer, got steps={steps!r}")
    if not step_size > 0:
        raise InvalidArgument(f"step_size must be positive, got step_size={step_size!r}")
    loss_fn = loss_fn or F.cross_entropy
    x = x.detach()
    y = _labels(model_fn, x, y)
    if rand_init:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        x_adv = x + eps * noise
    else:
        x_adv = x.clone()
    if clip is not None:
        x_adv = x_adv.clamp(*clip)
    for _ in range(steps):
        x_adv = x_adv + step_size * _signed_gradient(model_fn, x_adv, y, targeted, loss_fn)
        x_adv = x + (x_adv - x).clamp(-eps, eps)
        if clip is not None:
            x_adv = x_adv.clamp(*clip)
    return x_adv.detach()
