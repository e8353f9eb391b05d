import json

import pytest
import torch

import copycatch as cc
from copycatch.core.errors import CorruptFile, InvalidArgument, UnknownName
from copycatch.models import list_models
from copycatch.models.io import read_model_info

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
SMALL_KWARGS = {"resnet18": {"width": 8}, "vgg-like": {"width": 8}}
IMAGE_ARCHS = list_models(modality="image")  # text and audio ones: tests/test_models_modalities.py


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_architecture_adapts_to_shape_and_classes(arch, shape):
    model = cc.create_model(arch, shape, 7, **SMALL_KWARGS.get(arch, {}))
    x = torch.rand(3, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 7)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert model.features(x).ndim == 2
    assert isinstance(list(model.classifier.modules())[-1], torch.nn.Linear)


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_every_architecture_round_trips_through_a_model_file(arch, tmp_path):
    model = cc.create_model(
        arch, (1, 8, 8), 4, mean=0.3, std=0.2, class_names=("a", "b", "c", "d"), **SMALL_KWARGS.get(arch, {})
    ).eval()
    path = cc.save_model(model, tmp_path / "m.safetensors", provenance={"note": "test"})
    loaded = cc.load_model(path)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    assert loaded.class_names == ("a", "b", "c", "d") and loaded.provenance["note"] == "test"
    assert read_model_info(path)["arch"] == arch


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(UnknownName) as err:
        cc.create_model("resnet1000", (1, 8, 8), 4)
    assert "cnn-small" in str(err.value) and "mlp" in str(err.value)


def test_bad_shapes_and_class_counts_are_named():
    with pytest.raises(InvalidArgument, match="input_shape"):
        cc.create_model("mlp", (8, 8), 4)
    with pytest.raises(InvalidArgument, match="num_classes"):
        cc.create_model("mlp", (1, 8, 8), 1)


def _tamper(path, offset_from_end=10):
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupt_model_files_are_errors_naming_the_file(tmp_path):
    model = cc.create_model("mlp", (1, 8, 8), 4, hidden=16)
    path = cc.save_model(model, tmp_path / "m.safetensors")
    good = path.read_bytes()
    _tamper(path)
    with pytest.raises(CorruptFile, match="digest"):
        cc.load_model(path)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFile, match=str(path.name)):
        cc.load_model(path)
    path.write_bytes(b"not a model at all")
    with pytest.raises(CorruptFile, match=str(path.name)):
        cc.load_model(path)


def test_foreign_safetensors_file_is_rejected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CorruptFile, match="not a copycatch model"):
        cc.load_model(path)


def test_model_file_holds_no_pickle(tmp_path):
    path = cc.save_model(cc.create_model("mlp", (1, 8, 8), 4, hidden=16), tmp_path / "m.safetensors")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    assert "copycatch" in header["__metadata__"]
    assert b"\x80\x04" not in path.read_bytes()[: 8 + header_len]  # no pickle protocol marker in the header
