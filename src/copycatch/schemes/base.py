"""The interface every watermarking scheme implements.

``embed(model, splits)`` → victim + :class:`~copycatch.core.key.Key` (training-time
schemes), ``protect(oracle, key)`` → an oracle (API-time schemes; identity
otherwise), ``verify(oracle, key, alpha)`` → :class:`~copycatch.core.evidence.Evidence`
with an exact (or explicitly approximate) p-value under the scheme's stated null.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..core.registry import Registry
from ..data.base import Splits
from ..models.base import Classifier
from ..models.io import weights_digest
from ..models.train import TrainConfig
from ..oracles.base import Oracle, OutputKind, query_all


@dataclasses.dataclass
class Embedding:
    """What ``Scheme.embed`` returns."""

    victim: Classifier
    key: Key
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class BernoulliOutcomes:
    """Per-query outcomes for sequential verification (see :meth:`Scheme.bernoulli_outcomes`).

    ``outcomes`` holds one int8 per answered verification input, in query order: 1 a success (e.g. a hit on
    the secret label), 0 a failure, -1 not counted (e.g. a correctly classified margin trigger). Under the
    scheme's null, the counted outcomes are independent Bernoulli(``null_rate``) draws, whatever the suspect,
    and the fixed test is ``P(Binomial(counted, null_rate) >= successes)``.
    """

    outcomes: torch.Tensor
    null_rate: float
    statistic_name: str = "successes among counted queries"
    exact: bool = True
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def successes(self) -> int:
        return int((self.outcomes == 1).sum())

    @property
    def counted(self) -> int:
        return int((self.outcomes >= 0).sum())


class Scheme:
    """Base class; subclasses set the class attributes and implement ``embed``/``verify``."""

    # -- what the scheme is, needs and offers (declared, never detected) ---------------------------------------------
    name: ClassVar[str] = ""
    acts_at: ClassVar[Literal["training", "api"]] = "training"  # "api": protect() perturbs the served answers
    null_hypothesis: ClassVar[str] = ""
    # what a suspect must answer: "labels" (labels suffice) or "probs" (the statistic reads probabilities)
    needs: ClassVar[OutputKind] = "labels"
    # True: bernoulli_outcomes() gives per-query outcomes, so verification may stop early (sequential test)
    sequential: ClassVar[bool] = False
    default_arch: ClassVar[str] = "cnn-small"
    # True: embed() expects a trained model (frontier stitching fine-tunes one), so a clean model is trained first
    # when the scheme is handed an architecture name instead of a model.
    pretrain: ClassVar[bool] = False
    # Parameters for the registry-generated tests on tiny synthetic data (1×8×8, 4 classes, a few hundred examples).
    tiny_params: ClassVar[dict[str, Any]] = {}

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        pass

    def __init__(self, params: BaseParams | None = None, **kwargs: Any):
        if params is not None and kwargs:
            raise InvalidArgument("give either a Params object or keyword parameters, not both")
        self.params = params if params is not None else self.Params.from_dict(kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"

    # -- interface -------------------------------------------------------------------------------------------------
    def embed(
        self, model: Classifier, splits: Splits, *, train: TrainConfig | None = None, progress: bool | None = None
    ) -> Embedding:
        raise NotImplementedError

    def protect(self, oracle: Oracle, key: Key) -> Oracle:
        return oracle

    def verification_inputs(self, key: Key) -> torch.Tensor:
        """Every input ``verify`` will query, in order; a deterministic function of the key."""
        raise NotImplementedError

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        """Evidence from the suspect's answers (N×C, probabilities or one-hot labels) to ``verification_inputs``."""
        raise NotImplementedError

    def bernoulli_outcomes(self, answers: torch.Tensor, key: Key) -> BernoulliOutcomes | None:
        """Per-query outcomes for sequential verification (:mod:`copycatch.verification.sequential`).

        Schemes that declare ``sequential = True`` implement it. ``answers`` are the suspect's answers to the first
        ``len(answers)`` verification inputs (a prefix, maybe empty). It fits only a statistic that counts per-query
        Bernoulli outcomes with an exact binomial null, asked over exactly ``verification_inputs``; then
        ``evidence_from_answers`` on all answers must give the p-value ``P(Binomial(counted, null_rate) >= successes)``
        (a registry test checks this). Other schemes are verified with the fixed test on all verification inputs.
        """
        return None

    def verify(self, oracle: Oracle, key: Key, *, alpha: float = 1e-3, progress: bool | None = None) -> Evidence:
        """The fixed test: query every verification input and test the null on all the answers."""
        alpha = self.check_alpha(alpha)
        self.check_key(key, oracle)
        x = self.verification_inputs(key)
        before = oracle.queries
        answers = query_all(oracle, x, progress=progress, desc="verify")
        evidence = self.evidence_from_answers(answers, key, alpha=alpha, queries=oracle.queries - before)
        outcome = self.bernoulli_outcomes(answers, key) if self.sequential else None
        if outcome is not None:  # the null distribution, for the evidence page's plot
            evidence.details["null_model"] = {
                "type": "binomial",
                "trials": outcome.counted,
                "rate": outcome.null_rate,
                "observed": outcome.successes,
                "statistic_name": outcome.statistic_name,
            }
        evidence.details.setdefault("sequential", {"used": False})
        return evidence

    def evidence(
        self,
        key: Key,
        *,
        statistic_name: str,
        statistic: float,
        p_value: float,
        alpha: float,
        queries: int,
        exact: bool = True,
        metrics: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        notes: list[str] | None = None,
        null_hypothesis: str | None = None,
    ) -> Evidence:
        """The one way evidence is made: this scheme's name and null hypothesis, the key's digest, the test's result."""
        return Evidence(
            scheme=self.name,
            null_hypothesis=null_hypothesis or self.null_hypothesis,
            statistic_name=statistic_name,
            statistic=statistic,
            p_value=p_value,
            alpha=alpha,
            queries=queries,
            key_digest=key.digest,
            exact=exact,
            metrics=dict(metrics or {}),
            details=dict(details or {}),
            notes=list(notes or []),
        )

    def check_oracle(self, oracle: Oracle) -> None:
        """Refuse a suspect that answers labels when the statistic reads probabilities."""
        if oracle.output_kind == "labels" and self.needs == "probs":
            raise InvalidArgument(f"scheme {self.name!r} needs probabilities but the suspect answers labels only")

    # -- helpers for subclasses ------------------------------------------------------------------------------------
    def check_key(self, key: Key, oracle: Oracle | None = None) -> None:
        if key.scheme != self.name:
            raise InvalidArgument(f"key is for scheme {key.scheme!r}, not {self.name!r}")
        classes = key.meta.get("num_classes")
        if oracle is not None and classes is not None and classes != oracle.num_classes:
            raise InvalidArgument(
                f"key is for a {classes}-class model but the suspect has {oracle.num_classes} classes"
            )
        if (
            oracle is not None
            and key.meta.get("input_shape")
            and oracle.input_shape is not None
            and tuple(key.meta["input_shape"]) != tuple(oracle.input_shape)
        ):
            raise InvalidArgument(
                f"key is for inputs shaped {tuple(key.meta['input_shape'])} but the suspect takes "
                f"{tuple(oracle.input_shape)}"
            )

    def key_meta(self, splits: Splits, victim: Classifier, **extra: Any) -> dict[str, Any]:
        return {
            "dataset": splits.dataset,
            "split_seed": splits.seed,
            "data_fingerprint": splits.fingerprint,
            "arch": victim.arch,
            "num_classes": victim.num_classes,
            "input_shape": list(victim.input_shape),
            "victim_sha256": weights_digest(victim),
            **extra,
        }

    @staticmethod
    def check_alpha(alpha: float) -> float:
        if not 0.0 < alpha < 1.0:
            raise InvalidArgument(f"alpha must be in (0, 1), got alpha={alpha}")
        return float(alpha)


SCHEMES: Registry[type[Scheme]] = Registry("scheme")


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    SCHEMES.register(cls.name)(cls)
    return cls


def list_schemes(pattern: str = "*") -> list[str]:
    return SCHEMES.list(pattern)


def create_scheme(name: str, **params: Any) -> Scheme:
    return SCHEMES.create(name, **params)


def scheme_for_key(key: Key) -> Scheme:
    """The scheme (with the key's parameters) that can verify ``key``."""
    return create_scheme(key.scheme, **key.params)
