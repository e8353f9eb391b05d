"""Generated over the scheme registry: anything registered embeds, verifies its own victim, clears an innocent
model, and round-trips its key, on tiny synthetic data with the scheme's ``tiny_params``."""

import pytest
from conftest import classifier_entries

import copycatch as cc
from copycatch.core.key import Key
from copycatch.models.io import weights_digest
from copycatch.oracles.local import ModelOracle
from copycatch.schemes import SCHEMES

CLASSIFIER_SCHEMES = classifier_entries(SCHEMES)


@pytest.fixture(scope="module")
def innocent(splits):  # not the shared one (seed 5): every scheme has been cleared against this one, seed 11
    return cc.train("mlp", splits, on="attacker_pool", config=cc.TrainConfig(epochs=4, seed=11), hidden=64)


def _setting(cls, tiny, innocent):
    """The tiny split and innocent model for ``cls``: the shared ones, or ones made from its ``tiny_data``."""
    if not cls.tiny_data:
        return tiny, innocent
    own = tiny.for_scheme(cls.name)
    return own, cc.train("mlp", own.splits, on="attacker_pool", config=cc.TrainConfig(epochs=4, seed=11), hidden=64)


@pytest.mark.parametrize("name", CLASSIFIER_SCHEMES)
def test_every_scheme_catches_its_victim_and_clears_an_innocent(name, innocent, tmp_path, tiny):
    cls = SCHEMES.get(name).factory
    assert cls.__doc__ and cls.null_hypothesis, f"{name} must document itself and its null hypothesis"
    tiny, innocent = _setting(cls, tiny, innocent)
    embedding = tiny.embed(name, epochs=8)
    key_path = embedding.key.save(tmp_path / f"{name}.cckey")
    key = Key.load(key_path)
    assert key.digest == embedding.key.digest
    scheme = cc.scheme_for_key(key)
    victim_api = scheme.protect(ModelOracle(embedding.victim), key)
    caught = scheme.verify(victim_api, key, alpha=0.01)
    assert caught.verdict == "stolen", caught.summary()
    assert caught.queries > 0 and caught.null_hypothesis
    cleared = scheme.verify(ModelOracle(innocent), key, alpha=0.01)
    assert cleared.verdict == "not stolen", cleared.summary()
    assert 0.0 <= cleared.p_value <= 1.0


@pytest.mark.parametrize("name", SCHEMES.list())
def test_every_scheme_documents_its_parameters(name):
    cls = SCHEMES.get(name).factory
    doc = (cls.__module__ and __import__(cls.__module__, fromlist=["_"]).__doc__) or ""
    for field, _, _ in cls.Params.describe():
        assert field in doc or field in (cls.__doc__ or ""), f"{name}: parameter {field!r} is not documented"


@pytest.mark.parametrize("name", [n for n in SCHEMES.list() if SCHEMES.get(n).factory.kind == "fingerprint"])
def test_a_fingerprint_leaves_the_model_bytes_unchanged(name, tiny, innocent, tmp_path):
    cls = SCHEMES.get(name).factory
    tiny, _ = _setting(cls, tiny, innocent)
    model = cc.train("mlp", tiny.splits, config=tiny.config(epochs=8), hidden=64)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    embedding = cc.embed(name, tiny.splits, model=model, params=tiny.params(name), config=tiny.config(), max_cost=None)
    assert embedding.victim is model and embedding.info["weights_untouched"]
    after = embedding.victim.state_dict()
    assert before.keys() == after.keys()
    assert all(before[n].numpy().tobytes() == after[n].numpy().tobytes() for n in before)
    assert embedding.key.meta["victim_sha256"] == weights_digest(model)
    assert embedding.info["accuracy_cost"]["cost_points"] == 0.0
