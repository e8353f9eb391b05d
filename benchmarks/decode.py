"""Image decoding throughput: the hand-written PNG reader (``copycatch.data.png``; measured before its removal,
skipped where it is gone) against Pillow (:mod:`copycatch.data.image_codec`), on the same bytes; JPEG and WebP with
Pillow; and the start-up time of ``copycatch --help`` and ``--version``.

The images are real MNIST digits (``mnist-5k``, the ``datasets`` extra; else seeded smooth noise): 28×28 greyscale
as they are, and 224×224 RGB made from them (upscaled, each channel a differently shifted copy), so the files
compress like photographs rather than like noise. Every decoder turns each file into the float32 C×H×W array in
[0, 1] the server feeds its model; each measurement is the best of ``repeats`` passes over all the files.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/decode.py

Results (configuration, rows) go to bench-out/decode-<time>.json.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "sets": [  # (name, count, channels, side)
        ("28×28 grey", 2000, 1, 28),
        ("224×224 RGB", 200, 3, 224),
    ],
    "formats": ["PNG", "JPEG", "WEBP"],
    "jpeg_quality": 90,
    "webp_quality": 90,
    "repeats": 3,  # passes over the files; the best is reported (the machine is shared)
    "cli_runs": 5,  # runs of `copycatch --help` / `--version`; the median is reported
    "seed": 0,
}

ROOT = Path(__file__).resolve().parents[1]


def source_images(count: int, channels: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 N×H×W×C images: MNIST digits (resized and tinted for RGB), else smooth noise."""
    from PIL import Image

    import copycatch as cc

    try:
        base = cc.load_dataset("mnist-5k").train.stored[:count, 0].numpy()
    except cc.CopycatchError:  # the datasets extra is not installed: smooth seeded noise instead
        small = rng.integers(0, 256, (count, 7, 7), dtype=np.uint8)
        base = np.stack([np.asarray(Image.fromarray(s).resize((28, 28), Image.Resampling.BICUBIC)) for s in small])
    out = []
    for img in base:
        img = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BICUBIC))
        if channels == 3:
            img = np.stack([np.roll(img, shift, axis=1) for shift in (0, side // 16, side // 8)], axis=2)
        out.append(img if channels == 3 else img[..., None])
    return np.stack(out)


def encode(images: np.ndarray, fmt: str) -> list[bytes]:
    from PIL import Image

    options = {"JPEG": {"quality": hyp["jpeg_quality"]}, "WEBP": {"quality": hyp["webp_quality"]}}.get(fmt, {})
    files = []
    for img in images:
        buffer = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).save(buffer, format=fmt, **options)
        files.append(buffer.getvalue())
    return files


def throughput(decode, files: list[bytes]) -> float:
    """Images per second: the best of ``repeats`` passes."""
    best = float("inf")
    for _ in range(hyp["repeats"]):
        started = time.perf_counter()
        for data in files:
            decode(data)
        best = min(best, time.perf_counter() - started)
    return len(files) / best


def cli_seconds(flag: str) -> float:
    exe = str(ROOT / ".venv" / "bin" / "copycatch")
    times = []
    for _ in range(hyp["cli_runs"]):
        started = time.perf_counter()
        subprocess.run([exe, flag], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    from copycatch.data.image_codec import decode_image

    try:  # the old reader, present only before its removal
        decode_png = importlib.import_module("copycatch.data.png").decode_png
    except ImportError:
        decode_png = None
    rng = np.random.default_rng(hyp["seed"])
    rows = []
    for name, count, channels, side in hyp["sets"]:
        images = source_images(count, channels, side, rng)
        expect = (channels, side, side)
        for fmt in hyp["formats"]:
            files = encode(images, fmt)
            size = sum(map(len, files)) / len(files)
            decoders = {"Pillow": functools.partial(decode_image, expect=expect)}
            if fmt == "PNG" and decode_png is not None:
                decoders = {"old reader": functools.partial(decode_png, expect=expect), **decoders}
            for decoder, fn in decoders.items():
                rate = throughput(fn, files)
                rows.append({"set": name, "format": fmt, "decoder": decoder, "bytes": size, "images_per_s": rate})
                print(f"{name:12s} {fmt:5s} {decoder:10s} {size:8.0f} B/image {rate:10.0f} images/s", flush=True)
    cli = {flag: cli_seconds(flag) for flag in ("--help", "--version")}
    for flag, seconds in cli.items():
        print(f"copycatch {flag}: {seconds * 1000:.0f} ms (median of {hyp['cli_runs']})")
    out = ROOT / "bench-out" / f"decode-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"hyp": hyp, "threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows, "cli_s": cli}, indent=1)
    )
    print(f"saved {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
