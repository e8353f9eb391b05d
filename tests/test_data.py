import gzip
import struct

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.core.errors import CorruptFile, DataNotFound, InvalidArgument
from copycatch.data import list_datasets
from copycatch.data.fashion_mnist import read_idx


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (300, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(300) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(50) % 10)
    return tmp_path


def _load(name, fake_fashion, monkeypatch):
    if name == "fashion-mnist":
        return cc.load_dataset(name, data_dir=fake_fashion)
    if name == "npz":
        path = fake_fashion / "mine.npz"
        np.savez(path, x=np.zeros((40, 6, 6), np.uint8), y=np.arange(40) % 3)
        return cc.load_dataset(str(path))
    return cc.load_dataset(name)


# text and audio: test_data_text/_audio.py; the loaders of the owner's own files (folder, CSV, CIFAR binary) need
# files generated per loader: test_data_images.py checks the same properties on them
OWN_FILES = ("image-folder", "image-csv", "cifar10-binary")


@pytest.mark.parametrize("name", [n for n in list_datasets(modality="image") if n not in OWN_FILES])
def test_every_image_dataset_loads_as_unit_interval_nchw(name, fake_fashion, monkeypatch):
    data = _load(name, fake_fashion, monkeypatch)
    assert data.x.ndim == 4 and data.x.dtype == torch.float32
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0
    assert data.y.dtype == torch.int64 and data.y.max() < data.num_classes
    assert len(data.class_names) == data.num_classes


def test_fashion_mnist_found_through_environment_variable(fake_fashion, monkeypatch):
    monkeypatch.setenv("COPYCATCH_DATA_DIR", str(fake_fashion))
    assert len(cc.load_dataset("fashion-mnist").x) == 300


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("COPYCATCH_DATA_DIR", raising=False)
    monkeypatch.setattr("copycatch.data.fashion_mnist.DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataNotFound) as err:
        cc.load_dataset("fashion-mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg and "--data-dir" in msg and "COPYCATCH_DATA_DIR" in msg


def test_truncated_idx_is_a_corrupt_file(fake_fashion):
    path = fake_fashion / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(CorruptFile, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("seed", [0, 1])
def test_standard_split_is_disjoint_complete_and_seeded(seed):
    data = cc.load_dataset("synthetic", n=1000)
    s = cc.make_splits(data, seed=seed)
    parts = ["owner_train", "owner_holdout", "attacker_pool", "test"]
    index = {p: set(s.indices[p].tolist()) for p in parts}
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not index[a] & index[b], f"{a} and {b} overlap"
        assert torch.equal(getattr(s, a).x, data.x[s.indices[a]])
    assert s.summary() == {"owner_train": 400, "owner_holdout": 40, "attacker_pool": 360, "test": 200}
    again = cc.make_splits(data, seed=seed)
    assert torch.equal(again.attacker_pool.x, s.attacker_pool.x)
    other = cc.make_splits(data, seed=seed + 10)
    assert not torch.equal(other.attacker_pool.x, s.attacker_pool.x)


def test_official_test_split_is_kept_whole(fake_fashion):
    s = cc.load_splits("fashion-mnist", data_dir=fake_fashion)
    assert (
        len(s.test) == 50 and sum(len(getattr(s, p)) for p in ("owner_train", "owner_holdout", "attacker_pool")) == 300
    )


def test_releasing_the_attacker_pool_keeps_the_splits_provenance(fake_fashion):
    splits = cc.load_splits("fashion-mnist", data_dir=str(fake_fashion))
    owner_side = splits.without_attacker_pool()
    assert len(splits.attacker_pool) > 0 and len(owner_side.attacker_pool) == 0
    assert owner_side.provenance() == splits.provenance()
    assert owner_side.summary()["attacker_pool"] == len(splits.attacker_pool)
    assert owner_side.owner_train is splits.owner_train and owner_side.test is splits.test
    # released means released: the empty part does not keep the pool's storage alive
    assert owner_side.attacker_pool.stored.untyped_storage().nbytes() == 0


def test_split_fractions_are_validated():
    with pytest.raises(InvalidArgument, match="exceed 1"):
        cc.SplitFractions(owner_train=0.8, owner_holdout=0.1, attacker_pool=0.2)
    with pytest.raises(InvalidArgument, match="unknown split key"):
        cc.SplitFractions.from_dict({"thief": 0.5})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"x": np.zeros((4, 2, 2, 2, 2)), "y": np.zeros(4, int)}, "shape"),
        ({"x": np.full((4, 3, 3), 2.0), "y": np.zeros(4, int)}, "values in"),
        ({"x": np.zeros((4, 3, 3)), "y": np.zeros(3, int)}, "4 labels"),
        ({"x": np.zeros((4, 3, 3))}, "missing array 'y'"),
    ],
)
def test_bad_npz_gets_a_named_error(tmp_path, bad, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **bad)
    with pytest.raises(InvalidArgument, match=match):
        cc.load_dataset(str(path))


@pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_when_installed():
    data = cc.load_dataset("fashion-mnist")
    assert data.x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.y).tolist() == [6000] * 10


def test_uint8_pixels_become_exactly_the_old_floats():
    """to_float must give the bits ``array.astype(np.float32) / 255.0`` gave, for every pixel value and in a long
    (vectorised) run, so keys, models and p-values do not move."""
    from copycatch.data.base import to_float

    pixels = np.tile(np.arange(256, dtype=np.uint8), 300).reshape(-1, 1, 4, 4)
    old = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    assert torch.equal(to_float(torch.from_numpy(pixels)).view(torch.int32), old.view(torch.int32))


def test_image_pixels_stay_uint8_through_the_split_and_batches_come_out_float(fake_fashion):
    from copycatch.models.train import TrainHook

    images = read_idx(fake_fashion / "train-images-idx3-ubyte.gz")
    old_x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # the loader's former conversion
    data = cc.load_dataset("fashion-mnist", data_dir=fake_fashion)
    s = cc.make_splits(data, seed=0)
    for part in ("owner_train", "owner_holdout", "attacker_pool", "test"):
        assert getattr(s, part).stored.dtype == torch.uint8
    assert torch.equal(data.x, old_x) and data.x.dtype == torch.float32
    idx = s.indices["owner_train"]
    assert torch.equal(s.owner_train.x, old_x[idx])
    x, y = s.owner_train.batch(torch.tensor([3, 0, 7]))
    assert x.dtype == torch.float32 and torch.equal(x, old_x[idx[[3, 0, 7]]]) and torch.equal(y, data.y[idx[[3, 0, 7]]])

    seen = []

    class Spy(TrainHook):
        def extra_loss(self, state, x, y, logits, loss):
            seen.append((x.dtype, x.shape[0]))

    cc.fit(cc.create_for("mlp", s, seed=0), s.owner_train, cc.TrainConfig(epochs=1, batch_size=64), hooks=[Spy()])
    assert seen and all(dtype == torch.float32 for dtype, _ in seen) and sum(n for _, n in seen) == len(s.owner_train)


def test_fingerprint_hashes_the_float_inputs_as_before():
    import hashlib

    data = cc.load_dataset("synthetic", n=9000)  # more than one hashing block
    h = hashlib.sha256()
    for t in (data.x, data.y):
        h.update(t.contiguous().numpy().tobytes())
    assert data.fingerprint() == h.hexdigest()[:16]


def test_concat_stays_uint8_when_float_parts_are_exact_pixels():
    u8 = cc.TensorData(torch.arange(32, dtype=torch.uint8).view(2, 1, 4, 4), torch.tensor([0, 1]))
    exact = cc.TensorData(torch.full((1, 1, 4, 4), 1.0), torch.tensor([2]))
    both = cc.TensorData.concat([u8, exact])
    assert both.stored.dtype == torch.uint8 and torch.equal(both.x, torch.cat([u8.x, exact.x]))
    inexact = cc.TensorData(torch.full((1, 1, 4, 4), 0.3), torch.tensor([2]))
    mixed = cc.TensorData.concat([u8, inexact])
    assert mixed.stored.dtype == torch.float32 and torch.equal(mixed.x, torch.cat([u8.x, inexact.x]))
