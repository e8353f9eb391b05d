"""Text and audio architectures: the modality each declares, forward passes and pad masking, a few training steps,
model files, create_for's modality check and `copycatch models list` (all on tiny data made here)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_audio_splits, tiny_text_splits

import copycatch as cc
from copycatch.cli.main import main
from copycatch.core.errors import InvalidArgument
from copycatch.models import list_models, model_modality, register_model
from copycatch.models.io import read_model_info
from copycatch.models.train import train_model

TEXT = ("lstm", "text-cnn", "transformer")
AUDIO = ("m5", "logmel-cnn")
SAMPLES = 4000  # a quarter of a second at 16 kHz: enough for every audio architecture, four times quicker than 1 s
# CPU-light sizes for the training test (the forward and file tests use the defaults)
SMALL = {
    "lstm": {"embed_dim": 16, "hidden": 16},
    "text-cnn": {"embed_dim": 16, "channels": 8},
    "transformer": {"d_model": 16, "heads": 2, "head": 16},
    "m5": {"width": 8},
    "logmel-cnn": {"width": 8},
}


@pytest.fixture(scope="module")
def text_splits() -> cc.Splits:
    """Three topics, 90 texts of 2-7 words each (one shared word), ids capped at 12 tokens."""
    return tiny_text_splits(90, 3, (1, 7))


@pytest.fixture(scope="module")
def audio_splits() -> cc.Splits:
    """Three 'keywords': noisy tones of 400, 900 and 1,900 Hz at random phase, gain and onset, as int16 samples."""
    return tiny_audio_splits(60, 3, SAMPLES, 0.1, (0.2, 0.6), ("low", "mid", "high"))


def _splits_for(arch, text_splits, audio_splits) -> cc.Splits:
    return text_splits if arch in TEXT else audio_splits


def test_every_architecture_declares_its_modality_and_the_registry_lists_by_it():
    assert set(list_models(modality="text")) == set(TEXT)
    assert set(list_models(modality="audio")) == set(AUDIO)
    assert {"cnn", "mlp", "resnet18"} <= set(list_models(modality="image"))
    by_modality = [n for m in ("image", "text", "audio") for n in list_models(modality=m)]
    assert sorted(by_modality) == list_models()
    assert model_modality("lstm") == "text" and model_modality("m5") == "audio" and model_modality("cnn") == "image"
    with pytest.raises(InvalidArgument, match="video"):
        list_models(modality="video")
    with pytest.raises(ValueError, match="video"):
        register_model("never", modality="video")


@pytest.mark.parametrize("arch", TEXT + AUDIO)
def test_forward_gives_finite_logits_and_a_flat_feature_layer(arch, text_splits, audio_splits):
    splits = _splits_for(arch, text_splits, audio_splits)
    model = cc.create_for(arch, splits, seed=0).eval()
    x = splits.test.batch(slice(0, 5))[0]
    if arch in TEXT:
        x[-1] = 0  # a text without any token
    out = model(x)
    assert model.modality == splits.modality and out.shape == (5, 3) and torch.isfinite(out).all()
    assert model.features(x).ndim == 2 and isinstance(list(model.classifier.modules())[-1], torch.nn.Linear)


@pytest.mark.parametrize("arch", TEXT)
def test_appending_pads_leaves_a_text_models_logits_unchanged(arch, text_splits):
    model = cc.create_for(arch, text_splits, seed=0).eval()
    x = text_splits.test.batch(slice(0, 8))[0]
    assert (x[:, 8:] == 0).all()  # no test text has more than 8 tokens
    short = x[:, :8]
    with torch.no_grad():
        assert torch.allclose(model(short), model(x), atol=1e-5, rtol=0)
        changed = short.clone()
        changed[:, 1] = 2  # a real token does change them
        assert not torch.allclose(model(changed), model(short), atol=1e-5, rtol=0)


def _loss(model, data) -> float:
    with torch.no_grad():
        x, y = data.batch(slice(None))
        return F.cross_entropy(model.eval()(x), y).item()


@pytest.mark.parametrize("arch", TEXT + AUDIO)
def test_a_few_training_steps_lower_the_loss(arch, text_splits, audio_splits):
    splits = _splits_for(arch, text_splits, audio_splits)
    before = _loss(cc.create_for(arch, splits, seed=0, **SMALL[arch]), splits.owner_train)
    config = cc.TrainConfig(epochs=6, batch_size=8, lr=1e-2, seed=0)
    model = train_model(arch, splits, config=config, progress=False, **SMALL[arch])
    after = _loss(model, splits.owner_train)
    assert after < 0.5 * before, (before, after)
    assert model.provenance["modality"] == splits.modality


@pytest.mark.parametrize("arch", TEXT + AUDIO)
def test_a_model_file_round_trips_with_identical_outputs(arch, text_splits, audio_splits, tmp_path):
    splits = _splits_for(arch, text_splits, audio_splits)
    model = cc.create_for(arch, splits, seed=0).eval()
    path = cc.save_model(model, tmp_path / "m.safetensors")
    loaded = cc.load_model(path)
    x = splits.test.batch(slice(0, 4))[0]
    assert torch.equal(model(x), loaded(x))
    info = read_model_info(path)
    assert info["modality"] == loaded.modality == splits.modality
    if arch in TEXT:
        assert info["arch_kwargs"]["vocab_size"] == len(splits.vocabulary) and info["mean"] == info["std"] == []
    else:
        assert info["arch_kwargs"]["sample_rate"] == 16000 and (info["mean"], info["std"]) == ([0.0], [1.0])


def test_create_for_refuses_another_modality_naming_both(splits, text_splits, audio_splits):
    with pytest.raises(InvalidArgument, match=r"'cnn' reads image inputs but data set 'tiny-text' is text"):
        cc.create_for("cnn", text_splits)
    with pytest.raises(InvalidArgument, match=r"'lstm' reads text inputs but data set .* is image"):
        cc.create_for("lstm", splits)
    lstm = cc.create_for("lstm", text_splits)
    with pytest.raises(InvalidArgument, match=r"'m5' reads audio inputs but model 'lstm' is text.*text-cnn"):
        cc.create_for("m5", lstm)
    other = cc.create_for("transformer", lstm)  # another text architecture, shaped like the model
    assert other.input_shape == (12,) and other.arch_kwargs["vocab_size"] == len(text_splits.vocabulary)
    assert cc.create_for("logmel-cnn", audio_splits).arch_kwargs["sample_rate"] == 16000


def test_text_and_audio_shapes_and_settings_are_checked():
    with pytest.raises(InvalidArgument, match=r"input_shape must be \(length,\)"):
        cc.create_model("lstm", (1, 8, 8), 3, vocab_size=10)
    with pytest.raises(InvalidArgument, match=r"input_shape must be \(channels, samples\)"):
        cc.create_model("m5", (16000,), 3)
    with pytest.raises(InvalidArgument, match="vocab_size"):
        cc.create_model("transformer", (12,), 3)
    with pytest.raises(InvalidArgument, match="no mean or std"):
        cc.create_model("lstm", (12,), 3, vocab_size=10, mean=0.5)
    with pytest.raises(InvalidArgument, match="too short"):
        cc.create_model("m5", (1, 1000), 3)
    with pytest.raises(InvalidArgument, match="8 frames"):
        cc.create_model("logmel-cnn", (1, 500), 3)


def test_models_list_shows_the_modality_and_filters_by_it(capsys):
    assert main(["models", "list", "--modality", "text"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "architectures (text):"
    assert [line.split()[:2] for line in lines[1:]] == [[arch, "text"] for arch in sorted(TEXT)]
    assert main(["models", "list"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows == {name: model_modality(name) for name in list_models()} and rows["m5"] == "audio"
