"""A strict, small PNG codec (no Pillow needed, nothing decoded that we did not ask for).

The one codec of the package: ``copycatch serve`` decodes the images its clients send with it, and
:class:`~copycatch.oracles.http.HttpOracle` encodes the images it sends to a PNG-taking API with it.

``decode_png(data, expect=(C, H, W))`` checks the header *before* decompressing: the width and height must be
the model's, so a decompression bomb is refused after 33 bytes, and inflation is capped at the exact size the
header implies. Supported: every non-interlaced PNG — greyscale (1-16 bit), RGB, grey+alpha and RGBA (8 or 16 bit)
and palette images (1-8 bit); every CRC is checked. Alpha must be fully opaque (it is dropped); a greyscale PNG is
replicated to a 3-channel model, but colour is never silently turned into grey. Values become float32 in [0, 1].

``encode_png(x)`` writes a C×H×W [0, 1] tensor (C = 1 or 3) as an 8-bit PNG, for clients and tests.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

from ..core.errors import InvalidArgument

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_KIND = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}


class PngError(InvalidArgument):
    """Bytes that are not a PNG we accept; the message says why."""


def _chunks(data: bytes):
    pos = len(SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise PngError("truncated PNG (chunk header cut off)")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise PngError(f"truncated PNG ({kind.decode('latin-1')!r} chunk cut off)")
        body = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise PngError(f"corrupt PNG (bad CRC in {kind.decode('latin-1')!r} chunk)")
        yield kind, body
        pos = end + 4
        if kind == b"IEND":
            return
    raise PngError("truncated PNG (no IEND chunk)")


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw: bytes, height: int, rowbytes: int, bpp: int) -> np.ndarray:
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, rowbytes + 1)
    out = np.zeros((height, rowbytes), dtype=np.uint8)
    prior = np.zeros(rowbytes, dtype=np.uint8)
    for y in range(height):
        ftype, line = int(rows[y, 0]), rows[y, 1:]
        if ftype == 0:
            cur = line.copy()
        elif ftype == 2:  # Up
            cur = line + prior
        elif ftype == 1:  # Sub: a running sum per byte lane, which numpy does in one go
            pad = (-rowbytes) % bpp
            lanes = np.concatenate([line, np.zeros(pad, np.uint8)]).reshape(-1, bpp).astype(np.uint64)
            cur = (np.cumsum(lanes, axis=0) % 256).astype(np.uint8).reshape(-1)[:rowbytes]
        elif ftype in (3, 4):  # Average, Paeth: inherently sequential
            cur_list = [0] * rowbytes
            line_l, prior_l = line.tolist(), prior.tolist()
            for i in range(rowbytes):
                left = cur_list[i - bpp] if i >= bpp else 0
                up = prior_l[i]
                pred = (left + up) // 2 if ftype == 3 else _paeth(left, up, prior_l[i - bpp] if i >= bpp else 0)
                cur_list[i] = (line_l[i] + pred) & 0xFF
            cur = np.asarray(cur_list, dtype=np.uint8)
        else:
            raise PngError(f"corrupt PNG (row {y} has unknown filter type {ftype})")
        out[y] = cur
        prior = cur
    return out


def decode_png(data: bytes, *, expect: Sequence[int]) -> np.ndarray:
    """Decode ``data`` to a float32 C×H×W array in [0, 1] for a model taking ``expect`` = (C, H, W)."""
    c_want, h_want, w_want = (int(v) for v in expect)
    if not data.startswith(SIGNATURE):
        raise PngError("not a PNG (bad signature)")
    header, palette, idat = _read_chunks(data, h_want, w_want)
    width, height, depth, ctype = header[0], header[1], header[2], header[3]
    channels = _CHANNELS[ctype]
    bpp = max(1, channels * depth // 8)  # the filters' byte distance; 1 for sub-byte pixels
    rowbytes = (width * channels * depth + 7) // 8
    raw = _inflate(b"".join(idat), height * (rowbytes + 1))
    pixels, img = _samples(_unfilter(raw, height, rowbytes, bpp), width, height, depth, channels)
    if ctype == 3:
        if palette is None:
            raise PngError("corrupt PNG (palette image without PLTE)")
        index = pixels.reshape(height, width)
        if int(index.max()) >= len(palette):
            raise PngError("corrupt PNG (palette index out of range)")
        img = palette[index].astype(np.float32) / 255.0
        channels = 3
    elif ctype in (4, 6):
        if not np.all(img[..., -1] == 1.0):
            raise PngError(f"{_KIND[ctype]} PNG has transparent pixels; send opaque images")
        img = img[..., :-1]
        channels -= 1
    if channels == c_want:
        pass
    elif channels == 1 and c_want == 3:
        img = np.repeat(img, 3, axis=2)
    else:
        got = "greyscale" if channels == 1 else "colour"
        raise PngError(
            f"PNG is {got} ({channels} channel{'s' if channels > 1 else ''}) but the model takes "
            f"{c_want}-channel images"
        )
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def _read_chunks(data: bytes, h_want: int, w_want: int) -> tuple[tuple[int, ...], np.ndarray | None, list[bytes]]:
    """The checked IHDR fields, the palette (if any) and the IDAT bodies; nothing is inflated yet."""
    header = None
    palette = None
    idat = []
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            if header is not None:
                raise PngError("corrupt PNG (two IHDR chunks)")
            header = _check_header(body, h_want, w_want)
        elif header is None:
            raise PngError("corrupt PNG (first chunk is not IHDR)")
        elif kind == b"PLTE":
            if len(body) % 3 or not body:
                raise PngError("corrupt PNG (palette length is not a multiple of 3)")
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
    if header is None:
        raise PngError("corrupt PNG (no IHDR)")
    return header, palette, idat


def _check_header(body: bytes, h_want: int, w_want: int) -> tuple[int, ...]:
    """The IHDR fields, refused unless the size is the model's and the format one we decode."""
    if len(body) != 13:
        raise PngError("corrupt PNG (IHDR is not 13 bytes)")
    header = struct.unpack(">IIBBBBB", body)
    width, height, depth, ctype, compression, filter_method, interlace = header
    if (height, width) != (h_want, w_want):
        raise PngError(f"PNG is {width}×{height} pixels but the model takes {w_want}×{h_want}")
    if ctype not in _CHANNELS:
        raise PngError(f"corrupt PNG (colour type {ctype})")
    allowed = {0: (1, 2, 4, 8, 16), 3: (1, 2, 4, 8)}.get(ctype, (8, 16))
    if depth not in allowed:
        raise PngError(f"invalid {depth}-bit {_KIND[ctype]} PNG (allowed depths: {', '.join(map(str, allowed))})")
    if compression != 0 or filter_method != 0:
        raise PngError("corrupt PNG (unknown compression or filter method)")
    if interlace != 0:
        raise PngError("interlaced PNGs are not supported; send non-interlaced PNGs")
    return header


def _inflate(compressed: bytes, expected: int) -> bytes:
    """The image data, inflated to at most one byte more than the header implies (so a bomb stops there)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, expected + 1)
    except zlib.error:
        raise PngError("corrupt PNG (image data does not inflate)") from None
    if len(raw) != expected:
        raise PngError(f"corrupt PNG (image data inflates to {len(raw)} bytes, expected {expected})")
    return raw


def _samples(pixels: np.ndarray, width: int, height: int, depth: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The unfiltered rows as one sample per byte (sub-byte pixels unpacked) and as H×W×channels floats in [0, 1]."""
    if depth < 8:  # 1, 2 or 4 bits per pixel (greyscale or palette): unpack, high bits first
        rowbytes = pixels.shape[1]
        per_byte = 8 // depth
        shifts = np.arange(8 - depth, -1, -depth, dtype=np.uint8)
        unpacked = (pixels[:, :, None] >> shifts) & ((1 << depth) - 1)
        pixels = unpacked.reshape(height, rowbytes * per_byte)[:, :width]
        return pixels, pixels.reshape(height, width, 1).astype(np.float32) / ((1 << depth) - 1)
    if depth == 16:
        values = pixels.reshape(height, width, channels, 2).astype(np.uint16)
        return pixels, (values[..., 0] << 8 | values[..., 1]).astype(np.float32) / 65535.0
    return pixels, pixels.reshape(height, width, channels).astype(np.float32) / 255.0


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def encode_png(x) -> bytes:
    """An 8-bit greyscale (C=1) or RGB (C=3) PNG of a C×H×W array in [0, 1] (values rounded to k/255)."""
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise InvalidArgument(f"encode_png needs a C×H×W array with C = 1 or 3, got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise InvalidArgument("encode_png needs finite values in [0, 1]")
    c, h, w = arr.shape
    pixels = np.round(arr * 255).astype(np.uint8).transpose(1, 2, 0).reshape(h, w * c)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), pixels], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
