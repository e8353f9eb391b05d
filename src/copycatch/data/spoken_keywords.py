"""``spoken-keywords``: an offline stand-in for Speech Commands, synthesised with ``espeak-ng``.

Every clip is one keyword spoken by one synthetic speaker — an ``espeak-ng`` accent (:data:`ACCENTS`) with a voice
variant (:data:`VARIANTS`: male, female, Klatt and named voices, which change pitch range, formants and
breathiness) — at a random speed and pitch, then placed in a one-second window and degraded as a recording is:

1. synthesis at 22,050 Hz, resampled to 16 kHz (``scipy.signal.resample_poly``, 320/441), leading and trailing
   silence trimmed;
2. time shift: the word starts at a uniformly random point of the second (a word longer than that is cut);
3. gain: the word's peak set to a random level between −20 and −1 dBFS;
4. background noise — white, pink or brown (Gaussian noise shaped in the frequency domain) — at a random
   signal-to-noise ratio between ``snr_db_min`` and ``snr_db_max`` dB against the word's RMS, over the whole second;
5. 16-bit PCM at 16 kHz, mono, in the Speech Commands layout: ``KEYWORD/SPEAKER_nohash_N.wav``, with
   ``validation_list.txt`` and ``testing_list.txt`` and three noise recordings in ``_background_noise_``.

Speakers are split by voice variant: ``test_voices`` variants are heard only in the test list and
``validation_voices`` others only in the validation list, in every accent, so a classifier is scored on voices it
never trained on (Speech Commands splits by speaker in the same way).

Every random choice of clip ``N`` of keyword ``K`` comes from a generator seeded with (seed, CRC-32 of ``K``, N),
and the split from the seed alone, so the files are the same whatever the number of worker processes, and the
same on every machine with the same espeak-ng (its version is in ``MANIFEST.json``). No ``sox`` is needed: the
signal processing is NumPy and SciPy.
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import subprocess
import zlib
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import CopycatchError, DataNotFound, InvalidArgument
from ..core.params import Params
from ..core.runtime import progress as progress_bar
from .audio import CLIP_SAMPLES, SAMPLE_RATE, keyword_folder, require_soundfile
from .base import Dataset, register_dataset
from .prepare import MANIFEST, locate, register_generator

# espeak-ng's English voices that sound different from each other (en-us-nyc is en-us again in espeak-ng 1.51)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
# human-sounding variants; robots, whispers and effects are left out
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
    "Andy", "Annie", "anika", "belinda", "benjamin", "edward", "linda", "max", "michel", "norbert", "paul", "steph",
    "travis", "victor", "zac", "grandma",
)  # fmt: skip
SPEECH_COMMANDS_TEN = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ESPEAK_RATE = 22_050
SPEED_WPM = (120, 200)  # espeak-ng's -s, words per minute (its default is 175)
PITCH = (20, 80)  # espeak-ng's -p, 0..99 (default 50)
PEAK_DBFS = (-20.0, -1.0)
NOISE_COLOURS = ("white", "pink", "brown")
BACKGROUND_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class SpokenKeywordsParams(Params):
    """What ``copycatch data prepare spoken-keywords -p K=V`` may change."""

    kind = "spoken-keywords"
    keywords: tuple[str, ...] = SPEECH_COMMANDS_TEN
    clips_per_keyword: int = 300
    validation_voices: int = 4  # voice variants heard only in validation_list.txt
    test_voices: int = 4  # voice variants heard only in testing_list.txt
    snr_db_min: float = 5.0
    snr_db_max: float = 30.0

    def validate(self) -> None:
        for word in self.keywords:
            if not re.fullmatch(r"[a-z]+", word):
                raise InvalidArgument(f"keyword {word!r} must be lower-case letters (it names a folder)")
        if len(set(self.keywords)) < 2:
            raise InvalidArgument("spoken-keywords needs at least 2 distinct keywords")
        if self.clips_per_keyword < 1:
            raise InvalidArgument(f"clips_per_keyword={self.clips_per_keyword} must be at least 1")
        if min(self.validation_voices, self.test_voices) < 1:
            raise InvalidArgument("validation_voices and test_voices must each be at least 1")
        if self.validation_voices + self.test_voices >= len(VARIANTS):
            raise InvalidArgument(f"validation_voices + test_voices must leave training voices of {len(VARIANTS)}")
        if not self.snr_db_min <= self.snr_db_max:
            raise InvalidArgument(f"snr_db_min={self.snr_db_min} exceeds snr_db_max={self.snr_db_max}")


def espeak() -> str:
    """The ``espeak-ng`` executable, or an error saying how to install it."""
    found = shutil.which("espeak-ng")
    if found is None:
        raise DataNotFound(
            "spoken-keywords is synthesised with espeak-ng, which is not installed: "
            "`sudo apt-get install -y espeak-ng` (Debian/Ubuntu)"
        )
    return found


def _espeak_output(*args: str) -> str:
    done = subprocess.run([espeak(), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CopycatchError(f"espeak-ng {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def available_voices() -> tuple[list[str], list[str]]:
    """The accents and variants of :data:`ACCENTS` and :data:`VARIANTS` this espeak-ng has (it silently falls
    back to its default voice for a name it lacks, so they are checked against its voice lists)."""
    languages = {line.split()[1] for line in _espeak_output("--voices=en").splitlines()[1:] if line.split()}
    files = {line.split()[4] for line in _espeak_output("--voices=variant").splitlines()[1:] if len(line.split()) > 4}
    return [a for a in ACCENTS if a in languages], [v for v in VARIANTS if f"!v/{v}" in files]


def noise(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of white, pink (1/f power) or brown (1/f²) Gaussian noise with unit RMS."""
    white = rng.standard_normal(n)
    if colour != "white":
        spectrum = np.fft.rfft(white)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0  # the DC bin keeps its (random) value rather than dividing by zero
        spectrum /= f ** (0.5 if colour == "pink" else 1.0)
        white = np.fft.irfft(spectrum, n)
    return white / np.sqrt(np.mean(white**2))


def synthesise(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``word`` spoken by espeak-ng, as float samples at 16 kHz with the silence around it trimmed."""
    from scipy.signal import resample_poly

    # the word goes on stdin, so it can never be read as an option
    done = subprocess.run(
        [espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"],
        input=word.encode(),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0 or not done.stdout:
        raise CopycatchError(f"espeak-ng -v {voice} failed on {word!r}: {done.stderr.decode(errors='replace').strip()}")
    samples, rate = require_soundfile().read(io.BytesIO(done.stdout), dtype="float64")
    if rate != ESPEAK_RATE:
        raise CopycatchError(f"espeak-ng wrote {rate} Hz audio, expected {ESPEAK_RATE}")
    speech = resample_poly(samples, SAMPLE_RATE // 50, ESPEAK_RATE // 50)  # 320/441
    loud = np.flatnonzero(np.abs(speech) > 0.01 * np.abs(speech).max(initial=1e-12))
    return speech[loud[0] : loud[-1] + 1] if len(loud) else speech


@dataclasses.dataclass(frozen=True)
class ClipTask:
    """Everything one worker needs to make one clip; the clip depends on nothing else."""

    out: str
    seed: int
    word: str
    index: int
    accents: tuple[str, ...]
    variants: tuple[str, ...]
    snr_db: tuple[float, float]


def make_clip(task: ClipTask) -> tuple[str, str]:
    """Synthesise, shift, scale and add noise to one clip, write it; returns its list entry and its variant."""
    rng = np.random.default_rng([task.seed, zlib.crc32(task.word.encode()), task.index])
    accent = task.accents[rng.integers(len(task.accents))]
    variant = task.variants[rng.integers(len(task.variants))]
    speed, pitch = int(rng.integers(*SPEED_WPM, endpoint=True)), int(rng.integers(*PITCH, endpoint=True))
    speech = synthesise(task.word, f"{accent}+{variant}", speed, pitch)[:CLIP_SAMPLES]
    clip = np.zeros(CLIP_SAMPLES)
    start = int(rng.integers(CLIP_SAMPLES - len(speech) + 1))
    peak = 10 ** (rng.uniform(*PEAK_DBFS) / 20)
    clip[start : start + len(speech)] = speech * (peak / max(np.abs(speech).max(initial=0.0), 1e-12))
    rms = np.sqrt(np.mean(clip[start : start + len(speech)] ** 2))
    snr = rng.uniform(*task.snr_db)
    clip += noise(NOISE_COLOURS[rng.integers(len(NOISE_COLOURS))], CLIP_SAMPLES, rng) * rms / 10 ** (snr / 20)
    pcm = np.clip(np.round(clip * 32768), -32768, 32767).astype(np.int16)
    entry = f"{task.word}/{variant}-{accent}_nohash_{task.index:04d}.wav"
    require_soundfile().write(str(Path(task.out) / entry), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return entry, variant


def _run(tasks: list[ClipTask], workers: int) -> Iterable[tuple[str, str]]:
    if workers <= 1:
        yield from map(make_clip, tasks)
        return
    # spawn, not fork: the parent holds torch's thread pools, which a forked child must not inherit
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        yield from pool.map(make_clip, tasks, chunksize=16)


@register_generator("spoken-keywords", params=SpokenKeywordsParams, version=1)
def generate_spoken_keywords(
    out: Path, *, seed: int, params: SpokenKeywordsParams, workers: int, progress: bool | None
) -> dict[str, Any]:
    """Write the Speech Commands layout into ``out``; see the module docstring."""
    accents, variants = available_voices()
    if not accents or len(variants) <= params.validation_voices + params.test_voices:
        raise DataNotFound(
            f"this espeak-ng lacks the English voices spoken-keywords uses (found accents {accents}, "
            f"{len(variants)} variants): reinstall espeak-ng-data"
        )
    order = np.random.default_rng(seed).permutation(len(variants))
    held = [variants[i] for i in order[: params.test_voices + params.validation_voices]]
    test, validation = set(held[: params.test_voices]), set(held[params.test_voices :])
    for word in params.keywords:
        (out / word).mkdir()
    snr = (params.snr_db_min, params.snr_db_max)
    tasks = [
        ClipTask(str(out), seed, word, i, tuple(accents), tuple(variants), snr)
        for word in params.keywords
        for i in range(params.clips_per_keyword)
    ]
    lists: dict[str, list[str]] = {"testing": [], "validation": []}
    for entry, variant in progress_bar(_run(tasks, workers), total=len(tasks), desc="synthesise", enabled=progress):
        if variant in test:
            lists["testing"].append(entry)
        elif variant in validation:
            lists["validation"].append(entry)
    for name, entries in lists.items():
        (out / f"{name}_list.txt").write_text("".join(f"{e}\n" for e in sorted(entries)), encoding="utf-8")
    background = out / "_background_noise_"
    background.mkdir()
    rng = np.random.default_rng([seed, len(tasks)])
    for colour in NOISE_COLOURS:
        samples = 0.1 * noise(colour, BACKGROUND_SECONDS * SAMPLE_RATE, rng)
        pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype(np.int16)
        require_soundfile().write(str(background / f"{colour}_noise.wav"), pcm, SAMPLE_RATE, subtype="PCM_16")
    return {
        "espeak-ng": _espeak_output("--version").strip(),
        "accents": accents,
        "voices": {
            "train": sorted(set(variants) - test - validation),
            "validation": sorted(validation),
            "test": sorted(test),
        },
        "clips": {"total": len(tasks), "validation": len(lists["validation"]), "test": len(lists["testing"])},
    }


@register_dataset("spoken-keywords", modality="audio")
def spoken_keywords(path: str = "", data_dir: str | None = None) -> Dataset:
    """Offline stand-in for Speech Commands: espeak-ng keywords (copycatch data prepare spoken-keywords)."""
    where = locate("spoken-keywords", path, data_dir, lambda d: (d / MANIFEST).is_file())
    return keyword_folder(where, "spoken-keywords")
