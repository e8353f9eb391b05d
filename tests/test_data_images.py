"""The owner's image files: image-folder and image-csv (Pillow), cifar10-binary (NumPy), on tiny generated files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.cli.main import main
from copycatch.core.errors import CorruptFile, DataNotFound, InvalidArgument
from copycatch.data.cifar10_binary import CIFAR10_CLASSES, RECORD_BYTES

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed: pip install 'copycatch[images]'")

RNG = np.random.default_rng(0)


def _save(path, mode="RGB", size=(8, 8), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8), mode).save(path, fmt)
    return path


def _tree(root, classes=("cat", "dog"), per_class=4, suffixes=(".png", ".jpg", ".webp", ".bmp")):
    for cls in classes:
        for i in range(per_class):
            _save(root / cls / f"{i}{suffixes[i % len(suffixes)]}")
    return root


def _cli(capsys, *argv):
    status = main(["data", "show", *argv, "-q"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------------------------
# image-folder
# ---------------------------------------------------------------------------------------------------------------------


def test_image_folder_reads_every_format_as_uint8_nchw_and_splits(tmp_path):
    root = _tree(tmp_path / "pets", classes=("zebra", "ant", "cat"), per_class=8)
    _save(root / "ant" / "grey.png", mode="L")  # grey among colour: replicated, not colour thrown away
    _save(root / "cat" / "big.png", size=(12, 10))  # another size: resized to the common 8×8
    data = cc.load_dataset("image-folder", path=str(root))
    assert data.class_names == ("ant", "cat", "zebra") and data.num_classes == 3
    assert data.train.stored.dtype == torch.uint8 and data.input_shape == (3, 8, 8)
    assert torch.bincount(data.y).tolist() == [9, 9, 8] and data.test is None
    assert data.x.dtype == torch.float32 and data.x.min() >= 0 and data.x.max() <= 1
    splits = cc.make_splits(data, seed=0)
    assert splits.summary() == {"owner_train": 10, "owner_holdout": 1, "attacker_pool": 9, "test": 5}
    assert splits.owner_train.stored.dtype == torch.uint8


def test_image_folder_pixels_are_the_files_pixels(tmp_path):
    pixels = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(pixels, "L").save(tmp_path / cls / "x.png")
    data = cc.load_dataset("image-folder", path=str(tmp_path))
    assert data.input_shape == (1, 8, 8) and torch.equal(data.train.stored[0, 0], torch.from_numpy(pixels))
    assert cc.load_dataset("image-folder", path=str(tmp_path), channels=3, size=4).input_shape == (3, 4, 4)


def test_image_folder_train_and_test_layout_gives_the_official_test_part(tmp_path):
    _tree(tmp_path / "train", per_class=4)
    _tree(tmp_path / "test", per_class=2)
    data = cc.load_dataset("image-folder", path=str(tmp_path))
    assert len(data.train) == 8 and len(data.test) == 4 and data.test.stored.shape == (4, 3, 8, 8)
    assert len(cc.make_splits(data, seed=0).test) == 4


@pytest.mark.parametrize(
    "spoil, error, match",
    [
        (lambda root: (root / "cat" / "2.webp").write_bytes(b"RIFF not really"), InvalidArgument, "2.webp: not a read"),
        (lambda root: (root / "dog" / "notes.txt").write_text("hi"), InvalidArgument, "notes.txt: not an image file"),
        (lambda root: _truncate(root / "dog" / "1.jpg"), InvalidArgument, "1.jpg: not a readable"),
        (lambda root: (root / "bird").mkdir(), InvalidArgument, "bird: no images"),
        (lambda root: _remove_class(root, "dog"), InvalidArgument, "1 class folder"),
    ],
    ids=["corrupt", "not-an-image", "truncated", "empty-class", "one-class"],
)
def test_malformed_image_folder_is_one_named_error(tmp_path, spoil, error, match):
    root = _tree(tmp_path / "pets")
    spoil(root)
    with pytest.raises(error, match=match):
        cc.load_dataset("image-folder", path=str(root))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-40])


def _remove_class(root, cls):
    for file in (root / cls).iterdir():
        file.unlink()
    (root / cls).rmdir()


def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    root = _tree(tmp_path / "pets")
    monkeypatch.setattr("copycatch.data.image_folder.MAX_PIXELS", 63)  # 8×8 = 64 pixels: over the limit
    with pytest.raises(InvalidArgument, match="decompression bomb"):
        cc.load_dataset("image-folder", path=str(root))


def test_missing_pillow_says_which_extra_to_install(monkeypatch):
    import builtins

    from copycatch.data.image_folder import require_pillow

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(DataNotFound, match=r"pip install 'copycatch\[images\]'"):
        require_pillow()


# ---------------------------------------------------------------------------------------------------------------------
# image-csv
# ---------------------------------------------------------------------------------------------------------------------


def _image_csv(folder, rows, name="train.csv"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows), encoding="utf-8")
    return folder / name


def test_image_csv_reads_relative_and_absolute_paths_with_integer_labels(tmp_path):
    images = [_save(tmp_path / "img" / f"{i}.png", mode="L") for i in range(6)]
    rows = [(f"img/{i}.png", 10 if i % 2 else 2) for i in range(5)] + [(str(images[5]), 10)]
    data = cc.load_dataset("image-csv", path=str(_image_csv(tmp_path, rows, "labels.csv")))
    assert data.class_names == ("2", "10") and data.y.tolist() == [0, 1, 0, 1, 0, 1]
    assert data.train.stored.shape == (6, 1, 8, 8) and data.train.stored.dtype == torch.uint8
    assert cc.make_splits(data, seed=0).summary() == {
        "owner_train": 2,
        "owner_holdout": 0,
        "attacker_pool": 2,
        "test": 1,
    }


def test_a_csv_file_given_as_the_data_is_read_as_images_or_texts_by_its_header(tmp_path):
    _save(tmp_path / "a.png", mode="L")
    _save(tmp_path / "b.png", mode="L")
    images = cc.load_dataset(str(_image_csv(tmp_path, [("a.png", "cat"), ("b.png", "dog")], "mine.csv")))
    assert images.modality == "image" and images.train.stored.shape == (2, 1, 8, 8)
    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\nthe cat sat,cat\na dog ran,dog\n", encoding="utf-8")
    assert cc.load_dataset(str(texts)).modality == "text"


def test_image_csv_folder_with_a_test_file(tmp_path):
    for i in range(6):
        _save(tmp_path / f"{i}.jpg")
    _image_csv(tmp_path, [(f"{i}.jpg", "cat" if i % 2 else "dog") for i in range(4)])
    _image_csv(tmp_path, [("4.jpg", "dog"), ("5.jpg", "cat")], "test.csv")
    data = cc.load_dataset("image-csv", path=str(tmp_path))
    assert data.class_names == ("cat", "dog") and len(data.train) == 4 and data.test.y.tolist() == [1, 0]


@pytest.mark.parametrize(
    "train, test, match",
    [
        ([("0.png", "a"), ("", "b")], None, r"train.csv, line 3: empty path"),
        ([("0.png", "a"), ("gone.png", "b")], None, r"train.csv, line 3: no image file"),
        ([("0.png", "a"), ("1.png", "a")], None, "a classifier needs two or more"),
        ([("0.png", "a"), ("1.png", "b")], [("1.png", "c")], r"test.csv, line 2: label 'c' is not one of"),
    ],
    ids=["missing-path", "no-such-image", "one-label", "unknown-test-label"],
)
def test_malformed_image_csv_names_file_and_line(tmp_path, train, test, match):
    for i in range(2):
        _save(tmp_path / f"{i}.png")
    _image_csv(tmp_path, train)
    if test:
        _image_csv(tmp_path, test, "test.csv")
    with pytest.raises(InvalidArgument, match=match):
        cc.load_dataset("image-csv", path=str(tmp_path))


def test_image_csv_without_path_and_label_header(tmp_path):
    (tmp_path / "train.csv").write_text("file,class\n0.png,a\n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match=r"line 1: the header must name a 'path' and a 'label'"):
        cc.load_dataset("image-csv", path=str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# cifar10-binary
# ---------------------------------------------------------------------------------------------------------------------


def _batch(path, labels):
    records = np.empty((len(labels), RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = RNG.integers(0, 256, (len(labels), RECORD_BYTES - 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records.tobytes())
    return records


def test_cifar10_binary_reads_batches_planes_and_class_names(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    first = _batch(folder / "data_batch_1.bin", np.arange(10))
    _batch(folder / "data_batch_2.bin", np.arange(10)[::-1])
    _batch(folder / "test_batch.bin", np.arange(5))
    data = cc.load_dataset("cifar10-binary", data_dir=tmp_path)  # found in its folder inside --data-dir
    assert data.class_names == CIFAR10_CLASSES and data.input_shape == (3, 32, 32)
    assert data.train.stored.dtype == torch.uint8 and len(data.train) == 20 and len(data.test) == 5
    assert data.y[:10].tolist() == list(range(10)) and data.y[10:].tolist() == list(range(10))[::-1]
    # record 3: its red plane, then green, then blue, each 32 rows of 32
    assert torch.equal(data.train.stored[3], torch.from_numpy(first[3, 1:].reshape(3, 32, 32)))
    (folder / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n", encoding="utf-8")
    splits = cc.make_splits(cc.load_dataset("cifar10-binary", path=str(folder)), seed=0)
    assert splits.class_names[0] == "c0" and len(splits.test) == 5


@pytest.mark.parametrize(
    "spoil, error, match",
    [
        (lambda f: f.write_bytes(f.read_bytes()[:-100]), CorruptFile, r"data_batch_1.bin: 30,630 bytes .* truncated"),
        (lambda f: _set_label(f, 7, 10), CorruptFile, r"data_batch_1.bin, record 7 .*label byte 10"),
        (lambda f: f.write_bytes(b""), CorruptFile, "data_batch_1.bin: empty file"),
        (lambda f: _batch(f.parent / "data_batch_3.bin", [0]), DataNotFound, "data_batch_2.bin missing"),
    ],
    ids=["truncated", "label-byte", "empty", "gap"],
)
def test_malformed_cifar10_batch_names_file_and_record(tmp_path, spoil, error, match):
    _batch(tmp_path / "data_batch_1.bin", np.arange(10) % 10)
    spoil(tmp_path / "data_batch_1.bin")
    with pytest.raises(error, match=match):
        cc.load_dataset("cifar10-binary", path=str(tmp_path))


def _set_label(path, record, label):
    raw = bytearray(path.read_bytes())
    raw[record * RECORD_BYTES] = label
    path.write_bytes(bytes(raw))


# ---------------------------------------------------------------------------------------------------------------------
# reached from the CLI: --data NAME with --data-dir, or prepared (linked) once and then by name
# ---------------------------------------------------------------------------------------------------------------------


def test_data_show_on_each_loader(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COPYCATCH_DATA_DIR", str(tmp_path / "root"))
    _tree(tmp_path / "folder")
    for i in range(4):
        _save(tmp_path / "csv" / f"{i}.png")
    labels = _image_csv(tmp_path / "csv", [(f"{i}.png", i % 2) for i in range(4)], "labels.csv")
    _batch(tmp_path / "cifar" / "data_batch_1.bin", np.arange(10))
    # linked into the data root as a file: its relative paths still lead to the images beside the real CSV
    assert main(["data", "prepare", "image-csv", "--path", str(labels), "-q"]) == 0
    capsys.readouterr()
    for argv, name, shape in [
        (["--data", "image-folder", "--data-dir", str(tmp_path / "folder")], "image-folder", [3, 8, 8]),
        (["image-csv"], "image-csv", [3, 8, 8]),
        (["--data", "cifar10-binary", "--data-dir", str(tmp_path / "cifar")], "cifar10-binary", [3, 32, 32]),
    ]:
        status, out, err = _cli(capsys, *argv)
        assert status == 0, err
        shown = json.loads(out)
        assert shown["dataset"] == name and shown["modality"] == "image" and shown["input_shape"] == shape


@pytest.mark.parametrize("loader", ["image-folder", "image-csv", "cifar10-binary"])
def test_data_show_on_a_malformed_input_is_one_line_and_exit_2(tmp_path, capsys, loader):
    if loader == "image-folder":
        _tree(tmp_path)
        (tmp_path / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif loader == "image-csv":
        _save(tmp_path / "0.png")
        _image_csv(tmp_path, [("0.png", "a"), ("", "b")])
    else:
        (tmp_path / "data_batch_1.bin").write_bytes(bytes(RECORD_BYTES + 1))
    status, out, err = _cli(capsys, "--data", loader, "--data-dir", str(tmp_path))
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("copycatch: error: ") and str(tmp_path) in err
