"""Conferrable adversarial examples (a fingerprint): the calibrated null and the generation on toy models."""

import numpy as np
import pytest
import torch
from scipy import stats

from copycatch.core.errors import InvalidArgument
from copycatch.core.key import Key
from copycatch.models.base import create_for
from copycatch.models.train import TrainConfig
from copycatch.schemes import SCHEMES
from copycatch.schemes import cae as cae_module
from copycatch.schemes.cae import beta_binomial_upper_tail, fit_null

CAE = SCHEMES.get("cae").factory


@pytest.mark.parametrize(("k", "n", "mean", "rho"), [(0, 50, 0.3, 0.05), (20, 50, 0.3, 0.05), (50, 50, 0.2, 0.1)])
def test_the_beta_binomial_tail_matches_scipy(k, n, mean, rho):
    total = 1 / rho - 1
    expected = stats.betabinom.pmf(np.arange(k, n + 1), n, mean * total, (1 - mean) * total).sum()
    assert beta_binomial_upper_tail(k, n, mean, rho) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_the_tail_is_conservative_against_reference_models_that_vary():
    # References whose own agreement rate varies (Beta-distributed) agree by chance: the fitted null must keep
    # their false-positive rate at or below alpha.
    rng = np.random.default_rng(0)
    n, alpha, trials, accused = 100, 0.01, 400, 0
    for _ in range(trials):
        rates = rng.beta(6, 14, size=7)  # mean 0.3, ρ = 1/21 ≈ 0.048
        counts = rng.binomial(n, rates)
        mean, rho = fit_null(torch.tensor(counts[:6]), n, 0.05)
        accused += beta_binomial_upper_tail(int(counts[6]), n, mean, rho) <= alpha
    assert accused / trials <= alpha + 3 * np.sqrt(alpha / trials)


def test_fit_null_smooths_the_mean_and_floors_the_dispersion():
    mean, rho = fit_null(torch.tensor([0, 0, 0]), 100, 0.05)
    assert mean == pytest.approx(1 / 302) and rho == 0.05
    mean, rho = fit_null(torch.tensor([10, 50, 90]), 100, 0.05)
    assert rho > 0.3


def test_bad_parameters_name_the_value():
    with pytest.raises(InvalidArgument, match="candidates"):
        CAE(n_fingerprints=50, candidates=10)
    with pytest.raises(InvalidArgument, match="n_calibration"):
        CAE(n_calibration=1)
    with pytest.raises(InvalidArgument, match="eps"):
        CAE(eps=0)


def test_every_ensemble_cycles_through_the_architectures(tiny, monkeypatch):
    # The null must see independent models of every architecture the examples were made to move (an MLP innocent
    # agreed four times as often as same-architecture references did), so references cycle like the surrogates.
    monkeypatch.setattr(cae_module, "fit", lambda *args, **kwargs: None)  # the roles' architectures are the point
    scheme = CAE(archs=["victim", "lenet", "mlp"], n_surrogates=2, n_references=3, n_select=1, n_calibration=4)
    victim = create_for("mlp", tiny.splits, seed=0)
    ensembles = scheme._ensembles(victim, tiny.splits, TrainConfig(), progress=False)
    archs = {role: [member.arch for member in members] for role, members in ensembles.items()}
    # "victim" is the MLP itself: the repeat is dropped, so the cycle is (mlp, lenet)
    assert archs == {
        "surrogate": ["mlp", "lenet"],
        "reference": ["mlp", "lenet", "mlp"],
        "select": ["mlp"],
        "calibration": ["mlp", "lenet", "mlp", "lenet"],
    }


def test_the_evidence_names_the_architectures_its_null_was_measured_on():
    n = 20
    tensors = {
        "x": torch.zeros(n, 1, 8, 8, dtype=torch.uint8),
        "target": torch.zeros(n, dtype=torch.long),
        "calibration_agreements": torch.tensor([2, 3, 4]),
    }
    scheme = CAE(n_fingerprints=n, candidates=n)
    answers = torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), 4).float()
    for meta, named in (
        ({"arch": "cnn-small", "calibration_archs": ["cnn-small", "lenet", "mlp"]}, "cnn-small, lenet, mlp"),
        ({"arch": "cnn-small"}, "cnn-small:"),  # a key made when the references were all of the victim's
    ):
        key = Key(scheme="cae", params=scheme.params.to_dict(), tensors=tensors, meta=meta)
        evidence = scheme.evidence_from_answers(answers, key, alpha=1e-3, queries=n)
        assert any(f"architectures {named}" in note for note in evidence.notes)
        assert evidence.p_value < 1e-3  # every fingerprint answered with its target, where references gave 2-4 of 20


def test_the_null_is_that_of_the_architecture_whose_references_agree_most():
    # The calibration references of a fingerprints.py key (10,000 images, seed 1) and an innocent model of the
    # victim's architecture that answered 54 of 100 targets: models of the victim's architecture agree more often
    # than the others, so one fit over every reference accused it; the composite null takes the largest
    # per-architecture tail (the MLPs', whose two references disagree most: 2 and 17).
    n = 100
    tensors = {
        "x": torch.zeros(n, 1, 8, 8, dtype=torch.uint8),
        "target": torch.zeros(n, dtype=torch.long),
        "calibration_agreements": torch.tensor([11, 23, 2, 3, 24, 10, 17, 4]),
    }
    meta = {"arch": "cnn-small", "calibration_archs": ["cnn-small", "lenet", "mlp", "cnn"] * 2}
    scheme = CAE(n_fingerprints=n, candidates=n)
    key = Key(scheme="cae", params=scheme.params.to_dict(), tensors=tensors, meta=meta)
    agree = 54
    answers = torch.nn.functional.one_hot((torch.arange(n) >= agree).long(), 4).float()  # target 0 on the first 54
    evidence = scheme.evidence_from_answers(answers, key, alpha=1e-3, queries=n)
    counts = tensors["calibration_agreements"]
    tails = {
        arch: beta_binomial_upper_tail(agree, n, *fit_null(counts[i::4], n, 0.05))
        for i, arch in enumerate(meta["calibration_archs"][:4])
    }
    pooled = beta_binomial_upper_tail(agree, n, *fit_null(counts, n, 0.05))
    assert evidence.statistic == agree and evidence.metrics["null_arch"] == max(tails, key=tails.get)
    assert evidence.p_value == pytest.approx(max(tails.values())) and evidence.p_value > 1e-3 > pooled
    assert tails["cnn-small"] > 1e-3  # nor would the fit of the victim's own architecture alone
    everything = torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), 4).float()
    assert scheme.evidence_from_answers(everything, key, alpha=1e-3, queries=n).p_value < 1e-3  # a copy still is
    with pytest.raises(InvalidArgument, match="calibration architectures"):
        bad = Key(scheme="cae", params=key.params, tensors=tensors, meta={**meta, "calibration_archs": ["cnn"]})
        scheme.evidence_from_answers(answers, bad, alpha=1e-3, queries=n)
