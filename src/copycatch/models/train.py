"""The training loop every model in copycatch goes through.

Seeded, device-aware, with a progress bar, per-epoch evaluation and optional early
stopping. Schemes do not copy the loop: they pass :class:`TrainHook` objects whose
``extra_loss`` adds a term to each step's loss (the margin scheme's trigger loss,
MEA-Defender's composite losses), whose ``after_backward`` backpropagates a batch of
their own after the step's (EWE's watermark batch) and whose ``on_epoch_end`` can stop
training. The optimisers are :mod:`copycatch.models.optim`'s.

Data stay in memory as tensors (image pixels as uint8) and are indexed by a seeded
permutation; each batch is converted to float32 as it is formed, so the whole set never
exists as floats. There is no DataLoader, which keeps the loop within a few percent of a
bare PyTorch loop.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint import active as active_checkpoint
from ..core.checkpoint import pack_state, rng_states, set_rng_states, unpack_state
from ..core.errors import InvalidArgument
from ..core.params import Params
from ..core.runtime import progress as progress_bar
from ..core.runtime import resolve_device
from ..data.base import Splits, TensorData, to_float
from .base import Classifier, create_for
from .optim import SGD, Adam, Optimizer, Schedule

# Inputs per forward pass when only predicting. 1,024 Fashion-MNIST images through cnn-small's first convolution
# alone take ~100 MB of activations (a third of an embed's peak memory); 256 costs no measurable throughput on CPU.
EVAL_BATCH = 256


@dataclasses.dataclass(frozen=True)
class TrainConfig(Params):
    """How to train: optimiser, schedule, epochs, seed, device.

    Defaults (Adam 1e-3, batch 128, 10 epochs) suit the small Fashion-MNIST nets
    on a CPU. ``patience`` > 0 turns on early stopping on validation accuracy
    (the best weights are restored).
    """

    kind = "training"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = 10
    gamma: float = 0.5
    patience: int = 0
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = EVAL_BATCH

    def validate(self) -> None:
        if self.epochs < 0:
            raise InvalidArgument(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InvalidArgument(f"lr must be positive, got {self.lr}")
        if self.patience < 0:
            raise InvalidArgument(f"patience must be >= 0, got {self.patience}")
        if self.seed < 0:
            raise InvalidArgument(f"seed must be >= 0, got {self.seed}")


@dataclasses.dataclass
class TrainState:
    """What hooks see: the model, optimiser and position in training."""

    model: nn.Module
    optimizer: Optimizer
    config: TrainConfig
    device: torch.device
    generator: torch.Generator
    epoch: int = 0
    step: int = 0
    stop: bool = False
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    logs: dict[str, float] = dataclasses.field(default_factory=dict)


class TrainHook:
    """Extend the loop without copying it. Every method is optional.

    A hook whose attributes change while it trains (generators, running perturbations, counters, logs) names them
    in ``state_attrs``: a resumable run saves them after every epoch and, on resume, restores them after
    ``on_start`` has rebuilt everything else (:mod:`copycatch.core.checkpoint`).
    """

    state_attrs: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        """The ``state_attrs`` attributes as plain data: what a checkpoint saves."""
        return {name: pack_state(getattr(self, name)) for name in self.state_attrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (called after ``on_start``)."""
        for name, value in state.items():
            setattr(self, name, unpack_state(value, getattr(self, name, None)))

    def on_start(self, state: TrainState) -> None:
        pass

    def extra_loss(
        self, state: TrainState, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor | None:
        """Return the step's total loss given the base ``loss`` (or None to keep it)."""
        return None

    def after_backward(self, state: TrainState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """After the step's loss is backpropagated, before the optimiser steps: backpropagate a loss of the hook's
        own here (the gradients add up) and return its value, detached, for the epoch's mean loss; or None. Unlike
        :meth:`extra_loss`, the step's graph is freed before this one is built, so the two never take memory
        together."""
        return None

    def on_step_end(self, state: TrainState) -> None:
        """After each optimiser step; setting ``state.stop`` ends training at once, mid-epoch."""

    def on_epoch_end(self, state: TrainState) -> None:
        pass


@dataclasses.dataclass
class TrainResult:
    history: list[dict[str, Any]]
    epochs_run: int
    best_epoch: int | None
    seconds: float
    stopped_early: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ softmax(logits)) up to a constant: the soft-label extraction loss."""
    return F.kl_div(F.log_softmax(logits, dim=1), target_probs, reduction="batchmean")


def default_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.dtype.is_floating_point:
        return soft_cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets)


def make_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> Optimizer:
    """The configured optimiser (:mod:`copycatch.models.optim`: torch.optim's arithmetic without its dynamo import)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise InvalidArgument("nothing to train: every parameter is frozen")
    if config.optimizer == "adam":
        return Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _scheduler(optimizer: Optimizer, config: TrainConfig) -> Schedule | None:
    if config.schedule == "constant":
        return None
    return Schedule(optimizer, config.schedule, epochs=config.epochs, step_size=config.step_size, gamma=config.gamma)


def fit(
    model: nn.Module,
    data: TensorData,
    config: TrainConfig | None = None,
    *,
    val: TensorData | None = None,
    hooks: Sequence[TrainHook] = (),
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    progress: bool | None = None,
    desc: str = "train",
    checkpoint: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``data`` (labels, or soft targets for distillation).

    Inside a resumable run (:mod:`copycatch.core.checkpoint`) the call is the run's next training stage: its state is
    saved after every epoch, and a resumed run continues it from the last saved epoch (a finished stage is restored
    whole, without training). ``checkpoint=False`` leaves out a short stage that costs less to train again than to
    save: on resume it simply runs again, from the same weights and seed.
    """
    config = config or TrainConfig()
    if len(data) == 0:
        raise InvalidArgument("cannot train on an empty data set")
    device = resolve_device(config.device)
    model.to(device)
    loss_fn = loss_fn or default_loss
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout and weight noise inside the step
    optimizer = make_optimizer(parameters if parameters is not None else model.parameters(), config)
    scheduler = _scheduler(optimizer, config)
    state = TrainState(model, optimizer, config, device, generator)
    on_device = data.to(device)  # inputs in their stored type (uint8 pixels stay bytes)
    for hook in hooks:
        hook.on_start(state)
    best = _EarlyStopping(config.patience)
    stopped_early = False
    start = time.perf_counter()
    run = active_checkpoint() if checkpoint else None
    what = {"desc": desc, "examples": len(data), "config": config.to_dict(), "hooks": [type(h).__name__ for h in hooks]}
    stage, saved = run.next_stage(what) if run is not None else (0, None)
    if saved is not None and saved["done"]:
        return _restore_finished(saved, state, hooks)
    if saved is not None:
        _restore_epoch(saved, state, scheduler, hooks, best)
        start -= saved["seconds"]
    steps = config.epochs * ((len(data) + config.batch_size - 1) // config.batch_size)
    bar_iter = iter(progress_bar(range(steps), total=steps, desc=desc, enabled=progress, unit="step"))
    for _ in range(state.step):  # a resumed stage's bar starts where the saved one was
        next(bar_iter, None)
    for epoch in range(len(state.history), config.epochs):
        state.epoch = epoch
        epoch_start = time.perf_counter()
        mean_loss = _train_epoch(state, on_device, hooks, loss_fn, bar_iter)
        if scheduler is not None:
            scheduler.step()
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": mean_loss, "seconds": time.perf_counter() - epoch_start}
        if val is not None and len(val):
            record["val_accuracy"] = accuracy(model, val, batch_size=config.eval_batch_size, device=device)
        state.logs = record
        for hook in hooks:
            hook.on_epoch_end(state)
        state.history.append(record)
        if val is not None and config.patience > 0 and best.out_of_patience(record["val_accuracy"], epoch + 1, model):
            stopped_early = True
        stopped_early = stopped_early or state.stop
        if stopped_early:
            break
        if run is not None and epoch + 1 < config.epochs:  # the last epoch's state is the finished stage, saved below
            run.save_stage(stage, _epoch_record(what, state, scheduler, hooks, best, time.perf_counter() - start))
    for _ in bar_iter:  # drain so the bar closes cleanly after an early stop
        pass
    if best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    result = TrainResult(state.history, len(state.history), best.epoch, time.perf_counter() - start, stopped_early)
    if run is not None:
        run.save_stage(stage, _finished_record(what, state, hooks, result))
    return result


def _epoch_record(
    what: dict[str, Any],
    state: TrainState,
    scheduler: Any,
    hooks: Sequence[TrainHook],
    best: _EarlyStopping,
    seconds: float,
) -> dict[str, Any]:
    """Everything a stage needs to continue after its last finished epoch, as plain data (CPU copies)."""
    return {
        "what": what,
        "done": False,
        "epoch": len(state.history),
        "step": state.step,
        "seconds": seconds,
        "model": pack_state(state.model.state_dict()),
        "optimizer": pack_state(state.optimizer.state_dict()),
        "scheduler": pack_state(scheduler.state_dict()) if scheduler is not None else None,
        "generator": state.generator.get_state(),
        "rng": rng_states(),
        "hooks": [hook.state_dict() for hook in hooks],
        "history": pack_state(state.history),
        "best": pack_state(vars(best)),
    }


def _finished_record(
    what: dict[str, Any], state: TrainState, hooks: Sequence[TrainHook], result: TrainResult
) -> dict[str, Any]:
    """A finished stage: its final weights, the random and hook states it ended with, and its result."""
    return {
        "what": what,
        "done": True,
        "epoch": result.epochs_run,
        "model": pack_state(state.model.state_dict()),
        "rng": rng_states(),
        "hooks": [hook.state_dict() for hook in hooks],
        "result": pack_state(result.to_dict()),
    }


def _restore_epoch(
    saved: dict[str, Any], state: TrainState, scheduler: Any, hooks: Sequence[TrainHook], best: _EarlyStopping
) -> None:
    """Put a stage back where :func:`_epoch_record` saved it (a stage that stopped was saved as finished)."""
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    state.generator.set_state(saved["generator"])
    set_rng_states(saved["rng"])
    for hook, hook_state in zip(hooks, saved["hooks"]):
        hook.load_state_dict(hook_state)
    state.step = saved["step"]
    state.history = unpack_state(saved["history"])
    for name, value in unpack_state(saved["best"]).items():
        setattr(best, name, value)


def _restore_finished(saved: dict[str, Any], state: TrainState, hooks: Sequence[TrainHook]) -> TrainResult:
    """A finished stage as it ended, without training: weights, hook states, random states, result."""
    state.model.load_state_dict(saved["model"])
    for hook, hook_state in zip(hooks, saved["hooks"]):
        hook.load_state_dict(hook_state)
    set_rng_states(saved["rng"])
    state.model.eval()
    return TrainResult(**unpack_state(saved["result"]))


def _train_epoch(
    state: TrainState,
    data: TensorData,
    hooks: Sequence[TrainHook],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    bar_iter: Iterator[Any],
) -> float:
    """One pass over the data in a seeded random order (or up to a hook's stop); returns the mean loss. Each
    batch is made float32 from the stored inputs here, a batch at a time."""
    model, optimizer, batch_size = state.model, state.optimizer, state.config.batch_size
    model.train()
    n = len(data)
    order = torch.randperm(n, generator=state.generator).to(state.device)
    total_loss, seen = 0.0, 0
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        x, y = data.batch(idx)
        logits = model(x)
        loss = loss_fn(logits, y)
        for hook in hooks:
            replaced = hook.extra_loss(state, x, y, logits, loss)
            if replaced is not None:
                loss = replaced
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss = loss.detach()
        for hook in hooks:
            added = hook.after_backward(state, x, y)
            if added is not None:
                loss = loss + added
        optimizer.step()
        state.step += 1
        total_loss += loss * len(idx)
        seen += len(idx)
        next(bar_iter, None)
        for hook in hooks:
            hook.on_step_end(state)
        if state.stop:
            break
    return float(total_loss) / max(seen, 1)


@dataclasses.dataclass
class _EarlyStopping:
    """Early stopping on validation accuracy: the best epoch's weights, and how long since any epoch beat it."""

    patience: int
    best_acc: float = -1.0
    epoch: int | None = None
    state: dict[str, Any] | None = None
    waited: int = 0

    def out_of_patience(self, acc: float, epoch: int, model: nn.Module) -> bool:
        """Record this epoch's accuracy; True once ``patience`` epochs in a row have not beaten the best."""
        if acc > self.best_acc:
            self.best_acc, self.epoch, self.waited = acc, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return False
        self.waited += 1
        return self.waited >= self.patience


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = EVAL_BATCH, device: str | torch.device | None = None
) -> torch.Tensor:
    """Logits for ``x`` in eval mode, batched, returned on the CPU. ``x`` is float inputs, or uint8 pixels
    (``TensorData.stored``), made float a batch at a time."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs = [model(to_float(x[i : i + batch_size].to(device))).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(
    model: nn.Module, data: TensorData, *, batch_size: int = EVAL_BATCH, device: str | torch.device | None = None
) -> float:
    if len(data) == 0:
        return float("nan")
    pred = predict_logits(model, data.stored, batch_size=batch_size, device=device).argmax(1)
    return (pred == data.y.cpu()).float().mean().item()


def agreement(model_a: nn.Module, model_b: nn.Module, x: torch.Tensor, *, batch_size: int = EVAL_BATCH) -> float:
    """Share of inputs on which two models predict the same class (fidelity)."""
    a = predict_logits(model_a, x, batch_size=batch_size).argmax(1)
    b = predict_logits(model_b, x, batch_size=batch_size).argmax(1)
    return (a == b).float().mean().item()


TRAINABLE_PARTS = ("owner_train", "attacker_pool", "owner_holdout")


def train_model(
    arch: str,
    splits: Splits,
    *,
    on: str = "owner_train",
    config: TrainConfig | None = None,
    progress: bool | None = None,
    **arch_kwargs: Any,
) -> Classifier:
    """Train ``arch`` with true labels on one part of the split: ``owner_train`` (the owner's clean model),
    ``attacker_pool`` (an innocent model on the thief's data) or ``owner_holdout``."""
    if on not in TRAINABLE_PARTS:
        raise InvalidArgument(f"cannot train on {on!r}; use {', '.join(TRAINABLE_PARTS)}")
    config = config or TrainConfig()
    model = create_for(arch, splits, seed=config.seed, **arch_kwargs)
    # Early stopping never looks at the test split (its accuracy is what gets reported): it watches the owner's
    # holdout, disjoint from both training parts, or owner_train when the holdout itself is trained on.
    val = (splits.owner_train if on == "owner_holdout" else splits.owner_holdout) if config.patience else None
    result = fit(model, getattr(splits, on), config, val=val, progress=progress, desc=f"train {arch}")
    model.provenance.update(
        {
            **splits.provenance(),
            "trained_on": on,
            "train": config.to_dict(),
            "epochs_run": result.epochs_run,
            "train_seconds": round(result.seconds, 2),
        }
    )
    return model
