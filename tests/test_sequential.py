"""Sequential verification: valid at any stopping time, stops early on strong evidence, agrees with the fixed test,
and every scheme that exposes per-query outcomes does so consistently with its own fixed test."""

import math
import random

import pytest
import torch
from scipy import integrate

import copycatch as cc
from copycatch.core.errors import InvalidArgument
from copycatch.core.key import Key
from copycatch.core.stats import binomial_greater
from copycatch.schemes import SCHEMES, Scheme
from copycatch.schemes.base import BernoulliOutcomes
from copycatch.verification.sequential import SequentialPlan, log_mixture_e_value, verify_sequential

SUCCESS, FAILURE, SKIP = 1, 0, -1


class CoinScheme(Scheme):
    """A stand-in scheme whose i-th verification input has a scripted outcome (success, failure or not counted)."""

    name = "coin"
    null_hypothesis = "each counted outcome is a success with probability q, independently"

    def __init__(self, q, n, hook=True):
        super().__init__()
        self.q, self.n = q, n
        self.sequential = hook  # the capability is declared per instance here: one stand-in class, both kinds

    def verification_inputs(self, key):
        return torch.arange(self.n, dtype=torch.float32).view(-1, 1, 1, 1)

    def _outcomes(self, answers):
        code = answers.argmax(1)  # class 0 failure, 1 success, 2 not counted
        return BernoulliOutcomes(torch.where(code == 2, -1, code).to(torch.int8), self.q, "successes")

    def bernoulli_outcomes(self, answers, key):
        return self._outcomes(answers) if self.sequential else None

    def evidence_from_answers(self, answers, key, *, alpha, queries):
        out = self._outcomes(answers)
        return self.evidence(
            key,
            statistic_name="successes",
            statistic=out.successes,
            p_value=binomial_greater(out.successes, out.counted, self.q),
            alpha=alpha,
            queries=queries,
        )


COIN_KEY = Key("coin", {}, {"seed": torch.zeros(1)})


def scripted(outcomes):
    """An oracle answering the scripted outcome of each input (inputs are their own indices)."""
    table = torch.nn.functional.one_hot(torch.tensor([{SUCCESS: 1, FAILURE: 0, SKIP: 2}[o] for o in outcomes]), 3)
    return cc.CallableOracle(lambda x: table[torch.as_tensor(x).view(-1).long()].float(), 3, input_format="torch")


def draw(n, success, counted, rng):
    return [(SUCCESS if rng.random() < success else FAILURE) if rng.random() < counted else SKIP for _ in range(n)]


def fixed_p(outcomes, q):
    s = sum(o == SUCCESS for o in outcomes)
    return binomial_greater(s, sum(o != SKIP for o in outcomes), q)


def test_mixture_e_value_is_the_integral_it_claims():
    for s, m, q in [(0, 0, 0.3), (3, 10, 0.25), (12, 15, 0.1), (0, 8, 0.5), (40, 100, 1 / 9)]:
        expected = integrate.quad(
            lambda p, s=s, m=m, q=q: (p / q) ** s * ((1 - p) / (1 - q)) ** (m - s) / (1 - q), q, 1, limit=200
        )[0]
        assert math.exp(log_mixture_e_value(s, m, q)) == pytest.approx(expected, rel=1e-6)


def test_false_positive_rate_under_the_null_is_at_most_alpha():
    """500 innocent suspects, 10 looks each: rejections at α = 0.05 stay at or below α (re-testing the fixed
    p-value at every look without correction would reject about twice as often)."""
    rng = random.Random(0)
    alpha, q, n, runs = 0.05, 0.25, 40, 500
    scheme = CoinScheme(q, n)
    rejections = 0
    for _ in range(runs):
        evidence = verify_sequential(
            scheme, scripted(draw(n, q, 0.7, rng)), COIN_KEY, alpha=alpha, plan=SequentialPlan(batch_size=4)
        )
        rejections += evidence.decision
    assert rejections / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def test_strong_evidence_stops_early_with_the_fixed_test_decision():
    rng = random.Random(1)
    q, n, alpha = 1 / 9, 100, 1e-3
    scheme = CoinScheme(q, n)
    used = []
    for _ in range(20):
        outcomes = draw(n, 0.6, 0.7, rng)
        evidence = verify_sequential(scheme, scripted(outcomes), COIN_KEY, alpha=alpha)
        assert evidence.decision == (fixed_p(outcomes, q) <= alpha) == True  # noqa: E712
        used.append(evidence.queries)
        assert evidence.details["sequential"]["stop_reason"] in {"early", "curtailed"}
    assert sum(used) / len(used) <= 0.4 * n


def test_stopping_decisions_hold_whatever_the_unasked_inputs_would_have_answered():
    """Curtailment and futility are exact: completing the key in the least favourable way cannot change them."""
    rng = random.Random(2)
    q, n, alpha, w = 0.2, 40, 0.01, 0.2
    scheme = CoinScheme(q, n)
    seen = set()
    for _ in range(300):
        outcomes = draw(n, rng.choice([0.1, 0.2, 0.5, 0.8]), 0.8, rng)
        evidence = verify_sequential(
            scheme, scripted(outcomes), COIN_KEY, alpha=alpha, plan=SequentialPlan(batch_size=4, early_share=w)
        )
        reason, asked = evidence.details["sequential"]["stop_reason"], evidence.metrics["queried"]
        seen.add(reason)
        if reason == "curtailed":  # all the rest counted failures: the full key still rejects
            assert fixed_p(outcomes[:asked] + [FAILURE] * (n - asked), q) <= (1 - w) * alpha
        if reason == "futility":  # all the rest successes: neither part could have rejected
            best = outcomes[:asked] + [SUCCESS] * (n - asked)
            assert fixed_p(best, q) > (1 - w) * alpha
            s, m = sum(o == SUCCESS for o in best), sum(o != SKIP for o in best)
            assert log_mixture_e_value(s, m, q) < -math.log(w * alpha)
            assert not evidence.decision
        if reason == "exhausted":
            p_e = 1 / evidence.metrics["max_e_value"]
            assert evidence.p_value == pytest.approx(min(1, p_e / w, fixed_p(outcomes, q) / (1 - w)))
    assert {"early", "futility", "exhausted"} <= seen


def test_a_scheme_without_the_hook_gets_the_fixed_test_and_says_so():
    scheme = CoinScheme(0.5, 12, hook=False)
    evidence = verify_sequential(scheme, scripted([SUCCESS] * 12), COIN_KEY, alpha=0.01)
    assert evidence.queries == 12 and any("fixed test" in n for n in evidence.notes)
    assert evidence.details["sequential"] == {"used": False}


def test_plan_rejects_bad_values():
    with pytest.raises(InvalidArgument, match="early_share"):
        SequentialPlan(early_share=1.0).validate()
    with pytest.raises(InvalidArgument, match="batch_size"):
        SequentialPlan.from_dict({"batch_size": 0})


def test_margin_victim_is_caught_with_fewer_queries_and_the_same_verdict(splits):
    embedding = cc.embed(
        "margin",
        splits,
        arch="mlp",
        params={"n_triggers": 60, "trigger_batch": 10},
        config=cc.TrainConfig(epochs=6, seed=0),
        max_cost=None,
    )
    scheme, key = cc.scheme_for_key(embedding.key), embedding.key
    fixed = scheme.verify(cc.ModelOracle(embedding.victim), key)
    sequential = verify_sequential(scheme, cc.ModelOracle(embedding.victim), key)
    assert fixed.verdict == sequential.verdict == "stolen"
    assert sequential.queries < fixed.queries == 60 and sequential.p_value <= 1e-3
    assert scheme.smallest_p_value(key, 4) == pytest.approx((1 / 3) ** 60)


# ---------------------------------------------------------------------------------------------------------------------
# generated over the registry: every scheme exposing per-query outcomes must agree with its own fixed test
# ---------------------------------------------------------------------------------------------------------------------

HOOKED = [n for n in SCHEMES.list() if SCHEMES.get(n).factory.bernoulli_outcomes is not Scheme.bernoulli_outcomes]


@pytest.mark.parametrize("name", HOOKED)
def test_every_scheme_hook_matches_its_fixed_test(name, tiny):
    embedding = tiny.embed(name, epochs=2)
    scheme, key = cc.scheme_for_key(embedding.key), embedding.key
    n = len(scheme.verification_inputs(key))
    g = torch.Generator().manual_seed(0)
    for answers in [
        torch.softmax(torch.randn(n, 4, generator=g) * 3, 1),
        torch.nn.functional.one_hot(torch.randint(4, (n,), generator=g), 4).float(),
    ]:
        outcome = scheme.bernoulli_outcomes(answers, key)
        assert outcome.outcomes.shape == (n,) and set(outcome.outcomes.tolist()) <= {-1, 0, 1}
        evidence = scheme.evidence_from_answers(answers, key, alpha=0.01, queries=n)
        labels_only = bool((answers.count_nonzero(dim=1) == 1).all())
        # on labels every fixed test is the hook's count; on scores a scheme may read more (margin's rank test)
        if labels_only or evidence.statistic_name == outcome.statistic_name:
            assert evidence.p_value == pytest.approx(
                binomial_greater(outcome.successes, outcome.counted, outcome.null_rate), rel=1e-9
            )
        prefix = scheme.bernoulli_outcomes(answers[: n // 2], key)
        assert torch.equal(prefix.outcomes, outcome.outcomes[: n // 2])


# ---------------------------------------------------------------------------------------------------------------------
# a suspect that answers scores: the fixed part is the scheme's own test of them (margin's rank test)
# ---------------------------------------------------------------------------------------------------------------------

SCORED = [n for n in SCHEMES.list() if SCHEMES.get(n).factory.score_test_bounds is not Scheme.score_test_bounds]


@pytest.mark.parametrize("name", SCORED)
def test_score_bounds_hold_whatever_the_unasked_inputs_answer(name, tiny):
    """The bound is the fixed test's p-value when nothing remains, at least it for every completion of the asked
    answers, and the best case at most it."""
    embedding = tiny.embed(name, epochs=2)
    scheme, key = cc.scheme_for_key(embedding.key), embedding.key
    n = len(scheme.verification_inputs(key))
    g = torch.Generator().manual_seed(0)
    answers = torch.softmax(torch.randn(n, 4, generator=g) * 3, 1)
    full = scheme.evidence_from_answers(answers, key, alpha=0.01, queries=n).p_value
    assert scheme.score_test_bounds(answers, key, 0)[0] == pytest.approx(full, rel=1e-9)
    asked = n // 2
    bound, best = scheme.score_test_bounds(answers[:asked], key, n - asked)
    for trial in range(20):
        completion = torch.softmax(torch.randn(n - asked, 4, generator=g) * 3, 1)
        if trial % 2:  # ties, and the secret labels' own classes on top
            completion = (completion * 2).round() / 2 + 1e-3 * torch.nn.functional.one_hot(
                key["trigger_label"].long()[asked:], 4
            )
        p = scheme.evidence_from_answers(torch.cat([answers[:asked], completion]), key, alpha=0.01, queries=n).p_value
        assert best * (1 - 1e-9) <= p <= bound * (1 + 1e-9)


def _margin_scores_key(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, c, (n,), generator=g)
    labels = (true + torch.randint(1, c, (n,), generator=g)) % c
    params = SCHEMES.get("margin").factory(n_triggers=n).params.to_dict()
    tensors = {"trigger_x": torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), "trigger_true": true}
    return Key("margin", params, {**tensors, "trigger_label": labels}, {"num_classes": c}), true, labels, g


def _scores_oracle(table, output_kind="probs"):
    """Answers row i of ``table`` to trigger i (the triggers' single pixel is their index)."""
    index = (torch.arange(len(table)) / 255).view(-1, 1)
    lookup = {round(float(v) * 255): i for i, v in enumerate(index.view(-1))}
    return cc.CallableOracle(
        lambda x: table[[lookup[round(float(v) * 255)] for v in torch.as_tensor(x).reshape(len(x), -1)[:, 0]]],
        table.shape[1],
        input_format="torch",
        output_kind=output_kind,
    )


def test_a_scoring_suspect_is_tested_on_its_scores_and_a_label_only_one_on_the_count():
    """The secret label second on every trigger, no hit at all: the sequential test on the scores proves it (p
    within the early share of the fixed rank test's), on the same suspect's labels it cannot."""
    n, c = 60, 10
    key, true, labels, _ = _margin_scores_key(n, c, seed=0)
    table = torch.full((n, c), 0.01)
    table[torch.arange(n), true], table[torch.arange(n), labels] = 0.8, 0.12
    scheme = cc.scheme_for_key(key)
    scores = verify_sequential(scheme, _scores_oracle(table), key, alpha=1e-3)
    assert scores.metrics["successes"] == 0 and scores.details["sequential"]["fixed_part"] == "scores"
    assert scores.decision and scores.p_value == pytest.approx((1 / (c - 1)) ** n / 0.8, rel=1e-6)
    assert "null_model" not in scores.details  # not a binomial tail: the evidence check asks for the key
    hard = torch.nn.functional.one_hot(table.argmax(1), c).float()
    labels_run = verify_sequential(scheme, _scores_oracle(hard, "labels"), key, alpha=1e-3)
    assert labels_run.details["sequential"]["fixed_part"] == "binomial count" and not labels_run.decision


def test_the_scores_test_is_valid_at_any_stopping_time():
    """300 innocent scoring suspects (answers independent of the secret labels), 6 looks each: rejections at α = 0.05
    stay at or below α, and the p-values are not piled up at 1."""
    n, c, alpha, runs = 30, 6, 0.05, 300
    key, _, _, g = _margin_scores_key(n, c, seed=1)
    scheme = cc.scheme_for_key(key)
    p_values = []
    for _ in range(runs):
        table = torch.softmax(torch.randn(n, c, generator=g) * 2, 1)
        evidence = verify_sequential(scheme, _scores_oracle(table), key, alpha=alpha, plan=SequentialPlan(batch_size=5))
        p_values.append(evidence.p_value)
    rejected = sum(p <= alpha for p in p_values) / runs
    assert rejected <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    assert sum(p <= 0.5 for p in p_values) / runs >= 0.2
