"""The interface of removal attacks: white-box laundering of a model the thief holds.

A removal attack takes a :class:`~copycatch.models.base.Classifier` and the thief's data
(``attacker_pool``: inputs, and labels only where the attack may use them) and returns
a new model. Every attack reports test accuracy before and after when test data are given.
Attacks chain: ``steal`` then any sequence of removals (see :func:`run_chain`).

Input-side evasions (``input_side = True``: Gaussian input noise, query rejection) leave the
weights alone and change how the thief's deployment answers queries; they live in
:mod:`.evasion`, come last in a chain, and travel in :attr:`RemovalResult.evasions`
(``result.oracle()`` is the deployment a verifier queries).

Helpers shared by the attacks: :func:`thief_targets` (the labels a fine-tuning attack trains
on: the data's own, or the model's predictions), :func:`hard_labels`, :func:`finetune_config`
and :func:`weight_layers`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ...core.errors import InvalidArgument
from ...core.params import Params as BaseParams
from ...core.params import parse_spec
from ...core.registry import Registry
from ...data.base import TensorData
from ...models.base import Classifier
from ...models.train import TrainConfig, accuracy, predict_logits
from .deployment import EvadingOracle


@dataclasses.dataclass
class RemovalResult:
    model: Classifier
    accuracy_before: float | None
    accuracy_after: float | None
    seconds: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    # input-side evasions the deployed model answers through, outermost first (see .evasion)
    evasions: list[Any] = dataclasses.field(default_factory=list)

    def oracle(self, **options: Any):
        """The thief's deployment as an :class:`~copycatch.oracles.base.Oracle`: the model behind its evasions."""
        return EvadingOracle(self.model, self.evasions, **options)


class RemovalAttack:
    """Base class: subclasses implement :meth:`apply` (which may modify its copy in place)."""

    name: ClassVar[str] = ""
    # True: changes how the deployed model answers queries, not its weights (see .evasion)
    input_side: ClassVar[bool] = False
    # the model modalities (data.base.MODALITIES) the attack's mechanism applies to: attacks that perturb, mix or
    # differentiate through the inputs are written for images; run() refuses any other
    modalities: ClassVar[tuple[str, ...]] = ("image",)

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "removal attack"

    def __init__(self, params: BaseParams | None = None, **kwargs: Any):
        self.params = params if params is not None else self.Params.from_dict(kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"

    def apply(
        self, model: Classifier, data: TensorData, *, train: TrainConfig, progress: bool | None = None
    ) -> dict[str, Any]:
        """Launder ``model`` in place; return details for the report."""
        raise NotImplementedError

    def run(
        self,
        model: Classifier,
        data: TensorData,
        *,
        test: TensorData | None = None,
        train: TrainConfig | None = None,
        progress: bool | None = None,
    ) -> RemovalResult:
        check_modality(self, model)
        start = time.perf_counter()
        work = copy.deepcopy(model)
        before = accuracy(model, test) if test is not None and len(test) else None
        info = self.apply(work, data, train=train or TrainConfig(), progress=progress) or {}
        work.eval()
        after = accuracy(work, test) if test is not None and len(test) else None
        work.provenance = {
            **model.provenance,
            "removals": [*model.provenance.get("removals", []), {"attack": self.name, "params": self.params.to_dict()}],
        }
        return RemovalResult(work, before, after, time.perf_counter() - start, info)


@dataclasses.dataclass(frozen=True)
class TrainingParams(RemovalAttack.Params):
    """Parameters every attack that trains shares: ``epochs`` and ``lr`` (None: the training configuration's)."""

    epochs: int | None = None
    lr: float | None = None

    def validate(self) -> None:
        if self.epochs is not None and self.epochs < 0:
            raise InvalidArgument(f"epochs must be >= 0, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise InvalidArgument(f"lr must be positive, got {self.lr}")


REMOVAL_ATTACKS: Registry[type[RemovalAttack]] = Registry("removal attack")


def register_removal(cls: type[RemovalAttack]) -> type[RemovalAttack]:
    REMOVAL_ATTACKS.register(cls.name)(cls)
    return cls


def list_removal_attacks(pattern: str = "*") -> list[str]:
    return REMOVAL_ATTACKS.list(pattern)


def create_removal_attack(name: str, **params: Any) -> RemovalAttack:
    return REMOVAL_ATTACKS.create(name, **params)


def resolve_removal(spec: str | RemovalAttack) -> RemovalAttack:
    """An attack object, or one built from a spec string ``"name:key=value,…"``."""
    if isinstance(spec, RemovalAttack):
        return spec
    if not isinstance(spec, str):
        raise InvalidArgument(f"not a removal attack or spec string: {spec!r}")
    name, kwargs = parse_spec(spec)
    return create_removal_attack(name, **kwargs)


def run_chain(
    model: Classifier,
    specs: Sequence[str | RemovalAttack],
    data: TensorData,
    *,
    test: TensorData | None = None,
    train: TrainConfig | None = None,
    progress: bool | None = None,
    evasions: Sequence[Any] = (),
) -> list[RemovalResult]:
    """Apply removals in order (``"prune:rate=0.5"``, ``"fine-tune:epochs=2"`` …); returns every step's result.

    Input-side evasions must follow every weight change (they are fitted to the model they guard);
    ``evasions`` are ones the model already answers through (e.g. read from a deployment file).
    Each result's ``evasions`` lists all evasions up to and including its step.
    """
    attacks = [resolve_removal(spec) for spec in specs]
    active = list(evasions)
    for i, attack in enumerate(attacks):
        if not attack.input_side and (active or any(a.input_side for a in attacks[:i])):
            guards = [a.name for a in active] or [a.name for a in attacks[:i] if a.input_side]
            raise InvalidArgument(
                f"removal {attack.name!r} changes the weights after the input-side evasion(s) "
                f"{', '.join(guards)}; apply weight removals first, evasions last"
            )
    results = []
    for attack in attacks:
        if attack.input_side:
            result = attack.run(model, data, test=test, train=train, progress=progress, prior=active)
            active = result.evasions
        else:
            result = attack.run(model, data, test=test, train=train, progress=progress)
        results.append(result)
        model = result.model
    return results


# ---------------------------------------------------------------------------------------------------------------------
# helpers shared by the attacks
# ---------------------------------------------------------------------------------------------------------------------

LabelSource = Literal["data", "self"]


def check_modality(attack: RemovalAttack, model: Classifier) -> None:
    """Refuse a model whose inputs the attack's mechanism does not apply to, naming the modality."""
    modality = getattr(model, "modality", "image")
    if modality not in attack.modalities:
        fitting = [n for n in REMOVAL_ATTACKS.list() if modality in REMOVAL_ATTACKS.get(n).factory.modalities]
        raise InvalidArgument(
            f"removal attack {attack.name!r} applies to {', '.join(attack.modalities)} models, not to this "
            f"{modality} model ({getattr(model, 'arch', type(model).__name__)!r}); removal attacks for {modality} "
            f"models: {', '.join(fitting) or 'none'}"
        )


def thief_targets(model: Classifier, data: TensorData, source: str) -> TensorData:
    """What a fine-tuning attack trains on: ``"data"`` keeps the data's labels (true labels, or the soft
    answers the oracle gave); ``"self"`` labels the inputs with the model's own predictions (no labels needed)."""
    if source == "data":
        return data
    if source == "self":
        # stored inputs, made float a batch at a time (by predict_logits, then by the training loop)
        return TensorData(data.stored, predict_logits(model, data.stored).argmax(1))
    raise InvalidArgument(f"label source must be 'data' or 'self', got {source!r}")


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices from labels or from an N×C matrix of soft targets."""
    return targets.argmax(1) if targets.dtype.is_floating_point and targets.ndim == 2 else targets.long()


def finetune_config(train: TrainConfig, *, epochs: int | None = None, lr: float | None = None) -> TrainConfig:
    """The training configuration with an attack's own ``epochs``/``lr`` (None keeps the configuration's)."""
    changes = {k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None}
    return train.replace(**changes) if changes else train


# Embedding tables and recurrent weights are left out: zeroing the smallest entries of an embedding deletes parts of
# words rather than connections, and its many small entries would take most of a global pruning budget
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_layers(model: nn.Module, kind: str = "all") -> list[tuple[str, nn.Module]]:
    """Named linear/convolution layers (``kind``: ``all``, ``linear`` or ``conv``) in registration order."""
    if kind not in ("all", "linear", "conv"):
        raise InvalidArgument(f"layer kind must be all, linear or conv, got {kind!r}")
    wanted = {"all": WEIGHT_LAYERS, "linear": (nn.Linear,), "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d)}[kind]
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, wanted)]
    if not layers:
        raise InvalidArgument(f"the model has no {kind} layers to attack")
    return layers
