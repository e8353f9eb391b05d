"""Spoken-keyword data: one second of 16 kHz mono audio per example, read from WAV files with ``soundfile``.

=====================  ======================================================================================
``speech-commands``    Google's Speech Commands folder (Warden 2018, v0.01 or v0.02): one folder per keyword,
                       ``testing_list.txt`` naming the test clips (``keyword/file.wav``, one a line);
                       ``validation_list.txt`` is checked and its clips join the training part (copycatch's own
                       split makes the owner's holdout); ``_background_noise_`` and other ``_`` folders are skipped
``audio-folder``       any folder of WAV files per class (``ROOT/CLASS/*.wav``), or ``ROOT/train/CLASS`` and
                       ``ROOT/test/CLASS`` for an official test part
=====================  ======================================================================================

Each clip becomes int16 samples 1×16000 (a model reads float32 ``x / 32768``, see :mod:`copycatch.data.base`):
shorter clips are padded with silence at the end, longer ones cut to their first second.

What is refused rather than converted: a file that is not WAV (FLAC, MP3, text), a sample rate other than
16,000 Hz, and more than one channel. Resampling or down-mixing silently would make the data something the owner
never had (and a suspect API would be queried with sounds nobody recorded); the error names the file and gives
the ``sox`` line that converts it, so the conversion is the owner's decision and is done once, on disk.

:func:`decode_wav` is the same check for one clip from memory (the server's request bodies) and
:func:`encode_wav` writes a clip as a 16-bit WAV (for clients and tests).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..core.errors import DataNotFound, InvalidArgument
from ..core.runtime import progress as progress_bar
from .base import Dataset, register_dataset
from .prepare import locate

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # one second
WAV_FORMATS = ("WAV", "WAVEX")


def require_soundfile() -> Any:
    try:
        import soundfile
    except ImportError:
        raise DataNotFound("reading WAV files needs soundfile: pip install 'copycatch[audio]'") from None
    except OSError as exc:  # the wheel bundles libsndfile; a source install needs the system library
        raise DataNotFound(f"soundfile cannot load libsndfile ({exc}): apt-get install -y libsndfile1") from None
    return soundfile


def decode_wav(source: str | os.PathLike | bytes | BinaryIO, *, name: str | None = None) -> np.ndarray:
    """int16 samples (16000,) of a 16 kHz mono WAV (a path, bytes or a binary file), padded or cut to one second.

    Anything else is an :class:`InvalidArgument` naming ``name`` (default: the path, or "clip")."""
    sf = require_soundfile()
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "clip")
    opened = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with sf.SoundFile(opened) as f:
            if f.format not in WAV_FORMATS:
                raise InvalidArgument(f"{name}: a {f.format} file, not WAV; convert it: sox IN -r 16000 -c 1 OUT.wav")
            if f.samplerate != SAMPLE_RATE:
                raise InvalidArgument(
                    f"{name}: sampled at {f.samplerate} Hz; copycatch reads 16 kHz mono WAVs and does not resample "
                    "(convert it once: sox IN.wav -r 16000 -c 1 OUT.wav)"
                )
            if f.channels != 1:
                raise InvalidArgument(
                    f"{name}: {f.channels} channels; copycatch reads mono WAVs and does not mix channels down "
                    "(convert it once: sox IN.wav -r 16000 -c 1 OUT.wav)"
                )
            if f.frames == 0:
                raise InvalidArgument(f"{name}: holds no samples")
            samples = f.read(frames=CLIP_SAMPLES, dtype="int16", always_2d=False)
    except (sf.SoundFileError, RuntimeError) as exc:  # libsndfile's message says what is wrong with the bytes
        raise InvalidArgument(f"{name}: not a readable WAV file ({exc})") from None
    except OSError as exc:
        raise DataNotFound(f"{name}: cannot read ({exc.strerror or exc})") from None
    out = np.zeros(CLIP_SAMPLES, dtype=np.int16)
    out[: len(samples)] = samples
    return out


def encode_wav(x: np.ndarray | torch.Tensor) -> bytes:
    """A 16 kHz mono 16-bit WAV of one clip: int16 samples, or floats in [-1, 1] (rounded to 16 bits)."""
    sf = require_soundfile()
    array = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x).reshape(-1)
    if array.dtype != np.int16:
        array = array.astype(np.float64)
        if not np.isfinite(array).all() or np.abs(array).max(initial=0) > 1:
            raise InvalidArgument("encode_wav needs int16 samples or finite floats in [-1, 1]")
        array = np.clip(np.round(array * 32768), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, array, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def speaker_of(clip: str | Path) -> str:
    """The speaker of a Speech Commands clip: its file name before ``_nohash_``."""
    return Path(clip).name.split("_nohash_")[0]


def _wav_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".wav")


def _class_folders(root: Path, keywords: Sequence[str] | None) -> list[Path]:
    """Sub-folders holding a class each (those starting with ``_`` or ``.`` skipped), restricted to ``keywords``."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if keywords:
        missing = sorted(set(keywords) - {p.name for p in folders})
        if missing:
            raise InvalidArgument(f"{root}: no folder for keyword(s) {', '.join(missing)}")
        folders = [p for p in folders if p.name in set(keywords)]
    if len(folders) < 2:
        raise InvalidArgument(f"{root}: {len(folders)} class folder(s); a classifier needs two or more")
    return folders


def read_clips(files: Sequence[Path], desc: str) -> torch.Tensor:
    """int16 N×1×16000 samples of ``files``, in order."""
    out = np.empty((len(files), 1, CLIP_SAMPLES), dtype=np.int16)
    for i, file in enumerate(progress_bar(files, total=len(files), desc=desc, unit="clip")):
        out[i, 0] = decode_wav(file)
    return torch.from_numpy(out)


def _read_list(root: Path, list_file: Path, known: set[str]) -> list[str]:
    """The clips a ``*_list.txt`` names (relative paths); an entry that is not a clip of the folder is an error."""
    entries = []
    text = list_file.read_text(encoding="utf-8", errors="strict") if list_file.is_file() else ""
    for line, raw in enumerate(text.splitlines(), 1):
        entry = raw.strip()
        if not entry:
            continue
        if entry.split("/")[0] not in known:
            continue  # a keyword left out by the keywords filter
        if not (root / entry).is_file():
            raise InvalidArgument(f"{list_file}, line {line}: {entry} is not a clip of {root}")
        entries.append(entry)
    return entries


def keyword_folder(root: Path, name: str, keywords: Sequence[str] | None = None) -> Dataset:
    """The Speech Commands layout at ``root``: keyword folders, ``testing_list.txt`` (and ``validation_list.txt``)."""
    if not (root / "testing_list.txt").is_file():
        raise DataNotFound(
            f"{root}: no testing_list.txt, so not the Speech Commands layout (a folder of WAVs per class loads as "
            "--data audio-folder)"
        )
    folders = _class_folders(root, keywords)
    classes = tuple(p.name for p in folders)
    test = set(_read_list(root, root / "testing_list.txt", set(classes)))
    _read_list(root, root / "validation_list.txt", set(classes))  # checked; its clips stay in the training part
    train_files, train_y, test_files, test_y = [], [], [], []
    for label, folder in enumerate(folders):
        for file in _wav_files(folder):
            in_test = f"{folder.name}/{file.name}" in test
            (test_files if in_test else train_files).append(file)
            (test_y if in_test else train_y).append(label)
    if not train_files:
        raise InvalidArgument(f"{root}: no training clips (every clip is in testing_list.txt)")
    return Dataset(
        name,
        read_clips(train_files, f"read {name} train"),
        torch.tensor(train_y, dtype=torch.int64),
        len(classes),
        classes,
        read_clips(test_files, f"read {name} test") if test_files else None,
        torch.tensor(test_y, dtype=torch.int64) if test_files else None,
        str(root),
        modality="audio",
        sample_rate=SAMPLE_RATE,
    )


@register_dataset("speech-commands", modality="audio")
def speech_commands(path: str = "", data_dir: str | None = None, keywords: Sequence[str] | None = None) -> Dataset:
    """Speech Commands (Warden 2018): 1 s 16 kHz clips of 30-35 spoken keywords; its folder (--path)."""
    where = locate("speech-commands", path, data_dir, lambda d: (d / "testing_list.txt").is_file())
    return keyword_folder(where, "speech-commands", keywords)


@register_dataset("audio-folder", modality="audio")
def audio_folder(path: str = "", data_dir: str | None = None) -> Dataset:
    """Your clips: a folder of 16 kHz mono WAVs per class (ROOT/CLASS/*.wav, or ROOT/{train,test}/CLASS)."""
    root = locate("audio-folder", path, data_dir, lambda d: d.is_dir())
    if not root.is_dir():
        raise InvalidArgument(f"{root}: not a folder (audio-folder reads ROOT/CLASS/*.wav)")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    folders = _class_folders(root / "train" if split else root, None)
    classes = tuple(p.name for p in folders)
    parts = []
    for part_root in (root / "train", root / "test") if split else (root,):
        files, labels = [], []
        for label, cls in enumerate(classes):
            folder = part_root / cls
            found = _wav_files(folder) if folder.is_dir() else []
            if not found and part_root.name != "test":
                raise InvalidArgument(f"{folder}: no .wav files")
            files += found
            labels += [label] * len(found)
        extra = {p.name for p in part_root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))} - set(classes)
        if extra:
            raise InvalidArgument(f"{part_root}: class folder(s) {', '.join(sorted(extra))} not in {root / 'train'}")
        parts.append((read_clips(files, f"read {part_root.name}"), torch.tensor(labels, dtype=torch.int64)))
    test_x, test_y = parts[1] if split else (None, None)
    return Dataset(
        "audio-folder",
        *parts[0],
        len(classes),
        classes,
        test_x,
        test_y,
        str(root),
        modality="audio",
        sample_rate=SAMPLE_RATE,
    )
