"""Audio data: the WAV checks, the Speech Commands layout and a folder of WAVs per class on well-formed and
malformed files, the owner's split, and the spoken-keywords stand-in (all on tiny clips written here)."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import copycatch as cc
from copycatch.core.errors import DataNotFound, InvalidArgument
from copycatch.data import dataset_modality, list_datasets, prepare_dataset
from copycatch.data.audio import CLIP_SAMPLES, decode_wav, encode_wav, speaker_of
from copycatch.data.prepare import MANIFEST


@pytest.fixture(autouse=True)
def private_data_root(tmp_path, monkeypatch):
    """Nothing a test prepares lands in the user's data root."""
    monkeypatch.setenv("COPYCATCH_DATA_DIR", str(tmp_path / "root"))


def _tone(freq: float, seconds: float = 0.5, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _wav(path: Path, samples: np.ndarray, rate: int = 16000, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, **kwargs)
    return path


@pytest.fixture()
def commands(tmp_path) -> Path:
    """Speech Commands layout: 2 keywords × 3 speakers × 2 takes, speaker 'c' in the test list, 'b' validation."""
    root = tmp_path / "speech_commands"
    for word, freq in (("bed", 300.0), ("bird", 900.0)):
        for speaker in "abc":
            for take in range(2):
                _wav(root / word / f"{speaker}0ff1ce_nohash_{take}.wav", _tone(freq + 10 * take, 0.4 + 0.2 * take))
    _wav(root / "_background_noise_" / "white_noise.wav", _tone(50.0, 3.0))
    (root / "testing_list.txt").write_text(
        "bed/c0ff1ce_nohash_0.wav\nbed/c0ff1ce_nohash_1.wav\nbird/c0ff1ce_nohash_0.wav\n"
    )
    (root / "validation_list.txt").write_text("bird/b0ff1ce_nohash_1.wav\n")
    return root


# ---------------------------------------------------------------------------------------------------------------------
# one clip
# ---------------------------------------------------------------------------------------------------------------------


def test_a_short_clip_is_padded_and_a_long_one_cut_to_one_second(tmp_path):
    short = decode_wav(_wav(tmp_path / "short.wav", _tone(440.0, 0.25)))
    assert short.dtype == np.int16 and short.shape == (CLIP_SAMPLES,)
    assert np.abs(short[:4000]).max() > 0 and not short[4000:].any()
    long = _tone(440.0, 2.5)
    assert np.array_equal(decode_wav(_wav(tmp_path / "long.wav", long)), long[:CLIP_SAMPLES])


def test_encode_wav_round_trips_through_decode_wav():
    samples = _tone(700.0, 1.0)
    assert np.array_equal(decode_wav(encode_wav(samples)), samples)
    floats = torch.linspace(-1, 0.999, CLIP_SAMPLES)
    assert np.abs(decode_wav(encode_wav(floats)) / 32768 - floats.numpy()).max() <= 1 / 32768
    with pytest.raises(InvalidArgument, match="in \\[-1, 1\\]"):
        encode_wav(np.full(10, 2.0))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: _wav(p, _tone(440.0, rate=44100), rate=44100), "sampled at 44100 Hz; .* does not resample"),
        (lambda p: _wav(p, _tone(440.0, channels=2)), "2 channels; .* does not mix channels down"),
        (lambda p: _wav(p, _tone(440.0), format="FLAC"), "a FLAC file, not WAV"),
        (lambda p: p.write_text("RIFF? no, a text file\n") and p, "not a readable WAV file"),
        (lambda p: _wav(p, np.zeros(0, np.int16)), "holds no samples"),
    ],
)
def test_a_clip_that_is_not_16k_mono_wav_is_refused_by_name(tmp_path, make, match):
    path = make(tmp_path / "clip.wav")
    with pytest.raises(InvalidArgument, match=match) as err:
        decode_wav(path)
    assert str(path) in str(err.value)
    with pytest.raises(InvalidArgument, match=match) as err:
        decode_wav(path.read_bytes(), name="request body")
    assert str(err.value).startswith("request body: ")


# ---------------------------------------------------------------------------------------------------------------------
# Speech Commands and audio-folder
# ---------------------------------------------------------------------------------------------------------------------


def test_speech_commands_layout_puts_the_testing_list_in_test_and_skips_background_noise(commands):
    data = cc.load_dataset("speech-commands", path=str(commands))
    assert data.modality == "audio" and data.sample_rate == 16000 and data.class_names == ("bed", "bird")
    assert (len(data.train), len(data.test)) == (9, 3) and data.test.y.tolist() == [0, 0, 1]
    assert data.train.stored.dtype == torch.int16 and data.input_shape == (1, CLIP_SAMPLES)
    x = data.x
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() < 1
    expected = decode_wav(commands / "bed" / "a0ff1ce_nohash_0.wav")
    assert torch.equal(data.train.stored[0, 0], torch.from_numpy(expected))
    assert speaker_of("bed/c0ff1ce_nohash_1.wav") == "c0ff1ce"
    with pytest.raises(InvalidArgument, match=r"no folder for keyword\(s\) cat"):
        cc.load_dataset("speech-commands", path=str(commands), keywords=["bed", "cat"])


def test_a_test_list_naming_a_missing_clip_is_an_error_with_its_line(commands):
    with open(commands / "testing_list.txt", "a") as f:
        f.write("\nbird/zzz_nohash_0.wav\n")
    with pytest.raises(InvalidArgument, match=r"testing_list.txt, line 5: bird/zzz_nohash_0.wav is not a clip"):
        cc.load_dataset("speech-commands", path=str(commands))


def test_a_corrupt_clip_in_a_keyword_folder_names_the_file(commands):
    bad = commands / "bird" / "a0ff1ce_nohash_1.wav"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(InvalidArgument, match=r"a0ff1ce_nohash_1.wav: not a readable WAV file"):
        cc.load_dataset("speech-commands", path=str(commands))


def test_a_plain_folder_is_not_mistaken_for_speech_commands(commands):
    (commands / "testing_list.txt").unlink()
    with pytest.raises(DataNotFound, match=r"no testing_list\.txt.*--data audio-folder"):
        cc.load_dataset("speech-commands", path=str(commands))


def test_audio_folder_reads_class_folders_and_an_optional_train_test_pair(commands, tmp_path):
    shutil.rmtree(commands / "_background_noise_")
    data = cc.load_dataset("audio-folder", path=str(commands))
    assert data.test is None and len(data.train) == 12 and data.class_names == ("bed", "bird")
    split = tmp_path / "split"
    for part, n in (("train", 3), ("test", 1)):
        for cls, freq in (("cat", 200.0), ("dog", 600.0)):
            for i in range(n):
                _wav(split / part / cls / f"{i}.wav", _tone(freq + i))
    (split / "train" / "cat" / "notes.txt").write_text("not a clip, and not named .wav: ignored")
    data = cc.load_dataset("audio-folder", path=str(split))
    assert (len(data.train), len(data.test)) == (6, 2) and data.test.y.tolist() == [0, 1]


def test_audio_folder_refuses_a_44k_clip_naming_it(commands):
    _wav(commands / "bed" / "loud.wav", _tone(440.0, rate=44100), rate=44100)
    with pytest.raises(InvalidArgument, match=r"bed/loud.wav: sampled at 44100 Hz.*sox IN.wav -r 16000 -c 1"):
        cc.load_dataset("audio-folder", path=str(commands))


def test_audio_splits_are_disjoint_seeded_and_keep_samples_as_int16(commands):
    data = cc.load_dataset("speech-commands", path=str(commands))
    s = cc.make_splits(data, seed=0, fractions=cc.SplitFractions(owner_train=0.45, owner_holdout=0.1))
    assert s.modality == "audio" and s.sample_rate == 16000 and s.input_shape == (1, CLIP_SAMPLES)
    parts = ("owner_train", "owner_holdout", "attacker_pool")
    index = [set(s.indices[p].tolist()) for p in parts]
    assert sum(map(len, index)) == len(set().union(*index)) and len(s.test) == 3
    for p in parts:
        assert getattr(s, p).stored.dtype == torch.int16
        assert torch.equal(getattr(s, p).x, data.x[s.indices[p]])
    assert torch.equal(
        cc.make_splits(data, seed=0).indices["attacker_pool"], cc.make_splits(data, seed=0).indices["attacker_pool"]
    )
    assert not torch.equal(
        cc.make_splits(data, seed=0).indices["owner_train"], cc.make_splits(data, seed=1).indices["owner_train"]
    )
    assert s.describe()["sample_rate"] == 16000 and s.provenance()["modality"] == "audio"
    both = cc.TensorData.concat([s.owner_train, s.attacker_pool])
    assert both.stored.dtype == torch.int16 and len(both) == len(s.owner_train) + len(s.attacker_pool)


def test_every_audio_data_set_declares_audio():
    assert set(list_datasets(modality="audio")) == {"speech-commands", "audio-folder", "spoken-keywords"}
    assert dataset_modality("spoken-keywords") == "audio"


def test_audio_fingerprint_follows_the_samples(commands):
    first = cc.load_dataset("speech-commands", path=str(commands)).fingerprint()
    assert cc.load_dataset("speech-commands", path=str(commands)).fingerprint() == first
    _wav(commands / "bird" / "a0ff1ce_nohash_0.wav", _tone(901.0, 0.4))
    assert cc.load_dataset("speech-commands", path=str(commands)).fingerprint() != first


# ---------------------------------------------------------------------------------------------------------------------
# the spoken-keywords stand-in
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_espeak_says_which_package_to_install(monkeypatch):
    monkeypatch.setattr("copycatch.data.spoken_keywords.shutil.which", lambda name: None)
    with pytest.raises(DataNotFound, match="apt-get install -y espeak-ng"):
        prepare_dataset("spoken-keywords", params={"keywords": "yes,no", "clips_per_keyword": 1})


def test_spoken_keywords_parameters_are_checked_before_any_work():
    with pytest.raises(InvalidArgument, match="lower-case letters"):
        prepare_dataset("spoken-keywords", params={"keywords": "yes,-v"})
    with pytest.raises(InvalidArgument, match="unknown spoken-keywords key 'clips'"):
        prepare_dataset("spoken-keywords", params={"clips": 3})


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install -y espeak-ng)"
)
def test_spoken_keywords_are_reproducible_split_by_voice_and_load_by_name(tmp_path):
    params = {"keywords": "yes,no", "clips_per_keyword": 3}
    first = prepare_dataset("spoken-keywords", seed=2, params=params, workers=1, progress=False)
    data = cc.load_dataset("spoken-keywords")
    assert data.class_names == ("no", "yes") and len(data.train) + len(data.test or []) == 6
    clips = sorted(p.relative_to(first.directory).as_posix() for p in first.directory.glob("[!_]*/*.wav"))
    assert len(clips) == 6 and all(speaker_of(c) for c in clips)
    for clip in clips:
        with sf.SoundFile(first.directory / clip) as f:
            assert (f.samplerate, f.channels, f.frames, f.subtype) == (16000, 1, CLIP_SAMPLES, "PCM_16")
    manifest = json.loads((first.directory / MANIFEST).read_text())
    held = set(manifest["voices"]["test"]) | set(manifest["voices"]["validation"])
    listed = set((first.directory / "testing_list.txt").read_text().split())
    listed |= set((first.directory / "validation_list.txt").read_text().split())
    for clip in clips:
        assert (speaker_of(clip).split("-")[0] in held) == (clip in listed)  # the variant decides the split
    assert sorted(p.name for p in (first.directory / "_background_noise_").iterdir()) == [
        "brown_noise.wav", "pink_noise.wav", "white_noise.wav"
    ]  # fmt: skip
    # two worker processes make the same files; another seed makes others
    again = prepare_dataset("spoken-keywords", out=tmp_path / "again", seed=2, params=params, workers=2, progress=False)
    other = prepare_dataset("spoken-keywords", out=tmp_path / "other", seed=3, params=params, workers=1, progress=False)
    digest = manifest["content_sha256"]
    assert json.loads((again.directory / MANIFEST).read_text())["content_sha256"] == digest
    assert json.loads((other.directory / MANIFEST).read_text())["content_sha256"] != digest
    clip = io.BytesIO((first.directory / clips[0]).read_bytes())
    assert np.abs(decode_wav(clip)).max() > 1000  # a word was spoken, not silence
