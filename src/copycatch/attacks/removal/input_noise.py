"""Input-side evasion: add Gaussian noise to every query before the model sees it.

Paper: MEA-Defender (Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024),
Appendix E "Input Preprocessing" (after Adi et al.'s input-preprocessing attack, ref. [28]): zero-mean Gaussian
noise on the whole input, its standard deviation tuned so the main task loses little accuracy. A watermark whose
triggers sit on a knife's edge (e.g. adversarial key inputs) may no longer be recognised.

This is a deployment change, not a weight change (see :mod:`.evasion`): ``wrap(model)`` gives the
oracle a verifier would face; ``copycatch remove --attack noise:sigma=0.1`` writes the model plus a
deployment file.

Parameters (defaults):
    sigma (0.1): standard deviation of the noise, on the [0, 1] input scale.
    clip (true): clip noisy inputs back to [0, 1] (a real pipeline feeds valid images).
    seed (0): seed of the noise generator of each fresh oracle (answers are reproducible).

Deviations: the paper does not give its σ; 0.1 costs little accuracy (measured: benchmarks/README.md).
Noise is drawn afresh for every query (a repeated query gets a different draw), as a deployed
preprocessing step would.
"""

from __future__ import annotations

import dataclasses

import torch

from ...core.errors import InvalidArgument
from .base import register_removal
from .evasion import AnswerFn, EvadingOracle, InputEvasion


@register_removal
class GaussianInputNoise(InputEvasion):
    """Input-side evasion: answer every query on a copy blurred by Gaussian noise (sigma on the [0,1] scale)."""

    name = "noise"

    @dataclasses.dataclass(frozen=True)
    class Params(InputEvasion.Params):
        sigma: float = 0.1
        clip: bool = True
        seed: int = 0

        def validate(self) -> None:
            if not 0 <= self.sigma <= 10:
                raise InvalidArgument(f"noise sigma must be in [0, 10], got sigma={self.sigma}")
            if self.seed < 0:
                raise InvalidArgument(f"seed must be >= 0, got {self.seed}")

    def apply(self, model, data, *, train, progress=None):
        return {"summary": f"queries answered on inputs + N(0, {self.params.sigma:g}²)"}

    def respond(self, oracle: EvadingOracle, index: int, x: torch.Tensor, answer: AnswerFn) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=oracle.generators[index], dtype=x.dtype)
        noisy = x + self.params.sigma * noise
        if self.params.clip:
            noisy = noisy.clamp(0.0, 1.0)
        return answer(noisy)
