"""Dataset inference (a fingerprint): the blind walk, the regressor and the permutation test on toy models."""

import itertools

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.core.errors import InvalidArgument
from copycatch.oracles.local import ModelOracle
from copycatch.schemes import SCHEMES
from copycatch.schemes.dataset_inference import (
    permutation_p_value,
    smallest_permutation_p_value,
    walk_distances,
    walk_features,
    walk_inputs,
)

SCHEME = "dataset-inference"


@pytest.fixture(scope="module")
def memorising():
    """Few, noisy examples (the scheme's ``tiny_data``): the owner's MLP memorises its training inputs."""
    data = cc.load_dataset(
        "synthetic", **{"n": 2400, "num_classes": 4, "size": 8, **SCHEMES.get(SCHEME).factory.tiny_data}
    )
    fractions = cc.SplitFractions(owner_train=0.45, owner_holdout=0.1, attacker_pool=0.45)
    splits = cc.make_splits(data, seed=0, fractions=fractions)
    owner = cc.train("mlp", splits, config=cc.TrainConfig(epochs=30, seed=0), hidden=64)
    return splits, owner


def _embed(splits, owner, seed=0):
    params = SCHEMES.get(SCHEME).factory.tiny_params
    return cc.embed(SCHEME, splits, model=owner, params=params, config=cc.TrainConfig(seed=seed), max_cost=None)


def test_the_walk_is_finite_bounded_and_reproducible_from_the_seed(memorising):
    splits, owner = memorising
    first, again, other = _embed(splits, owner), _embed(splits, owner), _embed(splits, owner, seed=1)
    # the key's contents, not its digest: the digest also binds the creation time (seconds), which runs can differ in
    assert first.key.tensors.keys() == again.key.tensors.keys()
    assert all(torch.equal(first.key[name], again.key[name]) for name in first.key.tensors)
    assert not torch.equal(first.key["x_private"], other.key["x_private"])
    scheme = cc.scheme_for_key(first.key)
    x = scheme.verification_inputs(first.key)
    assert torch.equal(x, scheme.verification_inputs(again.key)) and x.min() >= 0 and x.max() <= 1
    labels = owner(x).argmax(1)
    y = torch.cat([first.key["y_private"], first.key["y_public"]])
    p = scheme.params
    distances = walk_distances(labels, y, p.directions, p.radii)
    assert distances.shape == (len(y), p.directions) and torch.isfinite(distances).all()
    assert distances.min() >= 0 and distances.max() <= 1 and distances.std() > 0
    features = walk_features(labels, y, p.directions, p.radii)
    assert features.shape == (len(y), 4) and torch.isfinite(features).all()


def test_walk_inputs_put_the_input_first_then_each_direction_at_each_level():
    x = torch.full((2, 1, 2, 2), 0.5)
    directions = torch.stack([torch.ones(1, 2, 2), -torch.ones(1, 2, 2)])
    rows = walk_inputs(x, directions, torch.tensor([0.1, 0.6])).view(2, 5, 1, 2, 2)
    assert torch.equal(rows[:, 0], x)
    assert torch.allclose(rows[0, 1:, 0, 0, 0], torch.tensor([0.6, 1.0, 0.4, 0.0]))  # clamped to [0, 1]


def test_the_owner_and_its_surrogate_are_caught_and_innocents_are_not(memorising):
    splits, owner = memorising
    embedding = _embed(splits, owner)
    scheme = cc.scheme_for_key(embedding.key)
    assert scheme.verify(ModelOracle(owner), embedding.key, alpha=0.01).verdict == "stolen"
    surrogate = cc.steal(
        owner, splits.attacker_pool, attack="soft-label", arch="mlp", config=cc.TrainConfig(epochs=30, seed=1)
    ).surrogate
    stolen = scheme.verify(ModelOracle(surrogate), embedding.key, alpha=0.05)
    assert stolen.verdict == "stolen", stolen.summary()
    for seed in (21, 22, 23):
        innocent = cc.train("mlp", splits, on="attacker_pool", config=cc.TrainConfig(epochs=30, seed=seed), hidden=64)
        cleared = scheme.verify(ModelOracle(innocent), embedding.key, alpha=0.05)
        assert cleared.verdict == "not stolen", cleared.summary()
    assert stolen.metrics["private_walk"] > stolen.metrics["public_walk"]


def test_the_permutation_p_value_matches_full_enumeration():
    scores = np.array([0.9, 0.7, 0.8, 0.2, 0.4, 0.1, 0.75, 0.3])
    observed = scores[:4].mean() - scores[4:].mean()
    splits = [np.array(c) for c in itertools.combinations(range(8), 4)]
    stats = [scores[c].mean() - np.delete(scores, c).mean() for c in splits]
    exact = np.mean([s >= observed - 1e-12 for s in stats])
    statistic, p = permutation_p_value(scores, 4, 70, seed=3)  # 70 splits: every one is enumerated
    assert statistic == pytest.approx(observed) and p == pytest.approx(exact, rel=1e-12)
    statistic, p = permutation_p_value(scores, 4, 69, seed=3)  # fewer relabellings than splits: drawn at random
    assert p == pytest.approx(exact, abs=0.08)
    assert smallest_permutation_p_value(4, 4, 70) == 1 / 70 and smallest_permutation_p_value(4, 4, 69) == 1 / 70
    assert smallest_permutation_p_value(20, 20, 99) == 1 / 100
    assert smallest_permutation_p_value(1000, 1000, 99_999) == 1e-5  # C(2000, 1000) is far beyond a float


def test_the_permutation_p_value_is_uniform_when_the_groups_are_exchangeable():
    rng = np.random.default_rng(0)
    ps = np.array([permutation_p_value(rng.normal(size=40), 20, 199, seed=i)[1] for i in range(300)])
    for level in (0.05, 0.2, 0.5):
        rate = np.mean(ps <= level)
        assert abs(rate - level) < 3.5 * np.sqrt(level * (1 - level) / len(ps)), (level, rate)


def test_bad_parameters_and_too_little_data_name_the_value(memorising):
    splits, owner = memorising
    with pytest.raises(InvalidArgument, match="max_radius"):
        SCHEMES.get(SCHEME).factory(min_radius=0.5, max_radius=0.1)
    with pytest.raises(InvalidArgument, match="permutations"):
        SCHEMES.get(SCHEME).factory(permutations=5)
    with pytest.raises(InvalidArgument, match="n_fit \\+ n_test"):
        cc.embed(SCHEME, splits, model=owner, params={"n_fit": 400, "n_test": 400}, max_cost=None)
