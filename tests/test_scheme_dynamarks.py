"""DynaMarks on tiny data: the API-time perturbation, Algorithm 2's η and the exact secret-randomisation null."""

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.core.key import Key
from copycatch.core.stats import independent_choices_greater
from copycatch.models.io import weights_digest
from copycatch.schemes.dynamarks import DynaMarks, DynaMarksPerturbation, candidate_responses


@pytest.fixture(scope="module")
def victim(splits):
    return cc.train("mlp", splits, config=cc.TrainConfig(epochs=5, seed=0))


@pytest.fixture(scope="module")
def embedded(splits, victim, tiny):
    return cc.embed(
        "dynamarks", splits, model=victim, params=tiny.params("dynamarks"), config=cc.TrainConfig(epochs=5, seed=0)
    )


def protected(embedded):
    return DynaMarks().protect(cc.ModelOracle(embedded.victim), embedded.key)


def test_embed_leaves_the_weights_untouched(splits, tiny):
    model = cc.train("mlp", splits, config=cc.TrainConfig(epochs=1, seed=2), hidden=32)
    before = weights_digest(model)
    result = cc.embed("dynamarks", splits, model=model, params=tiny.params("dynamarks"))
    assert weights_digest(result.victim) == before == result.key.meta["victim_sha256"]
    assert result.info["weights_untouched"] and result.info["argmax_preserved"]


def test_api_answers_keep_the_predicted_class_and_move_mass_as_algorithm_1(embedded, splits):
    raw = cc.ModelOracle(embedded.victim).query(splits.test.x)
    answers = protected(embedded).query(splits.test.x)
    assert torch.equal(answers.argmax(1), raw.argmax(1))  # accuracy is preserved exactly
    assert torch.allclose(answers.sum(1), torch.ones(len(answers)), atol=1e-5) and (answers >= 0).all()
    change = (answers - raw).double()
    top = raw.argmax(1)
    moved = -change[torch.arange(len(raw)), top]
    perturbed = moved > 1e-6
    eligible = raw.max(1).values > 0.9
    assert perturbed.any() and not perturbed[~eligible].any()  # only confident answers are touched
    assert ((moved[perturbed] >= 0.01 - 1e-5) & (moved[perturbed] <= 0.19 + 1e-5)).all()
    # the mass goes to exactly one other class
    gained = (change > 1e-6).sum(1)
    assert (gained[perturbed] == 1).all()


def test_repeated_queries_draw_fresh_noise(embedded, splits):
    oracle = protected(embedded)
    x = splits.test.x[:50]
    first, second = oracle.query(x), oracle.query(x)
    assert not torch.equal(first, second) and torch.equal(first.argmax(1), second.argmax(1))


def test_protected_api_is_stolen_and_raw_victim_and_innocent_are_not(embedded, tiny, innocent):
    evidence = cc.verify(protected(embedded), embedded.key, sequential=False).evidence
    assert evidence.verdict == "stolen" and evidence.exact and evidence.p_value <= 1e-3
    assert evidence.metrics["eta"] > 1 and evidence.metrics["paper_detected"]
    assert evidence.queries == tiny.params("dynamarks")["n_verify"]
    raw = cc.verify(
        embedded.victim, embedded.key, alpha=0.05, sequential=False
    ).evidence  # the weights carry no mark: the API does
    assert raw.verdict == "not stolen" and raw.metrics["eta"] < 1
    assert cc.verify(innocent, embedded.key, alpha=0.05, sequential=False).evidence.verdict == "not stolen"


def test_label_only_suspects_are_refused(embedded):
    with pytest.raises(cc.CopycatchError, match="labels only"):
        cc.verify(cc.ModelOracle(embedded.victim).postprocess("hard-label"), embedded.key, sequential=False)
    assert DynaMarks.needs == "probs" and DynaMarks.acts_at == "api"


def _keys(embedded, draws, seed=0):
    """Keys that differ from the embedded one only in an independently drawn secret."""
    g = torch.Generator().manual_seed(seed)
    base = embedded.key
    n = base.meta["num_classes"]
    for _ in range(draws):
        tensors = dict(base.tensors)
        tensors["favoured"] = torch.randint(n, (n,), generator=g)
        tensors["range_index"] = torch.randint(base.params["range_choices"], (n,), generator=g)
        yield Key("dynamarks", base.params, tensors, dict(base.meta))


def _weak_innocent():
    weak_data = cc.load_dataset("synthetic", n=2400, num_classes=4, size=8, noise=0.9, seed=0)
    return cc.train("mlp", cc.make_splits(weak_data, seed=0), config=cc.TrainConfig(epochs=1, seed=1), hidden=16)


@pytest.mark.parametrize("which", ["weakly trained", "independent"])
def test_secret_randomisation_null_is_exact(embedded, which, tiny, innocent):
    """300 independent secrets against an innocent model: p-values (near) uniform, FPR at 0.05 <= 0.07.
    η alone (the paper's τ = 1) would often accuse the under-confident weak model."""
    model = _weak_innocent() if which == "weakly trained" else innocent
    scheme = DynaMarks(**tiny.params("dynamarks"))
    answers = cc.ModelOracle(model).query(scheme.verification_inputs(embedded.key))
    evidence = [scheme.evidence_from_answers(answers, key, alpha=0.05, queries=0) for key in _keys(embedded, 300)]
    p = np.array([ev.p_value for ev in evidence])
    assert np.mean(p <= 0.05) <= 0.07
    for u in (0.01, 0.05, 0.1, 0.25, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / len(p)), u
    assert np.mean(p <= 0.5) >= 0.25, "p-values piled up at 1: the test would have no power"
    if which == "weakly trained":
        # η > τ = 1 for about a quarter of the secrets: a hand-set τ would accuse this innocent model that often
        assert np.mean([ev.metrics["paper_detected"] for ev in evidence]) > 0.1


def test_verification_replays_exactly_what_the_api_computes(embedded, tiny):
    """Each class's candidate secrets are simulated in one batch; the true one must equal Algorithm 1 itself."""
    params = tiny.params("dynamarks")
    key, scheme = embedded.key, DynaMarks(**params)
    org = key["verify_org"].double()
    u_delta, u_index = scheme._replay_draws(key)
    replay = scheme.secret(key).perturb(org, u_delta, u_index)
    for i in range(4):
        members = org.argmax(1) == i
        candidates = candidate_responses(scheme.params, i, org[members], u_delta[members], u_index[members])
        true_index = int(key["favoured"][i]) * params["range_choices"] + int(key["range_index"][i])
        assert torch.equal(candidates[true_index], replay[members])
        assert candidates.shape == (4 * params["range_choices"], int(members.sum()), 4)


def test_independent_choices_tail_matches_brute_force():
    import itertools

    rng = np.random.default_rng(0)
    for _ in range(100):
        scores = [rng.random(rng.integers(1, 5)) for _ in range(rng.integers(1, 4))]
        chosen = [int(rng.integers(len(s))) for s in scores]
        observed = sum(s[c] for s, c in zip(scores, chosen))
        combos = itertools.product(*[range(len(s)) for s in scores])
        exact = np.mean([sum(s[c] for s, c in zip(scores, combo)) >= observed - 1e-12 for combo in combos])
        p = independent_choices_greater(scores, chosen)
        assert exact - 1e-12 <= p <= exact + 0.05  # conservative, and only just


def test_independent_choices_slack_lowers_the_bar_exactly_on_integer_scores():
    import itertools

    rng = np.random.default_rng(1)
    for _ in range(50):
        scores = [rng.integers(0, 6, rng.integers(1, 5)) for _ in range(rng.integers(1, 4))]
        chosen = [int(rng.integers(len(s))) for s in scores]
        slack = int(rng.integers(0, 5))
        observed = sum(s[c] for s, c in zip(scores, chosen))
        combos = itertools.product(*[range(len(s)) for s in scores])
        exact = np.mean([sum(s[c] for s, c in zip(scores, combo)) >= observed - slack for combo in combos])
        assert independent_choices_greater(scores, chosen, slack=slack) == pytest.approx(exact, abs=1e-12)
    with pytest.raises(cc.CopycatchError, match="slack"):
        independent_choices_greater([[0, 1]], [0], slack=-1)


def test_parameters_that_could_change_the_prediction_are_refused():
    with pytest.raises(cc.CopycatchError, match="change the predicted class"):
        DynaMarks(alpha=0.6, b=0.19)
    with pytest.raises(cc.CopycatchError, match="alpha < beta"):
        DynaMarks(alpha=0.95, beta=0.9)
    assert DynaMarks().params.alpha == 0.9 and DynaMarks().params.b == 0.19


def test_key_is_small_and_holds_the_secret(embedded):
    key = embedded.key
    assert key["verify_x"].dtype == torch.uint8 and key["favoured"].shape == (4,)
    assert set(key.tensors) == {"favoured", "range_index", "verify_x", "verify_org", "verify_seed", "api_seed"}
    post = DynaMarksPerturbation(DynaMarks().secret(key), 0)
    assert post.spec() == "dynamarks"  # the served spec does not leak the secret
