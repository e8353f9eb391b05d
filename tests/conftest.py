"""Shared fixtures: tiny seeded data and models so every test runs in seconds on a CPU."""

from __future__ import annotations

import os

os.environ.setdefault("COPYCATCH_PROGRESS", "0")

import pytest
import torch

import copycatch as cc

# Tiny models run fastest on one thread; OMP_NUM_THREADS, when set, wins.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))


@pytest.fixture(scope="session")
def splits():
    """Synthetic 1×8×8, 4 classes; owner_holdout is large enough for 40-trigger keys."""
    data = cc.load_dataset("synthetic", n=2400, num_classes=4, size=8, noise=0.25, seed=0)
    return cc.make_splits(
        data, seed=0, fractions=cc.SplitFractions(owner_train=0.45, owner_holdout=0.1, attacker_pool=0.45)
    )


@pytest.fixture(scope="session")
def trained(splits):
    """A small MLP trained on owner_train (the owner's clean model)."""
    return cc.train("mlp", splits, config=cc.TrainConfig(epochs=3, seed=0), hidden=64)


@pytest.fixture()
def tiny_config():
    return cc.TrainConfig(epochs=3, batch_size=64, seed=0)
