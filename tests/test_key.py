import pytest
import torch

from copycatch.core.errors import CorruptFile
from copycatch.core.key import Key


def _key():
    return Key(
        "margin",
        {"n_triggers": 3, "eps": 0.02},
        {
            "trigger_x": torch.arange(12, dtype=torch.uint8).reshape(3, 1, 2, 2),
            "trigger_label": torch.tensor([1, 2, 0]),
        },
        {"dataset": "synthetic", "num_classes": 3},
    )


def test_key_round_trips_with_the_same_digest(tmp_path):
    key = _key()
    path = key.save(tmp_path / "k.cckey")
    loaded = Key.load(path)
    assert loaded.digest == key.digest and loaded.params == key.params and loaded.meta == key.meta
    for name in key.tensors:
        assert torch.equal(loaded.tensors[name], key.tensors[name])


def test_digest_covers_params_meta_and_every_tensor():
    base = _key()
    assert Key(base.scheme, {**base.params, "eps": 0.03}, base.tensors, base.meta).digest != base.digest
    assert Key(base.scheme, base.params, base.tensors, {**base.meta, "dataset": "x"}).digest != base.digest
    changed = dict(base.tensors, trigger_label=torch.tensor([1, 2, 1]))
    assert Key(base.scheme, base.params, changed, base.meta).digest != base.digest


def test_tampered_key_is_an_error_naming_the_file(tmp_path):
    path = _key().save(tmp_path / "k.cckey")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # flip a bit of the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFile) as err:
        Key.load(path)
    assert "k.cckey" in str(err.value) and "digest mismatch" in str(err.value)


def test_tampered_header_is_an_error(tmp_path):
    path = _key().save(tmp_path / "k.cckey")
    raw = path.read_bytes()
    assert raw.count(b"0.02") == 1
    path.write_bytes(raw.replace(b"0.02", b"0.09"))  # same length: the header still parses
    with pytest.raises(CorruptFile, match="digest mismatch"):
        Key.load(path)


def test_truncated_or_foreign_files_are_errors(tmp_path):
    path = _key().save(tmp_path / "k.cckey")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 7])
    with pytest.raises(CorruptFile, match=r"k\.cckey"):
        Key.load(path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.cckey"))
    with pytest.raises(CorruptFile, match="not a copycatch key"):
        Key.load(tmp_path / "other.cckey")


def test_summary_hides_secrets_unless_asked():
    key = _key()
    hidden = key.summary()
    assert "values" not in hidden["tensors"]["trigger_label"]
    assert hidden["tensors"]["trigger_x"]["shape"] == [3, 1, 2, 2]
    assert key.summary(secrets=True)["tensors"]["trigger_label"]["values"] == [1, 2, 0]
