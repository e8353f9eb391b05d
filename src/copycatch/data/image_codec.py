"""Images from files or bytes, decoded with Pillow (the ``images`` extra; the ``serve`` extra brings it too).

The one image codec of the package: the image-folder and image-csv data sets read their files with it,
``copycatch serve`` decodes the images its clients send with it, and
:class:`~copycatch.oracles.http.HttpOracle` encodes the images it sends to a PNG-taking API with :func:`encode_png`.

Decoding, in order:

1. the format is read from the bytes, never from a name or a ``Content-Type``: only the formats asked for are tried
   (:data:`WEB_FORMATS` for the server; BMP too for files), and anything else is refused;
2. the header's width × height is checked against a pixel limit *before* anything is decompressed, so a small file
   claiming a huge image (a decompression bomb) costs a few hundred bytes of parsing (Pillow's own
   ``MAX_IMAGE_PIXELS`` guard is turned into the same refusal, whatever that global is set to);
3. the pixels are made the model's channels — greyscale (``L``) or RGB; alpha is dropped, as torchvision's
   ``ImageFolder`` drops it, and 16-bit greyscale keeps its high byte — then resized to the model's height × width
   with Pillow's bilinear filter when they differ.

Values are uint8 C×H×W (:func:`read_pixels`, what data sets store) or float32 in [0, 1] (:func:`decode_image`,
``pixels / 255``, bit-identical to :func:`copycatch.data.base.to_float`). Every problem is one
:class:`ImageError` (an :class:`~copycatch.core.errors.InvalidArgument`) naming the image; one over the pixel limit
is a :class:`ImageTooLarge`, so the server can answer it 413.

Pillow is imported on first use, so this module loads without it (``copycatch ledger``, ``--help``).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..core.errors import DataNotFound, InvalidArgument

WEB_FORMATS = ("PNG", "JPEG", "WEBP")  # what a client may send the server
FILE_FORMATS = (*WEB_FORMATS, "BMP")  # what the image data sets read
# Pillow's own default for Image.MAX_IMAGE_PIXELS, enforced from the header whatever that global is set to
MAX_PIXELS = 89_478_485
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L")  # 16-bit greyscale PNG; Pillow's convert("L") would clip, not scale


class ImageError(InvalidArgument):
    """Bytes or a file that are not an image we accept; the message names it and says why."""


class ImageTooLarge(ImageError):
    """An image whose header claims more pixels than the limit (a decompression bomb, or just too big)."""


def require_pillow() -> Any:
    """``PIL.Image``, or an error saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise DataNotFound("decoding images needs Pillow: pip install 'copycatch[images]'") from None
    return Image


def _format_names(formats: Sequence[str]) -> str:
    names = [{"WEBP": "WebP"}.get(f, f) for f in formats]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


@contextlib.contextmanager
def open_image(
    source: bytes | str | os.PathLike | BinaryIO,
    *,
    name: str | None = None,
    formats: Sequence[str] = FILE_FORMATS,
    max_pixels: int = MAX_PIXELS,
) -> Iterator[Any]:
    """The image in ``source`` (bytes, a path or a binary file), opened lazily (header only) and refused when it is
    not one of ``formats`` or has more than ``max_pixels`` pixels; closed on leaving."""
    image_module = require_pillow()
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    with contextlib.ExitStack() as stack:
        if isinstance(source, (bytes, bytearray, memoryview)):
            handle: BinaryIO = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            try:
                handle = stack.enter_context(Path(source).open("rb"))  # Pillow leaves a handle it was given open
            except OSError as exc:
                raise DataNotFound(f"{name}: cannot read ({exc.strerror or exc})") from None
        else:
            handle = source
        try:
            with warnings.catch_warnings():
                # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning is a refusal here
                warnings.simplefilter("error", image_module.DecompressionBombWarning)
                image = image_module.open(handle, formats=list(formats))
        except (image_module.DecompressionBombError, image_module.DecompressionBombWarning):
            limit = min(max_pixels, image_module.MAX_IMAGE_PIXELS or max_pixels)
            raise ImageTooLarge(f"{name}: more than {limit:,} pixels (refused as a decompression bomb)") from None
        except Exception as exc:  # Pillow's plugins raise many kinds; any of them means the bytes are unusable
            raise ImageError(f"{name}: not a readable {_format_names(formats)} image ({_reason(exc)})") from None
        with image:
            if image.width * image.height > max_pixels:
                raise ImageTooLarge(
                    f"{name}: {image.width}×{image.height} is more than {max_pixels:,} pixels "
                    "(refused as a decompression bomb)"
                )
            yield image


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # Pillow names the in-memory handle in its message; the caller names the image instead
    return text.split(" <_io.BytesIO")[0]


def is_grey(image: Any) -> bool:
    """Whether an opened image holds greyscale (a palette image counts as colour)."""
    return image.mode in _GREY_MODES


def to_pixels(image: Any, channels: int, size: tuple[int, int] | None = None, *, name: str = "image") -> np.ndarray:
    """uint8 C×H×W pixels of an opened image: decoded, made ``channels`` (1 or 3) and resized to ``size`` =
    (height, width) when given and different."""
    image_module = require_pillow()
    try:
        image.load()
        if image.mode in _WIDE_MODES:
            image = image_module.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
        image = image.convert("L" if channels == 1 else "RGB")
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), image_module.Resampling.BILINEAR)
    except Exception as exc:  # a truncated or corrupt body shows only when it is decoded
        raise ImageError(f"{name}: not a readable {image.format or 'image'} image ({_reason(exc)})") from None
    pixels = np.asarray(image)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def read_pixels(
    source: bytes | str | os.PathLike,
    *,
    expect: Sequence[int],
    name: str | None = None,
    formats: Sequence[str] = WEB_FORMATS,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """uint8 C×H×W pixels of one image for a model taking ``expect`` = (C, H, W): see the module docstring."""
    c, h, w = (int(v) for v in expect)
    if c not in (1, 3):
        raise InvalidArgument(f"images are decoded to 1 (greyscale) or 3 (RGB) channels, not {c}")
    with open_image(source, name=name, formats=formats, max_pixels=max_pixels) as image:
        return to_pixels(image, c, (h, w), name=name or "image")


def decode_image(
    data: bytes,
    *,
    expect: Sequence[int],
    name: str = "image",
    formats: Sequence[str] = WEB_FORMATS,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """float32 C×H×W in [0, 1] of one PNG, JPEG or WebP image (``formats``) for a model taking ``expect``."""
    pixels = read_pixels(data, expect=expect, name=name, formats=formats, max_pixels=max_pixels)
    return pixels.astype(np.float32) / np.float32(255)


def encode_png(x: Any) -> bytes:
    """An 8-bit greyscale (C=1) or RGB (C=3) PNG of a C×H×W array or tensor in [0, 1] (values rounded to k/255)."""
    image_module = require_pillow()
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise InvalidArgument(f"encode_png needs a C×H×W array with C = 1 or 3, got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise InvalidArgument("encode_png needs finite values in [0, 1]")
    pixels = np.round(arr * 255).astype(np.uint8)
    image = image_module.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
