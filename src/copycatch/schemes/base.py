"""The interface every watermarking scheme implements.

``embed(model, splits)`` → victim + :class:`~copycatch.core.key.Key` (training-time
schemes), ``protect(oracle, key)`` → an oracle (API-time schemes; identity
otherwise), ``verify(oracle, key, alpha)`` → :class:`~copycatch.core.evidence.Evidence`
with an exact (or explicitly approximate) p-value under the scheme's stated null.

Every scheme also says how strong its evidence can ever be: :meth:`Scheme.smallest_p_value` is the p-value its
test would give if every answer were maximally incriminating, with the whole key or a smaller query budget asked
(:meth:`Scheme.restrict_key`). A key whose smallest p-value is above α can never call anything stolen, and the
evidence says so (:func:`note_reachability`). :meth:`Scheme.power_curve` gives the test's p-value on the first k
queries of answers already collected, for the benchmark report's power view.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch

from ..core.commitment import derived_seed
from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..core.registry import Registry
from ..core.stats import binomial_greater
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
    # "fingerprint": embed() returns the model untouched (same weight bytes) and only writes a key; verification reads
    # what the model is anyway. "watermark": embed() trains a mark into the model, or protect() into its answers.
    kind: ClassVar[Literal["watermark", "fingerprint"]] = "watermark"
    null_hypothesis: ClassVar[str] = ""
    # what a suspect must answer: "labels" (labels suffice) or "probs" (the statistic reads probabilities)
    needs: ClassVar[OutputKind] = "labels"
    # True: bernoulli_outcomes() gives per-query outcomes, so verification may stop early (sequential test)
    sequential: ClassVar[bool] = False
    default_arch: ClassVar[str] = "cnn-small"
    # The data modalities (data.base.MODALITIES) the scheme's mechanism applies to; embedding refuses any other.
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    # True: embed() expects a trained model (frontier stitching fine-tunes one), so a clean model is trained first
    # when the scheme is handed an architecture name instead of a model.
    pretrain: ClassVar[bool] = False
    # Parameters for the registry-generated tests on tiny synthetic data (1×8×8, 4 classes, a few hundred examples).
    tiny_params: ClassVar[dict[str, Any]] = {}
    # Changes to that tiny synthetic data set for the registry-generated tests, for a scheme whose signal needs
    # something the shared one lacks (dataset inference needs an owner's model that memorises its training data).
    tiny_data: ClassVar[dict[str, Any]] = {}
    # The parameter that trades the mark's strength for the victim's accuracy: lowering it lowers the accuracy cost
    # (the accuracy-cost guard of schemes.embedding names it). None: no parameter of the scheme costs accuracy.
    strength: ClassVar[str | None] = None
    # The key tensors that hold one row per key item (a trigger, a stamped input …), in the order verification asks
    # them: what a smaller query budget cuts (restrict_key). The first one counts the items.
    per_item: ClassVar[tuple[str, ...]] = ()
    # What makes a key that can reach smaller p-values (the note when a key cannot reach alpha says it).
    larger_key: ClassVar[str] = "a larger key"
    # Parameters that are part of the secret (the paper keeps them secret): the public commitment record leaves them
    # out (schemes.commitment); the key digest still binds them.
    secret_params: ClassVar[tuple[str, ...]] = ()
    # The owner's secret key seed (hex), set by the embedding workflow (schemes.embedding): the key's random choices
    # then come from it (key_generator), not from the public training seed.
    key_seed: str | None = None

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

    def score_test_bounds(self, answers: torch.Tensor, key: Key, remaining: int) -> tuple[float, float] | None:
        """For sequential verification of a suspect that answers scores, when the fixed test reads them (margin's rank
        test) instead of counting :meth:`bernoulli_outcomes`: from the answers to the first ``len(answers)``
        verification inputs, (1) a bound on the fixed test's p-value of the whole key that holds whatever the
        ``remaining`` unasked inputs would answer (so it is valid wherever the test stops), equal to
        ``evidence_from_answers``'s p-value on scored answers when nothing remains, and (2) the smallest p-value the
        fixed test could still reach (only used to stop for futility). None (here): the fixed part counts outcomes."""
        return None

    def verify(
        self, oracle: Oracle, key: Key, *, alpha: float = 1e-3, progress: bool | None = None, power: bool = False
    ) -> Evidence:
        """The fixed test: query every verification input and test the null on all the answers.

        The evidence states the smallest p-value the whole key can give (``metrics["smallest_attainable_p"]``);
        ``power`` adds the test's p-value on the first k of the same answers (``details["power"]``, see
        :meth:`power_curve`), asking nothing more.
        """
        alpha = self.check_alpha(alpha)
        self.check_key(key, oracle)
        x = self.verification_inputs(key)
        before = oracle.queries
        answers = query_all(oracle, x, progress=progress, desc="verify")
        evidence = self.evidence_from_answers(answers, key, alpha=alpha, queries=oracle.queries - before)
        note_reachability(evidence, self.smallest_p_value(key, answers.shape[1]), self.larger_key)
        if power:
            evidence.details["power"] = self.power_curve(answers, key, alpha=alpha)
        outcome = self.bernoulli_outcomes(answers, key) if self.sequential else None
        # the binomial null, for the evidence page's plot, when it is the null of the statistic the test used
        if outcome is not None and outcome.statistic_name == evidence.statistic_name:
            evidence.details["null_model"] = {
                "type": "binomial",
                "trials": outcome.counted,
                "rate": outcome.null_rate,
                "observed": outcome.successes,
                "statistic_name": outcome.statistic_name,
            }
        evidence.details.setdefault("sequential", {"used": False})
        return evidence

    # -- query budgets, the smallest attainable p-value and power ---------------------------------------------------
    def key_items(self, key: Key) -> int:
        """How many items (triggers, stamped inputs …) ``key`` holds (``per_item``; without it, one per query)."""
        return len(key[self.per_item[0]]) if self.per_item else len(self.verification_inputs(key))

    def item_queries(self, key: Key, items: torch.Tensor) -> torch.Tensor:
        """Positions in ``verification_inputs(key)`` of the queries that ask ``items``: one query per item here;
        a scheme that asks an item twice (with and without its trigger) overrides it."""
        return items

    def budget_order(self, key: Key) -> torch.Tensor:
        """The order in which a query budget spends the key's items: key order, itself a secret random order."""
        return torch.arange(self.key_items(key))

    def restrict_key(self, key: Key, queries: int) -> tuple[Key, torch.Tensor]:
        """``key`` as a budget of ``queries`` asks it: the first items of :meth:`budget_order` whose queries fit, as a
        key of their own (every ``per_item`` tensor cut, the rest kept), and the positions of their queries in
        ``verification_inputs(key)``, in the order ``verification_inputs`` of the smaller key asks them."""
        n, total = self.key_items(key), len(self.verification_inputs(key))
        if not self.per_item and queries < total:
            raise InvalidArgument(f"scheme {self.name!r} declares no per_item key tensors: it cannot cut its key")
        per_item = max(1, total // max(n, 1))
        items = self.budget_order(key)[: min(n, max(0, int(queries)) // per_item)].sort().values
        tensors = {name: t[items] if name in self.per_item else t for name, t in key.tensors.items()}
        return Key(key.scheme, dict(key.params), tensors, dict(key.meta)), self.item_queries(key, items)

    def smallest_p_value(self, key: Key, num_classes: int, queries: int | None = None) -> float | None:
        """The p-value :meth:`evidence_from_answers` would give if every answer were maximally incriminating, with at
        most ``queries`` of the key's verification inputs asked (default: all): no suspect can go below it, so a key
        whose smallest p-value is above α can never call anything stolen. None when the scheme cannot say."""
        if queries is not None:
            key = self.restrict_key(key, queries)[0]
        return self.attainable_p_value(key, num_classes)

    def attainable_p_value(self, key: Key, num_classes: int) -> float | None:
        """:meth:`smallest_p_value` of the whole of ``key``, which each scheme declares from its own test. Here, for
        a sequential scheme: every item a counted success, ``P(Binomial(n, q) >= n) = q^n``."""
        if not self.sequential:
            return None
        n = self.key_items(key)
        return binomial_greater(n, n, float(self.bernoulli_outcomes(torch.empty(0, num_classes), key).null_rate))

    def power_curve(
        self, answers: torch.Tensor, key: Key, *, alpha: float, sizes: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """The fixed test's p-value on the first k queries of the key (:meth:`restrict_key`) for each k of ``sizes``
        (default :func:`power_sizes`), from ``answers`` to every verification input: nothing is asked again.

        Returns ``{"queries": [...], "p": [...], "smallest_p": [...], "seconds": s}``: the queries each k spends
        (whole items fit), the p-value, the smallest p-value that many queries can give, and the time it took."""
        start = time.perf_counter()
        out: dict[str, Any] = {"queries": [], "p": [], "smallest_p": []}
        for k in sizes or power_sizes(len(answers)):
            if not self.per_item and k < len(answers):
                continue  # the key cannot be cut (restrict_key): only the whole key
            sub, positions = self.restrict_key(key, k)
            if not len(positions) or len(positions) in out["queries"]:
                continue
            evidence = self.evidence_from_answers(answers[positions], sub, alpha=alpha, queries=len(positions))
            out["queries"].append(len(positions))
            out["p"].append(float(evidence.p_value))
            out["smallest_p"].append(self.attainable_p_value(sub, answers.shape[1]))
        out["seconds"] = time.perf_counter() - start
        return out

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
        """Refuse a suspect that answers labels when the statistic reads probabilities (an HTTP suspect that has
        not said is asked one blank input first, so that the refusal comes before any key input is shown)."""
        settle = getattr(oracle, "settle_output_kind", None)
        if self.needs == "probs" and settle is not None:
            settle()
        if oracle.output_kind == "labels" and self.needs == "probs":
            raise InvalidArgument(f"scheme {self.name!r} needs probabilities but the suspect answers labels only")

    # -- helpers for subclasses ------------------------------------------------------------------------------------
    def key_generator(self, seed: int, salt: int) -> torch.Generator:
        """The generator of the key's random choices (which inputs become triggers, their secret labels …): seeded
        from the secret key seed when one is set (:func:`copycatch.core.commitment.derived_seed`), else from the
        public ``seed + salt`` (the training seed: reproducible by anyone who knows it and the data)."""
        if self.key_seed is None:
            return torch.Generator().manual_seed(seed + salt)
        return torch.Generator().manual_seed(derived_seed(self.key_seed, self.name, salt))

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
            # a suspect that answers class names (a Hugging Face endpoint's top-k labels) is read through them
            "class_names": list(getattr(victim, "class_names", None) or []) or None,
            "victim_sha256": weights_digest(victim),
            **extra,
        }

    @staticmethod
    def check_alpha(alpha: float) -> float:
        if not 0.0 < alpha < 1.0:
            raise InvalidArgument(f"alpha must be in (0, 1), got alpha={alpha}")
        return float(alpha)


POWER_QUERIES = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
UNREACHABLE = "the test could never have rejected"


def power_sizes(total: int) -> list[int]:
    """The query counts of a power curve over a key of ``total`` verification inputs: :data:`POWER_QUERIES` below
    it, and the whole key."""
    return [k for k in POWER_QUERIES if k < total] + [total]


def note_reachability(evidence: Evidence, smallest: float | None, larger_key: str = "a larger key") -> None:
    """Put the smallest attainable p-value into ``evidence`` (``metrics["smallest_attainable_p"]``) and, when it is
    above α, a note that the test could never have rejected: the verdict is then "not stolen" by construction,
    whatever the suspect answered. A later call (a smaller query budget) replaces the note."""
    evidence.metrics["smallest_attainable_p"] = smallest
    evidence.notes = [n for n in evidence.notes if not n.startswith(UNREACHABLE)]
    if smallest is not None and smallest > evidence.alpha:
        evidence.notes.append(
            f"{UNREACHABLE}: with this key and query budget the smallest attainable p-value is {smallest:.3g} > "
            f"alpha = {evidence.alpha:g}, so the verdict is 'not stolen' whatever the suspect answers; use "
            f"{larger_key}, or a larger query budget"
        )


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
