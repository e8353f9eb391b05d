"""Conferrable adversarial examples (a fingerprint): the calibrated null and the generation on toy models."""

import numpy as np
import pytest
import torch
from scipy import stats

from copycatch.core.errors import InvalidArgument
from copycatch.schemes import SCHEMES
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
