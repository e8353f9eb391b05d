"""Optimisers and learning-rate schedules for the training loop, without ``torch.optim``'s classes.

torch 2.13 wraps the methods of every ``torch.optim.Optimizer`` in ``torch._disable_dynamo``, which imports the
whole of ``torch._dynamo`` (with sympy) the first time one is called: 67 MB of resident memory that every embed
paid for a compiler it never uses, a sixth of the 400 MB an embed may take (benchmarks/README.md, "Performance").
The loop needs two optimisers and two schedules, a few lines each. These do exactly the arithmetic of
``torch.optim``'s single-tensor implementations (the ones torch picks on the CPU) and of its chainable schedulers,
so a training gives the same weights bit for bit (``tests/test_optim.py`` compares them step by step), and they
keep the same state-dict layout, so a checkpoint holds what it held before.

Parameters that have no gradient at a step are left alone and get no state, as in ``torch.optim``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..core.errors import InvalidArgument


class Optimizer:
    """One parameter group (``param_groups[0]``: its ``params`` and hyper-parameters, ``lr`` among them, which a
    schedule changes) and a state per parameter, updated by :meth:`_update` under ``torch.no_grad``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], defaults: dict[str, Any]) -> None:
        params = list(params)
        if not params:
            raise InvalidArgument("the optimiser got no parameters to train")
        if not defaults["lr"] > 0:
            raise InvalidArgument(f"lr must be positive, got {defaults['lr']}")
        self.param_groups: list[dict[str, Any]] = [{"params": params, **defaults}]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if set_to_none:
                    param.grad = None
                else:
                    param.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, param.grad, group, self.state.setdefault(param, {}))

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s layout: states keyed by the parameter's position, the group with positions for params."""
        params = self.param_groups[0]["params"]
        position = {id(param): i for i, param in enumerate(params)}
        hyper = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {
            "state": {position[id(p)]: dict(s) for p, s in self.state.items()},
            "param_groups": [{**hyper, "params": list(range(len(params)))}],
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        group, params = self.param_groups[0], self.param_groups[0]["params"]
        if [len(g["params"]) for g in saved["param_groups"]] != [len(params)]:
            raise InvalidArgument("the saved optimiser state is for a different set of parameters")
        group.update({k: v for k, v in saved["param_groups"][0].items() if k != "params"})
        self.state = {}
        for i, saved_state in saved["state"].items():
            param = params[int(i)]
            self.state[param] = {
                name: value.to(param.device, param.dtype) if torch.is_tensor(value) and name != "step" else value
                for name, value in saved_state.items()
            }


class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum and L2 weight decay, as ``torch.optim.SGD``."""

    def __init__(
        self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        if momentum < 0 or weight_decay < 0:
            raise InvalidArgument(f"momentum and weight_decay must be >= 0, got {momentum} and {weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        if group["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(group["momentum"]).add_(grad)
            grad = buf
        param.add_(grad, alpha=-group["lr"])


class Adam(Optimizer):
    """Adam (Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015) with L2 weight decay added to
    the gradient, as ``torch.optim.Adam``. Parameters: lr, betas (0.9, 0.999), eps (1e-8), weight_decay (0)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not all(0 <= b < 1 for b in betas) or eps < 0 or weight_decay < 0:
            raise InvalidArgument(
                f"Adam needs 0 <= betas < 1, eps >= 0, weight_decay >= 0; got {betas}, {eps}, {weight_decay}"
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = state["step"].item()
        step_size = group["lr"] / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
        param.addcdiv_(exp_avg, denom, value=-step_size)


class Schedule:
    """A learning rate changed after every epoch, from the optimiser's own ``lr`` (chainable, as torch's
    schedulers): ``"cosine"`` anneals it to 0 over ``epochs`` (``CosineAnnealingLR``, T_max = epochs), ``"step"``
    multiplies it by ``gamma`` every ``step_size`` epochs (``StepLR``)."""

    def __init__(self, optimizer: Optimizer, kind: str, *, epochs: int = 1, step_size: int = 10, gamma: float = 0.5):
        if kind not in ("cosine", "step"):
            raise InvalidArgument(f"unknown learning-rate schedule {kind!r}; choose cosine or step")
        if step_size < 1:
            raise InvalidArgument(f"step_size must be >= 1, got {step_size}")
        self.optimizer, self.kind = optimizer, kind
        self.t_max, self.step_size, self.gamma = max(1, epochs), step_size, gamma
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self._next(group["lr"])

    def _next(self, lr: float) -> float:
        epoch = self.last_epoch
        if self.kind == "step":
            return lr * self.gamma if epoch % self.step_size == 0 else lr
        if epoch > self.t_max:  # annealed to 0 at T_max, where the loop ends; it stays there
            return lr
        # torch's recursive form rather than the closed one, so that the rates round the same way
        return (1 + math.cos(math.pi * epoch / self.t_max)) / (1 + math.cos(math.pi * (epoch - 1) / self.t_max)) * lr

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.last_epoch = int(saved["last_epoch"])
