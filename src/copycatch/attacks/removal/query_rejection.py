"""Input-side evasion: an outlier detector spots suspicious queries and answers them with a random label.

Papers: MEA-Defender (Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024),
Appendix E "Anomaly Detection": the thief detects abnormal inputs with the Local Outlier Factor (Breunig et al.,
SIGMOD 2000) and "treats them as watermark inputs by returning random labels". The second detector is the energy
score of Liu et al. (NeurIPS 2020, "Energy-based Out-of-distribution Detection"): E(x) = −T·logsumexp(f(x)/T);
in-distribution inputs have low energy.

Fitting (white-box, on the thief's own data): the detector scores the thief's in-distribution
inputs and the threshold is set so that a share ``fpr`` of them would be rejected (Liu et al.
threshold at 95 % true-positive rate, i.e. ``fpr`` = 0.05). For LOF the data are split: up to
``reference`` inputs fit the detector (their penultimate features, ``Classifier.features``), the
rest calibrate the threshold, because LOF scores its own fitting points optimistically.

Answering: a query whose score crosses the threshold gets a one-hot row of a class drawn
uniformly at random (it may coincide with the model's answer); every other query gets the
model's answer. The test report gives the share of test inputs rejected (≈ ``fpr``).

Parameters (defaults):
    detector ("lof"): "lof" (scikit-learn LocalOutlierFactor, novelty=True, on penultimate
        features) or "energy" (on the logits).
    fpr (0.05): share of the thief's in-distribution data rejected; sets the threshold.
    n_neighbors (20): LOF's k (scikit-learn's default).
    reference (1000): at most this many inputs fit LOF (their features are stored in the
        deployment file); up to as many more calibrate the threshold.
    temperature (1.0): T of the energy score (Liu et al.: 1).
    seed (0): seeds the reference/calibration split and the random labels.

Deviations: MEA-Defender does not say which representation LOF sees; we use the model's
penultimate features (what the thief's own model knows about an input). Liu et al. also
fine-tune with an energy margin loss; we use the score of the model as it is (their
"pre-trained" setting).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch

from ...core.errors import CopycatchError, InvalidArgument
from ...data.base import TensorData
from ...models.base import Classifier
from ...models.train import predict_logits
from .base import register_removal
from .evasion import AnswerFn, EvadingOracle, InputEvasion


def _local_outlier_factor(n_neighbors: int):
    try:
        from sklearn.neighbors import LocalOutlierFactor
    except ImportError:
        raise CopycatchError(
            "query rejection with detector=lof needs scikit-learn (pip install scikit-learn), or use detector=energy"
        ) from None
    return LocalOutlierFactor(n_neighbors=n_neighbors, novelty=True)


@register_removal
class QueryRejection(InputEvasion):
    """Input-side evasion: an outlier detector (LOF or energy score) answers suspicious queries with a random label."""

    name = "reject"
    needs_model = True

    @dataclasses.dataclass(frozen=True)
    class Params(InputEvasion.Params):
        detector: Literal["lof", "energy"] = "lof"
        fpr: float = 0.05
        n_neighbors: int = 20
        reference: int = 1000
        temperature: float = 1.0
        seed: int = 0

        def validate(self) -> None:
            if not 0.0 <= self.fpr < 1.0:
                raise InvalidArgument(f"fpr must be in [0, 1), got fpr={self.fpr}")
            if self.n_neighbors < 1:
                raise InvalidArgument(f"n_neighbors must be >= 1, got {self.n_neighbors}")
            if self.reference < 2:
                raise InvalidArgument(f"reference must be >= 2, got {self.reference}")
            if not self.temperature > 0:
                raise InvalidArgument(f"temperature must be positive, got {self.temperature}")
            if self.seed < 0:
                raise InvalidArgument(f"seed must be >= 0, got {self.seed}")

    def __init__(self, params=None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.threshold: float | None = None
        self.reference_features: torch.Tensor | None = None
        self._lof: Any = None

    def __deepcopy__(self, memo: dict) -> QueryRejection:
        # the fitted scikit-learn object is rebuilt from the stored features rather than copied
        twin = type(self)(self.params)
        twin.fitted_to, twin.threshold = self.fitted_to, self.threshold
        twin.reference_features = None if self.reference_features is None else self.reference_features.clone()
        return twin

    # -- scores: higher = more suspicious ----------------------------------------------------------------------------
    def _lof_model(self):
        if self._lof is None:
            if self.reference_features is None:
                raise InvalidArgument("the LOF detector is not fitted; run the attack on the model first")
            self._lof = _local_outlier_factor(min(self.params.n_neighbors, len(self.reference_features) - 1))
            self._lof.fit(self.reference_features.double().numpy())
        return self._lof

    def _scores_from(self, features: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        if self.params.detector == "energy":
            t = self.params.temperature
            return -t * torch.logsumexp(logits / t, dim=1)  # energy: high for out-of-distribution
        # scikit-learn's score_samples is −LOF (low for outliers); negate so that high = suspicious
        return -torch.from_numpy(self._lof_model().score_samples(features.double().numpy())).float()

    def scores(self, model: Classifier, x: torch.Tensor) -> torch.Tensor:
        if self.params.detector == "energy":
            return self._scores_from(None, predict_logits(model, x))
        with torch.no_grad():
            was = model.training
            model.eval()
            feats = torch.cat([model.features(x[i : i + 1024]).float().cpu() for i in range(0, len(x), 1024)])
            model.train(was)
        return self._scores_from(feats, None)

    # -- fit and answer --------------------------------------------------------------------------------------------
    def apply(self, model, data, *, train, progress=None):
        p = self.params
        if len(data) < 4:
            raise InvalidArgument(
                f"query rejection needs the thief's in-distribution data to fit; got {len(data)} inputs"
            )
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(p.seed))
        if p.detector == "lof":
            n_ref = min(p.reference, len(data) // 2)
            ref, calib = order[:n_ref], order[n_ref : n_ref + p.reference]
            ref_x = data.subset(ref).x
            with torch.no_grad():
                model.eval()
                self.reference_features = torch.cat(
                    [model.features(ref_x[i : i + 1024]).float().cpu() for i in range(0, n_ref, 1024)]
                )
            self._lof = None
        else:
            calib = order
        calib_scores = self.scores(model, data.subset(calib).x)
        # reject scores strictly above the (1 − fpr) quantile: a share ≤ fpr of the calibration data
        self.threshold = float(torch.quantile(calib_scores.double(), 1.0 - p.fpr)) if p.fpr > 0 else float("inf")
        rejected = float((calib_scores > self.threshold).float().mean())
        return {
            "detector": p.detector,
            "threshold": self.threshold,
            "calibration": len(calib),
            "rejected_calibration": rejected,
            "summary": f"{p.detector} detector rejects {rejected:.1%} of the thief's own held-out data",
        }

    def rejects(self, oracle: EvadingOracle, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise InvalidArgument("query rejection is not fitted; run the attack on the model first")
        if self.params.detector == "energy":
            score = self._scores_from(None, oracle.model_logits(x))
        else:
            score = self._scores_from(oracle.model_features(x), None)
        return score > self.threshold

    def respond(self, oracle: EvadingOracle, index: int, x: torch.Tensor, answer: AnswerFn) -> torch.Tensor:
        out = answer(x).clone()
        suspicious = self.rejects(oracle, x)
        n = int(suspicious.sum())
        if n:
            labels = torch.randint(oracle.num_classes, (n,), generator=oracle.generators[index])
            out[suspicious] = torch.nn.functional.one_hot(labels, oracle.num_classes).to(out.dtype)
        return out

    def report(self, model: Classifier, test: TensorData) -> dict[str, Any]:
        oracle = EvadingOracle(model, [self], check_digest=False)
        return {"rejected_test": float(self.rejects(oracle, test.x).float().mean())}

    # -- deployment file -------------------------------------------------------------------------------------------
    def state(self):
        tensors = {"reference_features": self.reference_features} if self.reference_features is not None else {}
        return {"threshold": self.threshold}, tensors

    def load_state(self, values, tensors):
        threshold = values.get("threshold")
        if not isinstance(threshold, (int, float)):
            raise InvalidArgument(f"query rejection state has no numeric threshold ({threshold!r})")
        self.threshold = float(threshold)
        if self.params.detector == "lof":
            feats = tensors.get("reference_features")
            if feats is None or feats.ndim != 2 or len(feats) < 2:
                raise InvalidArgument("LOF query rejection state lacks its reference features")
            self.reference_features = feats.float()
        self._lof = None
