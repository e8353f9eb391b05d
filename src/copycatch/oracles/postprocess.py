"""Output post-processors that compose around any oracle.

A post-processor maps a batch of answers (N×C probabilities) to another batch,
row by row: the answer for an input never depends on which other inputs share
its batch (tests check batch output equals per-example output; ART's ClassLabels
got this wrong). Spec strings name one with its parameters: ``"top-k:k=3"``,
``"round:decimals=2"``, ``"quantize:levels=10"``, ``"hard-label"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from ..core.errors import InvalidArgument
from ..core.params import Params as BaseParams
from ..core.params import parse_spec
from ..core.registry import Registry


class PostProcessor:
    """Base: ``__call__(probs, inputs) -> probs``; ``Params`` declares the parameters."""

    name: ClassVar[str] = ""
    output_kind: ClassVar[str] = "probs"

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        pass

    def __init__(self, params: BaseParams | None = None, **kwargs: Any):
        self.params = params if params is not None else self.Params.from_dict(kwargs)

    def __call__(self, probs: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def spec(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.to_dict().items())
        return f"{self.name}:{args}" if args else self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()})"


POSTPROCESSORS: Registry[type[PostProcessor]] = Registry("post-processor")


def register_postprocessor(cls: type[PostProcessor]) -> type[PostProcessor]:
    POSTPROCESSORS.register(cls.name)(cls)
    return cls


def list_postprocessors(pattern: str = "*") -> list[str]:
    return POSTPROCESSORS.list(pattern)


def create_postprocessor(name: str, **kwargs: Any) -> PostProcessor:
    return POSTPROCESSORS.create(name, **kwargs)


def resolve(p: PostProcessor | str) -> Any:
    """A post-processor object, or one built from a spec string."""
    if isinstance(p, str):
        name, kwargs = parse_spec(p)
        return create_postprocessor(name, **kwargs)
    if not callable(p):
        raise InvalidArgument(f"not a post-processor: {p!r}")
    return p


@register_postprocessor
class TopK(PostProcessor):
    """Keep the k largest probabilities, zero the rest (optionally renormalise)."""

    name = "top-k"

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        k: int = 1
        renormalize: bool = False

        def validate(self) -> None:
            if self.k < 1:
                raise InvalidArgument(f"top-k needs k >= 1, got k={self.k}")

    def __call__(self, probs, inputs=None):
        k = min(self.params.k, probs.shape[1])
        values, index = probs.topk(k, dim=1)
        out = torch.zeros_like(probs).scatter_(1, index, values)
        if self.params.renormalize:
            out = out / out.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return out


@register_postprocessor
class HardLabel(PostProcessor):
    """Answer only the predicted class, as a one-hot row."""

    name = "hard-label"
    output_kind = "labels"

    def __call__(self, probs, inputs=None):
        return torch.nn.functional.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)


@register_postprocessor
class Round(PostProcessor):
    """Round every probability to a number of decimals (Tramèr et al.'s rounding defence)."""

    name = "round"

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        decimals: int = 2

        def validate(self) -> None:
            if not 0 <= self.decimals <= 8:
                raise InvalidArgument(f"round needs 0 <= decimals <= 8, got decimals={self.decimals}")

    def __call__(self, probs, inputs=None):
        return torch.round(probs.double(), decimals=self.params.decimals).to(probs.dtype)


@register_postprocessor
class Quantize(PostProcessor):
    """Quantise every probability to one of k evenly spaced levels {0, 1/(k-1), …, 1}.

    The feature-sharing paper's quantisation attack sweeps k from 1000 down to 2.
    """

    name = "quantize"

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        levels: int = 10

        def validate(self) -> None:
            if self.levels < 2:
                raise InvalidArgument(f"quantize needs levels >= 2, got levels={self.levels}")

    def __call__(self, probs, inputs=None):
        steps = self.params.levels - 1
        return (torch.round(probs.double().clamp(0, 1) * steps) / steps).to(probs.dtype)
