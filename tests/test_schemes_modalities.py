"""Schemes on text and audio: each declares its modalities and the embedding refuses the others; DynaMarks (which
only perturbs probabilities) and the trigger set (out-of-distribution sentences and clips) proved on tiny text and
audio models, DAWN on audio, with an independently trained model not accused. Tiny data made here; seconds each."""

import numpy as np
import pytest
import torch
from conftest import TOPIC_WORDS, tiny_audio_splits, tiny_text_splits

import copycatch as cc
from copycatch.cli.main import main
from copycatch.core.errors import InvalidArgument
from copycatch.schemes import SCHEMES
from copycatch.schemes.dawn import Dawn, find_perturbations
from copycatch.schemes.dynamarks import DynaMarks

SAMPLES = 4000  # a quarter of a second at 16 kHz: enough for m5, four times quicker than 1 s
SMALL = {"text-cnn": {"embed_dim": 16, "channels": 16}, "m5": {"width": 8}}
CONFIG = cc.TrainConfig(epochs=8, batch_size=16, lr=1e-2, seed=0)


@pytest.fixture(scope="module")
def text_splits() -> cc.Splits:
    """Four topics, 400 texts of 3-8 topic words after a shared one, ids capped at 12 tokens."""
    return tiny_text_splits(400, 4, (3, 9))


@pytest.fixture(scope="module")
def audio_splits() -> cc.Splits:
    """Four 'keywords': noisy tones of 400, 900, 1,900 and 3,500 Hz at random phase, gain and onset (int16)."""
    return tiny_audio_splits(240, 4, SAMPLES, 0.05, (0.3, 0.6), ("a", "b", "c", "d"))


@pytest.fixture(scope="module")
def modal(text_splits, audio_splits):
    """modality → (splits, architecture)."""
    return {"text": (text_splits, "text-cnn"), "audio": (audio_splits, "m5")}


def _train(modal, modality: str, seed: int) -> cc.Classifier:
    splits, arch = modal[modality]
    return cc.train(arch, splits, config=cc.TrainConfig(**{**CONFIG.to_dict(), "seed": seed}), **SMALL[arch])


def test_every_scheme_declares_modalities_and_dynamarks_and_trigger_set_take_all_three():
    for name in SCHEMES.list():
        modalities = SCHEMES.get(name).factory.modalities
        assert modalities and set(modalities) <= {"image", "text", "audio"}, name
    for name in ("dynamarks", "trigger-set"):
        assert SCHEMES.get(name).factory.modalities == ("image", "text", "audio")
    assert SCHEMES.get("margin").factory.modalities == ("image",)


def test_an_image_only_scheme_refuses_text_naming_the_modalities(text_splits):
    with pytest.raises(InvalidArgument, match=r"scheme 'margin' does not apply to text data; it supports image"):
        cc.embed("margin", text_splits, arch="text-cnn", max_cost=None)


def test_the_cli_refuses_an_image_only_scheme_on_a_text_file_with_one_line(tmp_path, capsys):
    data = tmp_path / "texts.csv"
    data.write_text("text,label\n" + "".join(f"{t},{i % 4}\n" for i, t in enumerate(TOPIC_WORDS * 10)))
    out = ["-o", str(tmp_path / "v.safetensors"), "--key", str(tmp_path / "v.cckey")]
    assert main(["embed", "--scheme", "margin", "--arch", "text-cnn", "--data", str(data), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'margin' does not apply to text data; it supports image" in err


def test_embed_help_shows_each_schemes_modalities(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "dynamarks [watermark; image, text, audio]" in out and "margin [watermark; image]" in out


@pytest.mark.parametrize("modality", ["text", "audio"])
def test_dynamarks_proves_the_protected_api_and_not_an_independent_model(modal, modality):
    splits = modal[modality][0]
    victim = _train(modal, modality, seed=0)
    params = {"n_verify": 200, "range_choices": 8, "alpha": 0.7, "b": 0.19}
    result = cc.embed("dynamarks", splits, model=victim, params=params, config=CONFIG)
    assert result.info["argmax_preserved"] and result.info["perturbed_share"] > 0.5
    assert result.key["verify_x"].dtype == (torch.int64 if modality == "text" else torch.int16)
    served = DynaMarks().protect(cc.ModelOracle(result.victim), result.key)
    stolen = cc.verify(served, result.key, alpha=0.01, sequential=False).evidence
    assert stolen.verdict == "stolen", stolen.p_value
    innocent = cc.ModelOracle(_train(modal, modality, seed=1))
    assert cc.verify(innocent, result.key, alpha=0.01, sequential=False).evidence.verdict == "not stolen"


def test_dawn_refuses_text_and_proves_its_own_api_on_audio(modal):
    with pytest.raises(InvalidArgument, match="'dawn' does not apply to text data; it supports image, audio"):
        cc.embed("dawn", modal["text"][0], model=_train(modal, "text", seed=0))
    splits = modal["audio"][0]
    result = cc.embed("dawn", splits, model=_train(modal, "audio", seed=0), params={"fraction": 0.5}, max_cost=None)
    api = Dawn().protect(cc.ModelOracle(result.victim), result.key)
    api.query(splits.attacker_pool.x)  # the thief's queries: about half are answered wrongly and recorded
    records = find_perturbations(api)[0].records
    key = Dawn(fraction=0.5).with_records(
        result.key, np.stack([r.x for r in records]), [r.owner for r in records], [r.wrong for r in records]
    )
    assert cc.verify(api, key, alpha=0.01, sequential=False).evidence.verdict == "stolen"
    innocent = cc.ModelOracle(_train(modal, "audio", seed=1))
    assert cc.verify(innocent, key, alpha=0.01, sequential=False).evidence.verdict == "not stolen"


@pytest.mark.parametrize("modality", ["text", "audio"])
def test_trigger_set_proves_the_victim_with_ood_triggers_and_not_an_independent_model(modal, modality):
    splits, arch = modal[modality]
    model = cc.create_for(arch, splits, seed=0, **SMALL[arch])
    params = {"n_triggers": 30, "trigger_batch": 10}
    result = cc.embed("trigger-set", splits, model=model, params=params, config=CONFIG, max_cost=None)
    triggers = result.key["trigger_x"]
    assert triggers.dtype == (torch.int64 if modality == "text" else torch.int16)
    assert tuple(triggers.shape[1:]) == tuple(splits.input_shape)
    assert result.info["test_accuracy"] > 0.8
    stolen = cc.verify(cc.ModelOracle(result.victim), result.key, alpha=0.01, sequential=False).evidence
    assert stolen.verdict == "stolen" and stolen.exact, stolen.p_value
    innocent = cc.ModelOracle(_train(modal, modality, seed=1))
    assert cc.verify(innocent, result.key, alpha=0.01, sequential=False).evidence.verdict == "not stolen"


def test_trigger_set_keys_are_seeded_and_text_triggers_are_vocabulary_words(text_splits):
    sch = SCHEMES.create("trigger-set", n_triggers=20)
    first = sch.make_ood_trigger_set(text_splits, torch.Generator().manual_seed(3))
    again = sch.make_ood_trigger_set(text_splits, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    x, decoy, label = first
    assert ((x == 0) | (x > 1)).all() and (x[:, 0] > 1).all()  # words, then pads; never <unk>
    assert ((label != decoy) & (label >= 0) & (label < 4)).all()
    with pytest.raises(InvalidArgument, match="use 'random'"):
        SCHEMES.create("trigger-set", label_strategy="highest").make_ood_trigger_set(
            text_splits, torch.Generator().manual_seed(0)
        )
