"""Shared fixtures: tiny seeded data and models so every test runs in seconds on a CPU.

The suite's tiny settings live in one place, the session fixture ``tiny`` (:class:`Tiny`): the data split the
tests share, the training recipe (and its ``copycatch`` flags), each scheme's and each removal attack's parameters
at toy size, and a benchmark grid. ``splits``, ``trained`` and ``innocent`` are the objects built from it that most
tests take directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

os.environ.setdefault("COPYCATCH_PROGRESS", "0")
# The CLI draws each key's secret seed at random; the suite derives keys from the training seed, as the library
# does, so every run makes the same keys (tests/test_trust.py checks the random default itself).
os.environ.setdefault("COPYCATCH_KEY_SEED", "training")

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.bench import Grid, parse_grid
from copycatch.schemes import SCHEMES, Embedding

# Tiny models run fastest on one thread; OMP_NUM_THREADS, when set, wins.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))


@dataclasses.dataclass(frozen=True)
class Tiny:
    """Toy-size settings: what a test changes from them, it spells out (``tiny.config(epochs=10)``)."""

    splits: cc.Splits
    # parameters that keep every removal attack to a fraction of a second on the toy MLP
    REMOVAL: ClassVar[dict[str, dict[str, Any]]] = {
        "neural-cleanse": {"steps": 60, "batch_size": 32},
        "piracy": {"scheme_params": "n_triggers=20;trigger_batch=5;lam=1"},
        "reject": {"reference": 200},
        "adv-overwrite": {"n": 200},
    }

    # a benchmark grid of two seeds, one scheme and one attack at two budgets: a few seconds per cell
    GRID: ClassVar[str] = """
name: tiny
seeds: [0, 1]
alpha: 0.01
data: {name: synthetic, fractions: {owner_train: 0.45, owner_holdout: 0.1, attacker_pool: 0.45}}
victim: {arch: mlp, arch_kwargs: {hidden: 128}, train: {epochs: 8, batch_size: 64}}
schemes:
  - {name: margin, params: {n_triggers: 30, trigger_batch: 10, lam: 1}}
attacks:
  - extraction: {name: soft-label, arch: mlp, arch_kwargs: {hidden: 32}, train: {epochs: 6},
                 sweep: {budget: [300, 600]}}
"""

    # -- training ----------------------------------------------------------------------------------------------------

    @staticmethod
    def config(**changes: Any) -> cc.TrainConfig:
        """The training recipe of the suite's models (3 epochs, seed 0, otherwise TrainConfig's defaults)."""
        return cc.TrainConfig(**{"epochs": 3, "seed": 0, **changes})

    @classmethod
    def flags(cls, **changes: Any) -> list[str]:
        """The same recipe as ``copycatch`` training options (the CLI's defaults for everything else)."""
        c = cls.config(**changes)
        return ["--epochs", str(c.epochs), "--batch-size", str(c.batch_size), "--seed", str(c.seed)]

    @property
    def thief_training(self) -> cc.TrainConfig:
        """A thief's surrogate training: 2 epochs."""
        return self.config(epochs=2)

    @property
    def removal_training(self) -> cc.TrainConfig:
        """The training inside removal attacks (fine-tuning and the like): 2 epochs in batches of 64."""
        return self.config(epochs=2, batch_size=64)

    # -- schemes, attacks, grids ------------------------------------------------------------------------------------

    @staticmethod
    def params(scheme: str, **changes: Any) -> dict[str, Any]:
        """A scheme's parameters at toy size: its ``tiny_params``, with ``changes``.

        Each scheme declares its own ``tiny_params`` (beside its paper defaults) so that the tests generated over
        the registry cover a newly registered scheme with no edit here.
        """
        return {**SCHEMES.get(scheme).factory.tiny_params, **changes}

    def for_scheme(self, scheme: str) -> Tiny:
        """This tiny split, or, for a scheme that declares ``tiny_data`` (its signal needs other toy data), a tiny
        split made from it."""
        extra = SCHEMES.get(scheme).factory.tiny_data
        if not extra:
            return self
        data = cc.load_dataset("synthetic", **{"n": 2400, "num_classes": 4, "size": 8, **extra})
        return Tiny(cc.make_splits(data, seed=0, fractions=self.splits.fractions))

    def embed(self, scheme: str, *, epochs: int, **changes: Any) -> Embedding:
        """``scheme`` embedded into a fresh MLP on the tiny split: its tiny parameters with ``changes``. No accuracy
        limit (``max_cost=None``): toy marks cost toy models more than the guard allows, and the guard has tests of
        its own (tests/test_accuracy_cost.py)."""
        return cc.embed(
            scheme,
            self.splits,
            arch="mlp",
            params=self.params(scheme, **changes),
            config=self.config(epochs=epochs),
            max_cost=None,
        )

    @classmethod
    def removal(cls, attack: str) -> dict[str, Any]:
        """A removal attack's parameters at toy size (its defaults when none are listed)."""
        return dict(cls.REMOVAL.get(attack, {}))

    @classmethod
    def grid(cls, **replace: str) -> Grid:
        """:attr:`GRID` with each ``old`` text replaced by its ``new`` one, parsed as ``tiny.yaml``."""
        text = cls.GRID
        for old, new in replace.items():
            text = text.replace(old, new)
        return parse_grid(text, source="tiny.yaml")


def classifier_entries(registry) -> list[str]:
    """A registry's entries for classifiers: encoder schemes and thieves (``target = "encoder"``) verify or query
    embedding oracles and have their own tests (tests/test_encoders.py)."""
    return [n for n in registry.list() if getattr(registry.get(n).factory, "target", "classifier") != "encoder"]


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    """Synthetic 1×8×8, 4 classes; owner_holdout is large enough for 40-trigger keys."""
    data = cc.load_dataset("synthetic", n=2400, num_classes=4, size=8, noise=0.25, seed=0)
    fractions = cc.SplitFractions(owner_train=0.45, owner_holdout=0.1, attacker_pool=0.45)
    return Tiny(cc.make_splits(data, seed=0, fractions=fractions))


@pytest.fixture(scope="session")
def splits(tiny):
    """``tiny.splits``: the data nearly every test takes."""
    return tiny.splits


@pytest.fixture(scope="session")
def trained(tiny):
    """A small MLP trained on owner_train (the owner's clean model)."""
    return cc.train("mlp", tiny.splits, config=tiny.config(), hidden=64)


@pytest.fixture(scope="session")
def innocent(tiny):
    """An MLP trained with true labels on the attacker pool: independent of every key, so never "stolen"."""
    return cc.train("mlp", tiny.splits, on="attacker_pool", config=tiny.config(epochs=4, seed=5), hidden=64)


# -- tiny text and audio data, built in memory -------------------------------------------------------------------------

TOPIC_WORDS = (
    "goal match team coach league score player season",
    "market stock profit bank trade price share investor",
    "storm rain wind cloud snow forecast weather flood",
    "doctor nurse patient clinic fever medicine hospital cure",
)
TOPIC_NAMES = ("sport", "business", "weather", "health")
TONES_HZ = (400, 900, 1900, 3500)


@pytest.fixture(scope="session")
def margin_embedding(splits):
    """A margin-watermarked tiny MLP, shared by the tests that verify it through servers and suspect protocols."""
    return cc.embed(
        "margin",
        splits,
        arch="mlp",
        params={"n_triggers": 30, "trigger_batch": 10},
        config=cc.TrainConfig(epochs=6, seed=0),
        max_cost=None,
    )


@pytest.fixture(scope="session")
def margin_key_file(margin_embedding, tmp_path_factory):
    return margin_embedding.key.save(tmp_path_factory.mktemp("keys") / "victim.cckey")


def verify_cli(capsys, *argv):
    """``copycatch verify -q ARGV`` in-process: (exit status, stdout, stderr)."""
    from copycatch.cli.main import main

    code = main(["verify", "-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_text_splits(n: int, classes: int, words: tuple[int, int]) -> cc.Splits:
    """``n`` texts of ``classes`` topics (at most four): a shared word, then ``words[0]``..``words[1] - 1`` words of
    the text's topic, seeded; ids capped at 12 tokens."""
    from copycatch.data import Dataset, VocabularySettings

    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(n):
        texts.append(" ".join(["the", *rng.choice(TOPIC_WORDS[i % classes].split(), size=rng.integers(*words))]))
        labels.append(i % classes)
    settings = VocabularySettings(max_length=12, min_freq=1)
    data = Dataset.from_texts("tiny-text", texts, torch.tensor(labels), TOPIC_NAMES[:classes], settings=settings)
    return cc.make_splits(data, seed=0)


def tiny_audio_splits(
    n: int, classes: int, samples: int, onset: float, gain: tuple[float, float], names: tuple[str, ...]
) -> cc.Splits:
    """``n`` clips of ``samples`` int16 samples at 16 kHz: a noisy tone per class (at most four) at a random phase,
    gain and onset (up to ``onset`` seconds), seeded."""
    from copycatch.data import Dataset

    rng = np.random.default_rng(0)
    t = np.arange(samples) / 16000
    clips, labels = [], []
    for i in range(n):
        tone = np.sin(2 * np.pi * TONES_HZ[i % classes] * t + rng.uniform(0, 2 * np.pi))
        tone *= (t > rng.uniform(0, onset)) * rng.uniform(*gain)
        clips.append(tone + rng.normal(0, 0.05, samples))
        labels.append(i % classes)
    x = torch.from_numpy((np.clip(np.stack(clips), -1, 1) * 32767).astype(np.int16)).unsqueeze(1)
    data = Dataset("tiny-audio", x, torch.tensor(labels), classes, names, modality="audio", sample_rate=16000)
    return cc.make_splits(data, seed=0)


class JsonHandler(BaseHTTPRequestHandler):
    """A fake suspect server's request handler: quiet, and ``_send`` replies JSON (or given bytes)."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, status, payload, headers=()):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout tests)
            self.wfile.write(body)


def margin_null_draws(scheme: Any, holdout: cc.Splits, model: Any, *, first_seed: int, draws: int = 300):
    """``draws`` independent margin keys (trigger sets drawn with seeds from ``first_seed``) verified against one
    innocent ``model``: their p-values (an array) and how many triggers the model misclassified for each."""
    from copycatch.core.key import Key

    p_values, misclassified = [], []
    for draw in range(draws):
        x_u8, true, labels = scheme.make_trigger_set(holdout, torch.Generator().manual_seed(first_seed + draw))
        key = Key(
            "margin",
            scheme.params.to_dict(),
            {"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
            {"num_classes": holdout.num_classes, "input_shape": list(holdout.input_shape)},
        )
        evidence = scheme.verify(cc.ModelOracle(model), key, alpha=0.05)
        p_values.append(evidence.p_value)
        misclassified.append(evidence.metrics["misclassified"])
    return np.array(p_values), misclassified
