import numpy as np
import pytest
import torch
from conftest import margin_null_draws

import copycatch as cc
from copycatch.core.errors import InvalidArgument
from copycatch.core.key import Key
from copycatch.core.stats import binomial_greater
from copycatch.schemes.margin import MarginWatermark


@pytest.fixture(scope="module")
def embedded(splits):
    return cc.embed(
        "margin",
        splits,
        arch="mlp",
        params={"n_triggers": 40, "trigger_batch": 10},
        config=cc.TrainConfig(epochs=10, seed=0),
        max_cost=None,
    )


def test_victim_is_stolen_and_stays_useful(embedded, splits):
    evidence = cc.verify(embedded.victim, embedded.key, sequential=False).evidence
    assert evidence.verdict == "stolen" and evidence.p_value <= 1e-6 and evidence.exact
    assert evidence.metrics["watermark_accuracy"] >= 0.9 and evidence.queries == 40
    # 40 wrong-label triggers on a 4-prototype toy task cost a few points; the real cost is measured in benchmarks/
    assert cc.accuracy(embedded.victim, splits.test) >= 0.85


def test_innocent_model_is_cleared(embedded, innocent):
    evidence = cc.verify(innocent, embedded.key, alpha=0.05, sequential=False).evidence
    assert evidence.verdict == "not stolen"


def test_label_only_suspects_get_the_binomial_count_and_scores_the_rank_test(embedded):
    soft = cc.verify(embedded.victim, embedded.key, sequential=False).evidence
    hard = cc.verify(cc.ModelOracle(embedded.victim).postprocess("hard-label"), embedded.key, sequential=False).evidence
    assert hard.statistic_name == "trigger hits among misclassified" and hard.statistic == soft.metrics["hits"]
    assert hard.p_value == binomial_greater(soft.metrics["hits"], soft.metrics["misclassified"], 1 / 3)
    assert soft.statistic_name.startswith("secret label's rank") and soft.exact
    assert soft.p_value <= hard.p_value * (1 + 1e-9)


def _answers_key(answers: torch.Tensor, true: torch.Tensor, labels: torch.Tensor, **params) -> Key:
    n, c = answers.shape
    return Key(
        "margin",
        MarginWatermark(n_triggers=n, **params).params.to_dict(),
        {"trigger_x": torch.zeros(n, 1, 2, 2, dtype=torch.uint8), "trigger_true": true, "trigger_label": labels},
        {"num_classes": c},
    )


def _random_labels(true: torch.Tensor, c: int, generator: torch.Generator) -> torch.Tensor:
    return (true + torch.randint(1, c, true.shape, generator=generator)) % c


def test_rank_test_on_one_hot_answers_equals_the_binomial_test():
    g = torch.Generator().manual_seed(0)
    n, c = 60, 10
    true = torch.randint(0, c, (n,), generator=g)
    labels = _random_labels(true, c, g)
    pred = torch.where(torch.rand(n, generator=g) < 0.5, labels, torch.randint(0, c, (n,), generator=g))
    one_hot = torch.nn.functional.one_hot(pred, c).float()
    scheme = MarginWatermark(n_triggers=n)
    labels_ev = scheme.evidence_from_answers(one_hot, _answers_key(one_hot, true, labels), alpha=1e-3, queries=n)
    m, hits = int((pred != true).sum()), int((pred == labels).sum())
    assert labels_ev.p_value == binomial_greater(hits, m, 1 / (c - 1)) < 1e-6
    # the same labels as scores that tie everywhere but the top: the rank test gives the binomial's p-value
    ranked = scheme._rank_evidence(one_hot, _answers_key(one_hot, true, labels), alpha=1e-3, queries=n, metrics={})
    assert ranked.p_value == pytest.approx(labels_ev.p_value, rel=1e-9)


def test_rank_test_sees_the_secret_label_below_the_top():
    """Every trigger classified correctly, the secret label second: no hit at all, yet overwhelming evidence."""
    g = torch.Generator().manual_seed(1)
    n, c = 40, 10
    true = torch.randint(0, c, (n,), generator=g)
    labels = _random_labels(true, c, g)
    answers = torch.full((n, c), 0.01)
    answers[torch.arange(n), true] = 0.8
    answers[torch.arange(n), labels] = 0.12
    key = _answers_key(answers, true, labels)
    ev = MarginWatermark(n_triggers=n).evidence_from_answers(answers, key, alpha=1e-3, queries=n)
    assert ev.metrics["hits"] == 0 and ev.metrics["secret_rank_mean"] == 1.0
    assert ev.p_value == pytest.approx((1 / (c - 1)) ** n, rel=1e-6)
    hard = torch.nn.functional.one_hot(answers.argmax(1), c).float()
    assert MarginWatermark(n_triggers=n).evidence_from_answers(hard, key, alpha=1e-3, queries=n).p_value == 1.0


@pytest.mark.parametrize("levels", [None, 4])
def test_rank_test_null_is_valid_for_any_fixed_answers(levels):
    """One suspect's fixed answers (soft, or rounded to a few levels: many ties), 2,000 independent secret label
    draws: P(p <= u) never clearly above u."""
    g = torch.Generator().manual_seed(2)
    n, c = 30, 10
    answers = torch.distributions.Dirichlet(torch.full((c,), 0.3)).sample((n,))
    if levels:
        answers = (answers * levels).round() / levels
    true = torch.randint(0, c, (n,), generator=g)
    scheme = MarginWatermark(n_triggers=n)
    p = np.array(
        [
            scheme._rank_evidence(
                answers, _answers_key(answers, true, _random_labels(true, c, g)), alpha=0.05, queries=n, metrics={}
            ).p_value
            for _ in range(2000)
        ]
    )
    for u in (0.01, 0.05, 0.1, 0.25, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / len(p)), u
    assert np.mean(p <= 0.5) >= 0.3, "p-values piled up at 1: the test would have no power"


def test_rank_test_with_a_thousand_classes_is_quick_and_tells_apart_the_top_wrong_classes():
    g = torch.Generator().manual_seed(3)
    n, c = 100, 1000
    true = torch.randint(0, c, (n,), generator=g)
    labels = _random_labels(true, c, g)
    answers = torch.rand(n, c, generator=g)
    answers[torch.arange(n), labels] += 1.0  # the secret label on top of every trigger's wrong classes
    ev = MarginWatermark(n_triggers=n).evidence_from_answers(
        answers, _answers_key(answers, true, labels), alpha=1e-3, queries=n
    )
    assert ev.metrics["secret_rank_mean"] == 1.0 and ev.p_value == pytest.approx((1 / (c - 1)) ** n, rel=1e-6)


def test_rank_test_is_not_used_for_secret_labels_a_reference_model_chose():
    g = torch.Generator().manual_seed(4)
    n, c = 20, 10
    true = torch.randint(0, c, (n,), generator=g)
    labels = _random_labels(true, c, g)
    answers = torch.distributions.Dirichlet(torch.ones(c)).sample((n,))
    key = _answers_key(answers, true, labels, label_strategy="highest")
    ev = MarginWatermark(n_triggers=n, label_strategy="highest").evidence_from_answers(
        answers, key, alpha=1e-3, queries=n
    )
    assert ev.statistic_name == "trigger hits among misclassified" and not ev.exact


def test_key_records_the_secret_labels_as_wrong_labels(embedded):
    key = embedded.key
    assert (key["trigger_label"] != key["trigger_true"]).all()
    assert key["trigger_x"].dtype == torch.uint8 and key.meta["victim_sha256"]


def _innocent_models(splits):
    weak_data = cc.load_dataset("synthetic", n=2400, num_classes=4, size=8, noise=0.9, seed=0)
    weak_splits = cc.make_splits(weak_data, seed=0)
    weak = cc.train("mlp", weak_splits, config=cc.TrainConfig(epochs=1, seed=1), hidden=16)
    untrained = cc.create_for("cnn-small", splits, seed=3)
    return {"weakly trained": weak, "untrained": untrained}


@pytest.mark.parametrize("which", ["weakly trained", "untrained"])
def test_exact_null_p_values_are_uniform_over_independent_keys(splits, which):
    """≥ 200 independently drawn keys against an innocent model: p-values (near) uniform, FPR at 0.05 ≤ 0.07."""
    model = _innocent_models(splits)[which]
    scheme = MarginWatermark(n_triggers=100)
    holdout = cc.make_splits(
        cc.load_dataset("synthetic", n=6000, num_classes=4, size=8, noise=0.9, seed=7),
        seed=1,
        fractions=cc.SplitFractions(owner_train=0.1, owner_holdout=0.5, attacker_pool=0.1),
    )
    p, ms = margin_null_draws(scheme, holdout, model, first_seed=10_000)
    assert np.mean(ms) > 20, "the innocent model must misclassify enough triggers for the test to mean anything"
    assert np.mean(p <= 0.05) <= 0.07
    n = len(p)
    for u in (0.01, 0.05, 0.1, 0.25, 0.5, 0.75):
        # discrete tests are conservative: P(p <= u) may fall below u but never clearly above it
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / n), u
    assert np.mean(p <= 0.5) >= 0.25, "p-values piled up at 1: the test would have no power"


def test_highest_confidence_labels_flag_the_null_as_approximate(splits, trained):
    scheme = MarginWatermark(n_triggers=20, label_strategy="highest")
    x_u8, true, labels = scheme.make_trigger_set(splits, torch.Generator().manual_seed(0), reference=trained)
    assert (labels != true).all()
    key = Key(
        "margin",
        scheme.params.to_dict(),
        {"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
        {"num_classes": 4},
    )
    ev = scheme.verify(cc.ModelOracle(trained), key)
    assert not ev.exact and "approximate" in ev.notes[0]


def test_verify_rejects_a_key_for_another_scheme_or_shape(embedded):
    wrong = Key("frontier-stitching", {}, {}, {"num_classes": 4})
    with pytest.raises(cc.CopycatchError, match="scheme"):
        MarginWatermark().verify(cc.ModelOracle(embedded.victim), wrong)
    with pytest.raises(cc.CopycatchError, match="classes"):
        MarginWatermark().verify(cc.ModelOracle(cc.create_model("mlp", (1, 8, 8), 5)), embedded.key)


def test_free_ascent_watermarks_and_keeps_its_perturbations_in_the_ball(splits, innocent):
    from copycatch.schemes.margin import MarginHook

    params = MarginWatermark.Params(n_triggers=40, trigger_batch=10, ascent="free")
    embedded = cc.embed(
        "margin", splits, arch="mlp", params=params.to_dict(), config=cc.TrainConfig(epochs=10, seed=0), max_cost=None
    )
    assert embedded.key.params["ascent"] == "free"
    evidence = cc.verify(embedded.victim, embedded.key, sequential=False).evidence
    assert evidence.verdict == "stolen" and evidence.p_value <= 1e-6
    assert cc.verify(innocent, embedded.key, alpha=0.05, sequential=False).evidence.verdict == "not stolen"

    # The hook's perturbations move (the ascent ran) and stay inside the ε-ball and the pixel range.
    x = embedded.key["trigger_x"].float() / 255
    hook = MarginHook(x, embedded.key["trigger_label"].long(), MarginWatermark.Params.from_dict(embedded.key.params))
    model = cc.create_model("mlp", x.shape[1:], 4, seed=0)
    cc.fit(model, splits.owner_train, cc.TrainConfig(epochs=2, seed=0), hooks=[hook])
    assert hook.delta.abs().max() > 0
    assert hook.delta.abs().max() <= params.eps + 1e-6
    assert ((x + hook.delta) >= -1e-6).all() and ((x + hook.delta) <= 1 + 1e-6).all()


def test_unknown_ascent_is_rejected():
    with pytest.raises(InvalidArgument, match="ascent"):
        MarginWatermark.Params(ascent="fgsm")


def test_default_weight_falls_with_the_data_size_and_the_key_records_it(splits):
    """λ = exposure·n_triggers/(trigger_batch·steps), at most 1: each trigger gets the same total weight whatever the
    owner's data size (λ = 1 on 4,000 images cost 11 points), and the key holds the λ that was used."""
    from copycatch.schemes.margin import trigger_weight

    ten_epochs = cc.TrainConfig(epochs=10, batch_size=128)
    small, large = (trigger_weight(100, 25, n, ten_epochs, 8.0) for n in (4000, 30000))
    assert small == pytest.approx(8 * 100 / (25 * 10 * 32)) and large == pytest.approx(8 * 100 / (25 * 10 * 235))
    assert trigger_weight(100, 25, 50, ten_epochs, 8.0) == 1.0  # capped at the paper's λ
    embedded = cc.embed(
        "margin",
        splits,
        arch="mlp",
        params={"n_triggers": 40, "trigger_batch": 10},
        config=cc.TrainConfig(epochs=2, seed=0),
        max_cost=None,
    )
    exposure = MarginWatermark.Params().exposure
    expected = trigger_weight(40, 10, len(splits.owner_train), cc.TrainConfig(epochs=2, seed=0), exposure)
    assert embedded.key.params["lam"] == pytest.approx(expected, rel=1e-5) and 0 < expected <= 1
    given = cc.embed(
        "margin",
        splits,
        arch="mlp",
        params={"n_triggers": 40, "trigger_batch": 10, "lam": 0.3},
        config=cc.TrainConfig(epochs=1, seed=0),
        max_cost=None,
    )
    assert given.key.params["lam"] == 0.3
