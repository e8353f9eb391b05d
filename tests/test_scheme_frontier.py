"""Frontier stitching on tiny data: key construction, stitching, the exact control test and the paper's null."""

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.core.key import Key
from copycatch.core.stats import hypergeometric_greater
from copycatch.models.train import predict_logits
from copycatch.schemes.frontier_stitching import (
    CONTROL,
    FALSE_ADVERSARY,
    TRUE_ADVERSARY,
    FrontierStitching,
    paper_threshold,
)


@pytest.fixture(scope="module")
def embedded(tiny):
    return tiny.embed("frontier-stitching", epochs=5)


@pytest.fixture(scope="module")
def clean(splits):
    return cc.train("mlp", splits, config=cc.TrainConfig(epochs=5, seed=0))


def test_victim_is_stitched_and_stolen(embedded, splits, tiny):
    params, info = tiny.params("frontier-stitching"), embedded.info
    assert info["stitched"] and 1 <= info["finetune_epochs"] <= params["max_epochs"]
    # fine-tuning stopped at the first check that found the key stitched: a multiple of check_every or an epoch end
    steps_per_epoch = -(-len(splits.owner_train) // cc.TrainConfig().batch_size)
    steps = info["finetune_steps"]
    assert 0 < steps <= info["finetune_epochs"] * steps_per_epoch
    assert steps % FrontierStitching.Params().check_every == 0 or steps % steps_per_epoch == 0
    assert info["key_accuracy_per_epoch"][-1] == 1.0 and "pretrained_clean" in info
    evidence = cc.verify(embedded.victim, embedded.key, sequential=False).evidence
    assert evidence.verdict == "stolen" and evidence.exact and evidence.p_value <= 1e-3
    m = evidence.metrics
    assert (
        m["hamming_distance"] == 0
        and m["paper_detected"]
        and m["true_adversaries_matched"] == params["key_length"] // 2
    )
    assert evidence.queries == params["key_length"] + params["n_control"]
    assert cc.accuracy(embedded.victim, splits.test) >= 0.9


def test_innocent_model_is_cleared(embedded, innocent_models):
    evidence = cc.verify(innocent_models["independent"], embedded.key, alpha=0.05, sequential=False).evidence
    assert evidence.verdict == "not stolen"


def test_label_only_suspects_verify_the_same(embedded):
    soft = cc.verify(embedded.victim, embedded.key, sequential=False).evidence
    hard = cc.verify(cc.ModelOracle(embedded.victim).postprocess("hard-label"), embedded.key, sequential=False).evidence
    assert hard.p_value == soft.p_value and hard.metrics == soft.metrics


def test_key_holds_true_false_and_control_adversaries_of_the_clean_model(clean, splits, tiny):
    params = tiny.params("frontier-stitching")
    scheme = FrontierStitching(**params)
    tensors = scheme.make_key(clean, splits, torch.Generator().manual_seed(3))
    roles, labels, x = tensors["key_role"], tensors["key_label"], tensors["key_x"]
    half = params["key_length"] // 2
    assert x.dtype == torch.uint8 and len(x) == params["key_length"] + params["n_control"]
    assert [int((roles == r).sum()) for r in (FALSE_ADVERSARY, TRUE_ADVERSARY, CONTROL)] == [
        half,
        half,
        params["n_control"],
    ]
    pred = predict_logits(clean, x.float() / 255).argmax(1)
    assert (pred[roles == FALSE_ADVERSARY] == labels[roles == FALSE_ADVERSARY]).all()  # still correct
    assert (pred[roles != FALSE_ADVERSARY] != labels[roles != FALSE_ADVERSARY]).all()  # flipped by FGSM
    # each adversary lies within eps (plus rounding to 1/255) of some owner-training input
    distance = (x.float()[:, None] / 255 - splits.owner_train.x[None]).flatten(2).abs().amax(2).amin(1)
    assert (distance <= params["eps"] + 0.5 / 255 + 1e-6).all()


def test_paper_threshold_matches_the_paper():
    assert paper_threshold(100, 0.05) == 42 and paper_threshold(20, 0.05) == 6
    assert paper_threshold(4, 0.05) == 0  # even a perfect match of 4 bits is not significant


def test_hypergeometric_tail_is_fishers_exact_test():
    from scipy.stats import fisher_exact

    for hits, controls in [(50, 22), (10, 10), (3, 12), (0, 0)]:
        table = [[hits, 50 - hits], [controls, 50 - controls]]
        expected = fisher_exact(table, alternative="greater").pvalue
        assert hypergeometric_greater(hits, 100, hits + controls, 50) == pytest.approx(expected, rel=1e-9)


@pytest.fixture(scope="module")
def innocent_models(innocent):
    weak_data = cc.load_dataset("synthetic", n=2400, num_classes=4, size=8, noise=0.9, seed=0)
    weak = cc.train("mlp", cc.make_splits(weak_data, seed=0), config=cc.TrainConfig(epochs=1, seed=1), hidden=16)
    return {"weakly trained": weak, "independent": innocent}


@pytest.fixture(scope="module")
def adversary_pool(clean, splits):
    """100 true and 100 false adversaries of the clean model at eps = 0.15, to draw many keys from cheaply."""
    return FrontierStitching(eps=0.15).find_adversaries(clean, splits, torch.Generator().manual_seed(9), 100, 100)


def _random_keys(scheme, pool, draws, seed):
    """Keys as make_key builds them, from random subsets of a fixed adversary pool."""
    true_x, true_y, false_x, false_y = pool
    half, n_control = scheme.params.key_length // 2, scheme.params.n_control
    g = torch.Generator().manual_seed(seed)
    for _ in range(draws):
        t = torch.randperm(len(true_x), generator=g)[: half + n_control]
        f = torch.randperm(len(false_x), generator=g)[:half]
        tensors = scheme.assemble_key(true_x[t], true_y[t], false_x[f], false_y[f], g)
        yield Key("frontier-stitching", scheme.params.to_dict(), tensors, {"num_classes": 4, "input_shape": [1, 8, 8]})


@pytest.mark.parametrize("which", ["weakly trained", "independent"])
def test_control_null_is_exact_over_independent_keys(innocent_models, adversary_pool, which):
    """300 independently drawn keys against an innocent model: p-values (near) uniform, FPR at 0.05 <= 0.07."""
    model = innocent_models[which]
    scheme = FrontierStitching(eps=0.15, key_length=20, n_control=20)
    oracle = cc.ModelOracle(model)
    p_values, matched = [], []
    for key in _random_keys(scheme, adversary_pool, 300, seed=20_000):
        ev = scheme.verify(oracle, key, alpha=0.05)
        p_values.append(ev.p_value)
        matched.append(ev.metrics["true_adversaries_matched"] + ev.metrics["controls_matched"])
    p = np.array(p_values)
    assert 3 < np.mean(matched) < 27, "the innocent model must match some but not all true adversaries"
    assert np.mean(p <= 0.05) <= 0.07
    n = len(p)
    for u in (0.01, 0.05, 0.1, 0.25, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / n), u
    assert np.mean(p <= 0.5) >= 0.25, "p-values piled up at 1: the test would have no power"


def test_paper_null_is_flagged_and_can_accuse_an_innocent_model(innocent_models, adversary_pool):
    """At a small eps an independent model matches most of the key: the paper's Binomial(|K|, 1/2) model accuses it,
    which is why the evidence calls that p-value approximate and the exact control test is the default."""
    innocent = innocent_models["independent"]
    paper = FrontierStitching(eps=0.15, key_length=20, n_control=20, null="paper")
    control = FrontierStitching(eps=0.15, key_length=20, n_control=20)
    accused_paper = accused_control = 0
    for key in _random_keys(paper, adversary_pool, 40, seed=30_000):
        ev_paper = paper.verify(cc.ModelOracle(innocent), key, alpha=0.05)
        ev_control = control.verify(
            cc.ModelOracle(innocent), Key(key.scheme, control.params.to_dict(), key.tensors, key.meta), alpha=0.05
        )
        assert not ev_paper.exact and "assumption" in ev_paper.notes[0] and ev_control.exact
        same = {k: v for k, v in ev_paper.metrics.items() if k != "smallest_attainable_p"}  # each null's own floor
        assert same == {k: v for k, v in ev_control.metrics.items() if k != "smallest_attainable_p"}
        accused_paper += ev_paper.decision
        accused_control += ev_control.decision
    assert accused_paper / 40 > 0.2 and accused_control / 40 <= 0.1


def test_impossible_eps_and_bad_parameters_are_one_line_errors(clean, splits):
    with pytest.raises(cc.CopycatchError, match=r"eps=0\.001 gave 0 true"):
        FrontierStitching(eps=0.001, key_length=20, n_control=20).make_key(
            clean, splits, torch.Generator().manual_seed(0)
        )
    with pytest.raises(cc.CopycatchError, match="key_length must be an even"):
        FrontierStitching(key_length=15)
    with pytest.raises(cc.CopycatchError, match="n_control >= 1"):
        FrontierStitching(n_control=0)
    assert FrontierStitching(n_control=0, null="paper").params.n_control == 0
    with pytest.raises(cc.CopycatchError, match="unknown"):
        FrontierStitching(epsilon=0.1)


def test_false_adversaries_missing_at_a_large_eps_are_found_at_a_smaller_step(clean, splits):
    """At eps = 1 every correctly classified input flips (a true adversary); the false ones come from eps/2, eps/4."""
    scheme = FrontierStitching(eps=1.0)
    generator = torch.Generator().manual_seed(3)
    true_x, true_y, false_x, false_y = scheme.find_adversaries(clean, splits, generator, 20, 20)
    assert len(true_x) == 20 and len(false_x) == 20
    assert (predict_logits(clean, true_x.float() / 255).argmax(1) != true_y).all()
    assert (predict_logits(clean, false_x.float() / 255).argmax(1) == false_y).all()
