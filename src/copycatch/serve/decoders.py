"""Request decoders: how a ``POST /v1/predict`` body becomes model inputs, one decoder per modality.

:data:`DECODERS` is the one place that maps a modality (:data:`copycatch.data.base.MODALITIES`) to what the route
accepts; the route, the OpenAPI schema, ``/v1/info`` and the examples in ``/docs`` all ask the decoder.

=========  ==================================  ============================  =====================================
modality   JSON fields (exactly one)           raw body (one input)          what the model reads
=========  ==================================  ============================  =====================================
image      ``inputs`` N×C×H×W in [0, 1],       ``image/png|jpeg|webp``       float32 N×C×H×W in [0, 1]
           ``images`` base64 PNG/JPEG/WebP
text       ``inputs`` N rows of token ids,     ``text/plain`` (UTF-8)        int64 N×L token ids
           ``texts`` strings (needs the
           model's vocabulary)
audio      ``inputs`` N×1×S in [-1, 1],        ``audio/wav``                 float32 N×1×S
           ``clips`` base64 16 kHz mono WAVs
=========  ==================================  ============================  =====================================

A model whose inputs come as files (a text model only with its vocabulary) also takes ``multipart/form-data``: one
or more files under the field ``files``, each decoded like a raw body. An image over ``max_image_pixels``, a clip
over ``max_clip_seconds`` (or its bytes) and a text over ``max_text_chars`` are refused 413 (:class:`ServeConfig`).

Images are decoded by :mod:`copycatch.data.image_codec` (format read from the bytes, pixel limit checked
from the header before decompressing, converted to the model's channels and resized to its H×W); clips by
:func:`copycatch.data.audio.decode_wav` (16 kHz mono checked, padded or cut to the model's length); texts by the
model's :class:`~copycatch.data.vocabulary.Vocabulary`. Token-id rows may be shorter than L: they are padded with
``<pad>`` (0), as the vocabulary pads.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import Field, WithJsonSchema

from ..core.errors import InvalidArgument
from ..data.audio import SAMPLE_RATE, decode_wav, encode_wav, require_soundfile
from ..data.image_codec import WEB_FORMATS, ImageTooLarge, decode_image, encode_png, require_pillow
from ..data.vocabulary import PAD_ID, Vocabulary
from .config import ServeConfig
from .validation import RequestError, build_request_model, parse_json, shape_text

JSON = "application/json"
MULTIPART = "multipart/form-data"
FILES_FIELD = "files"
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,")
_LIST_EXAMPLE_VALUES = 1024  # an `inputs` example is shown when one input has at most this many values


class Decoder:
    """What one modality's requests may hold and how they become a batch of model inputs."""

    modality = ""
    rank = 0  # of the model's input shape
    shape_parts = ""  # what the input shape is, for errors
    levels: tuple[str, ...] = ()  # names of the nested levels of `inputs`, the batch first
    value_range = (0.0, 1.0)  # of `inputs` values (floats)
    encoded_field = ""  # the JSON field of encoded inputs
    encoded_what = ""  # what one of them is, for errors and the schema
    encoded_format = ""  # the OpenAPI format of one of them (schema-driven clients plug in a generator by its name)
    # raw body Content-Types taking one input; what the bytes hold is read from them, whichever of these is declared
    media_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, input_shape: Sequence[int], max_batch: int, config: ServeConfig) -> None:
        shape = tuple(int(v) for v in input_shape)
        if len(shape) != self.rank:
            raise InvalidArgument(
                f"a {self.modality} model takes inputs shaped {self.shape_parts}, but this one declares "
                f"{shape_text(shape)}"
            )
        self.input_shape = shape
        self.max_batch = max_batch
        self.config = config
        self.request_model = build_request_model(self.fields(), max_batch)

    # -- the schema ------------------------------------------------------------------------------------------------
    def fields(self) -> dict[str, tuple[Any, str]]:
        """JSON field -> (annotation of one item, description)."""
        lo, hi = self.value_range
        value = Annotated[float, WithJsonSchema({"type": "number", "minimum": lo, "maximum": hi})]
        item: Any = value
        for size in reversed(self.input_shape):
            item = Annotated[list[item], Field(min_length=size, max_length=size, fail_fast=True)]
        fields = {"inputs": (item, f"N×{shape_text(self.input_shape)} values in [{lo:g}, {hi:g}]")}
        encoded = Annotated[str, Field(min_length=1, json_schema_extra={"format": self.encoded_format})]
        fields[self.encoded_field] = (encoded, f"base64-encoded {self.encoded_what}s")
        return fields

    def json_examples(self) -> dict[str, dict[str, Any]]:
        """Named request-body examples for ``/docs``: valid requests for this model."""
        examples = {}
        if math.prod(self.input_shape) <= _LIST_EXAMPLE_VALUES:
            zeros = np.zeros(self.input_shape).tolist()
            examples["lists"] = {"summary": "one input as nested lists", "value": {"inputs": [zeros]}}
        return examples

    def content_types(self) -> list[str]:
        """What the predict route takes: JSON, and when inputs come as files, a raw body of one and a form of many."""
        return [JSON, *self.media_types, *([MULTIPART] if self.media_types else [])]

    def input_formats(self) -> list[str]:
        """The JSON fields and the other Content-Types, as ``/v1/info`` lists them."""
        return [*self.fields(), *self.content_types()[1:]]

    # -- decoding --------------------------------------------------------------------------------------------------
    def parse_json(self, body: bytes) -> torch.Tensor:
        request = parse_json(body, self.request_model, self)
        (name,) = request.model_fields_set
        values = getattr(request, name)
        if name == "inputs":
            return self.from_lists(values)
        return self.from_encoded(name, values)

    def from_lists(self, values: list[Any]) -> torch.Tensor:
        """Validated nested lists (shape and types already checked) as float32, their range checked."""
        array = np.asarray(values, dtype=np.float64)
        lo, hi = self.value_range
        bad = ~((array >= lo) & (array <= hi))
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            where = "inputs" + "".join(f"[{i}]" for i in index)
            raise RequestError(422, f"{where} = {array[index]:g} is outside [{lo:g}, {hi:g}]; scale inputs to it")
        return torch.from_numpy(array.astype(np.float32))

    def from_encoded(self, name: str, values: list[str]) -> torch.Tensor:
        """Base64 strings (or ``data:`` URLs) of encoded inputs, each decoded like a raw body."""
        items = []
        for i, text in enumerate(values):
            if match := _DATA_URL.match(text):
                if match.group(1) not in self.media_types:
                    raise RequestError(
                        422, f"{name}[{i}] is a data: URL of {match.group(1)}; send {', '.join(self.media_types)}"
                    )
                text = text[match.end() :]
            try:
                items.append((f"{name}[{i}]", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                raise RequestError(422, f"{name}[{i}] is not valid base64") from None
        return self.from_media(items)

    def from_media(self, items: Sequence[tuple[str, bytes]]) -> torch.Tensor:
        """(name, bytes) of encoded inputs (raw bodies, files, base64-decoded strings) as one batch."""
        decoded = []
        for name, data in items:
            try:
                decoded.append(self.decode(data, name))
            except ImageTooLarge as exc:
                raise RequestError(413, str(exc)) from None
            except InvalidArgument as exc:
                raise RequestError(422, str(exc)) from None
        return torch.from_numpy(np.stack(decoded))

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """One input of the model from its encoded bytes."""
        raise NotImplementedError


class ImageDecoder(Decoder):
    modality = "image"
    rank = 3
    shape_parts = "C×H×W"
    levels = ("inputs", "channels", "rows", "values per row")
    encoded_field = "images"
    encoded_what = "PNG, JPEG or WebP image"
    encoded_format = "base64-image"
    media_types: ClassVar[tuple[str, ...]] = ("image/png", "image/jpeg", "image/webp")

    def __init__(self, input_shape: Sequence[int], max_batch: int, config: ServeConfig) -> None:
        super().__init__(input_shape, max_batch, config)
        require_pillow()  # refused at start-up, not on the first request
        if self.input_shape[0] not in (1, 3):
            raise InvalidArgument(f"images are decoded to 1 or 3 channels; the model takes {self.input_shape[0]}")

    def fields(self) -> dict[str, tuple[Any, str]]:
        fields = super().fields()
        c, h, w = self.input_shape
        kind = "greyscale" if c == 1 else "RGB"
        fields["images"] = (
            fields["images"][0],
            f"base64 PNG, JPEG or WebP images (or data: URLs), made {kind} and resized to {w}×{h}",
        )
        return fields

    def json_examples(self) -> dict[str, dict[str, Any]]:
        grey = base64.b64encode(encode_png(np.full(self.input_shape, 0.5, dtype=np.float32))).decode("ascii")
        image = {"summary": "one base64 PNG image", "value": {"images": [grey]}}
        return {**super().json_examples(), "image": image}

    def decode(self, data: bytes, name: str) -> np.ndarray:
        return decode_image(
            data, expect=self.input_shape, name=name, formats=WEB_FORMATS, max_pixels=self.config.max_image_pixels
        )


class AudioDecoder(Decoder):
    modality = "audio"
    rank = 2
    shape_parts = "1×S (mono samples)"
    levels = ("inputs", "channels", "samples")
    value_range = (-1.0, 1.0)
    encoded_field = "clips"
    encoded_what = "16 kHz mono WAV clip"
    encoded_format = "base64-wav"
    media_types: ClassVar[tuple[str, ...]] = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")

    def __init__(self, input_shape: Sequence[int], max_batch: int, config: ServeConfig) -> None:
        super().__init__(input_shape, max_batch, config)
        require_soundfile()
        if self.input_shape[0] != 1:
            raise InvalidArgument(f"clips are mono; the model takes {self.input_shape[0]} channels")
        self.max_frames = int(config.max_clip_seconds * SAMPLE_RATE)
        # 32-bit samples at most (PCM_32, FLOAT) plus room for a header and metadata chunks
        self.max_bytes = self.max_frames * 4 + 65536

    def fields(self) -> dict[str, tuple[Any, str]]:
        fields = super().fields()
        seconds = self.input_shape[1] / SAMPLE_RATE
        fields["clips"] = (
            fields["clips"][0],
            f"base64 16 kHz mono WAVs (or data: URLs) of at most {self.config.max_clip_seconds:g} s, padded with "
            f"silence or cut to the model's {seconds:g} s",
        )
        return fields

    def json_examples(self) -> dict[str, dict[str, Any]]:
        t = np.arange(SAMPLE_RATE // 20) / SAMPLE_RATE  # 50 ms of a 440 Hz tone, padded with silence
        wav = base64.b64encode(encode_wav(0.5 * np.sin(2 * np.pi * 440 * t))).decode("ascii")
        return {**super().json_examples(), "audio": {"summary": "one base64 WAV clip", "value": {"clips": [wav]}}}

    def decode(self, data: bytes, name: str) -> np.ndarray:
        if len(data) > self.max_bytes:
            raise RequestError(
                413, f"{name} is {len(data):,} bytes; at most {self.max_bytes:,} ({self.config.max_clip_seconds:g} s)"
            )
        frames = _frames(data)
        if frames is not None and frames > self.max_frames:
            raise RequestError(
                413,
                f"{name} is {frames / SAMPLE_RATE:.2f} s long; at most {self.config.max_clip_seconds:g} s per clip",
            )
        # format, 16 kHz, mono and emptiness checked; its first second (a model reading more gets silence after it)
        samples = decode_wav(data, name=name)
        out = np.zeros(self.input_shape[1], dtype=np.float32)
        n = min(len(out), len(samples))
        out[:n] = samples[:n].astype(np.float32) / np.float32(32768)
        return out[None]


def _frames(data: bytes) -> int | None:
    """The frames a WAV header claims, or None when the bytes do not open (decode_wav then says why)."""
    sf = require_soundfile()
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            return int(f.frames)
    except (sf.SoundFileError, RuntimeError):
        return None


class TextDecoder(Decoder):
    modality = "text"
    rank = 1
    shape_parts = "L (token ids)"
    levels = ("inputs", "token ids")
    encoded_field = "texts"
    encoded_what = "text"
    media_types: ClassVar[tuple[str, ...]] = ("text/plain",)

    def __init__(
        self,
        input_shape: Sequence[int],
        max_batch: int,
        config: ServeConfig,
        vocabulary: Vocabulary | None = None,
        vocab_size: int | None = None,
    ) -> None:
        if vocabulary is not None and vocabulary.max_length != int(input_shape[0]):
            raise InvalidArgument(
                f"the vocabulary cuts texts to {vocabulary.max_length} tokens but the model reads {input_shape[0]}"
            )
        self.vocabulary = vocabulary
        if vocabulary is None:
            self.media_types = ()  # without it texts cannot be encoded: only token ids are taken
        # the model's embedding size bounds the ids a client may send (the vocabulary's size when it is unknown)
        self.vocab_size = vocab_size or (len(vocabulary) if vocabulary is not None else None)
        if self.vocab_size is None:
            raise InvalidArgument("a text model is served with its vocabulary, or its vocab_size at least")
        if vocabulary is not None and len(vocabulary) != self.vocab_size:
            raise InvalidArgument(
                f"the vocabulary holds {len(vocabulary)} tokens but the model embeds vocab_size={self.vocab_size} ids"
            )
        super().__init__(input_shape, max_batch, config)

    def fields(self) -> dict[str, tuple[Any, str]]:
        top = self.vocab_size - 1
        token = Annotated[int, Field(ge=0, le=top)]
        row = Annotated[list[token], Field(min_length=1, max_length=self.input_shape[0], fail_fast=True)]
        fields: dict[str, tuple[Any, str]] = {
            "inputs": (row, f"N rows of 1 to {self.input_shape[0]} token ids in 0..{top}, padded with <pad> (0)")
        }
        if self.vocabulary is not None:
            text = Annotated[str, Field(min_length=1, pattern=r"\S")]
            fields["texts"] = (text, f"N texts, encoded with the model's vocabulary (cut to {self.input_shape[0]})")
        return fields

    def json_examples(self) -> dict[str, dict[str, Any]]:
        examples = {"token ids": {"summary": "one row of token ids", "value": {"inputs": [[PAD_ID + 2, PAD_ID + 3]]}}}
        if self.vocabulary is not None:
            examples["text"] = {"summary": "texts", "value": {"texts": ["an example sentence", "and another one"]}}
        return examples

    def from_lists(self, values: list[Any]) -> torch.Tensor:
        out = np.full((len(values), self.input_shape[0]), PAD_ID, dtype=np.int64)
        for i, row in enumerate(values):
            out[i, : len(row)] = row
        return torch.from_numpy(out)

    def from_encoded(self, name: str, values: list[str]) -> torch.Tensor:
        return self._encode([(f"{name}[{i}]", text) for i, text in enumerate(values)])

    def from_media(self, items: Sequence[tuple[str, bytes]]) -> torch.Tensor:
        texts = []
        for name, data in items:
            try:
                texts.append((name, data.decode("utf-8")))
            except UnicodeDecodeError as exc:
                raise RequestError(422, f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        return self._encode(texts)

    def _encode(self, texts: Sequence[tuple[str, str]]) -> torch.Tensor:
        if self.vocabulary is None:
            raise RequestError(422, "this server has no vocabulary for its model: send token ids as 'inputs'")
        for name, text in texts:
            if not text.strip():
                raise RequestError(422, f"{name} is empty: send some text")
            if len(text) > self.config.max_text_chars:
                raise RequestError(
                    413, f"{name} has {len(text):,} characters; at most {self.config.max_text_chars:,} per text"
                )
        return self.vocabulary.encode([text for _, text in texts])


DECODERS: dict[str, type[Decoder]] = {"image": ImageDecoder, "text": TextDecoder, "audio": AudioDecoder}


def decoder_for(
    modality: str,
    input_shape: Sequence[int],
    max_batch: int,
    config: ServeConfig,
    *,
    vocabulary: Vocabulary | None = None,
    vocab_size: int | None = None,
) -> Decoder:
    """The request decoder of a model reading ``modality`` inputs of ``input_shape``."""
    if modality not in DECODERS:
        raise InvalidArgument(f"cannot serve a model of modality {modality!r}; servable: {', '.join(DECODERS)}")
    if modality == "text":
        return TextDecoder(input_shape, max_batch, config, vocabulary, vocab_size)
    if vocabulary is not None:
        raise InvalidArgument(f"a vocabulary was given for a {modality} model; only text models take one")
    return DECODERS[modality](input_shape, max_batch, config)
