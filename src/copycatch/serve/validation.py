"""Validation of prediction requests at the API boundary.

A request body is ``{"inputs": [...]}`` (N×C×H×W nested lists of numbers in [0, 1]) or
``{"images": ["<base64 PNG>", ...]}``. Everything is checked before the model sees it — JSON syntax, the
body's type, exactly one of the two fields, batch size, each input's shape, number types (``true`` and
``"0.5"`` are not numbers), NaN/Infinity, value range, PNG validity and size — and every failure becomes a
:class:`RequestError` with a status (400 malformed JSON, 413 too large, 422 invalid content) and a one-line
message naming the bad element, never echoing the input back.

Types and shape are checked by pydantic-core straight from the JSON bytes, stopping at the first error so
a hostile body cannot make us build a million error objects; the [0, 1] range is checked with NumPy.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from ..data.png import PngError, decode_png

_DATA_URL = "data:image/png;base64,"
PNG_FORMAT = "base64-png"
"""The OpenAPI ``format`` of an ``images`` item: a base64 PNG of the model's input size (or a ``data:`` URL of one)."""


class RequestError(Exception):
    """A request we refuse: HTTP ``status``, a one-line ``detail`` and optional response headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def _exactly_one_schema(schema: dict[str, Any]) -> None:
    """Rewrite the generated schema of an object whose fields are all optional and nullable into a ``oneOf`` with one
    branch per field, that field required and not null, nothing else allowed: the rule the validator enforces, so a
    schema-valid request is never refused for its form."""
    branches = []
    for name, prop in schema.pop("properties").items():
        (value,) = [option for option in prop["anyOf"] if option.get("type") != "null"]
        branches.append(
            {
                "type": "object",
                "title": prop.get("title", name),
                "properties": {name: value},
                "required": [name],
                "additionalProperties": False,
            }
        )
    # At the top level additionalProperties would see no declared properties and forbid every field.
    schema.pop("additionalProperties", None)
    schema["oneOf"] = branches


def build_request_model(input_shape: Sequence[int], max_batch: int) -> type[BaseModel]:
    """The pydantic model (and so the OpenAPI schema) of ``POST /v1/predict`` for one model's input shape."""
    c, h, w = (int(v) for v in input_shape)
    # The [0, 1] range is advertised in the schema but checked with NumPy (50 ms → 0.2 ms on a full batch).
    pixel = Annotated[float, WithJsonSchema({"type": "number", "minimum": 0.0, "maximum": 1.0})]
    row = Annotated[list[pixel], Field(min_length=w, max_length=w, fail_fast=True)]
    plane = Annotated[list[row], Field(min_length=h, max_length=h, fail_fast=True)]
    image = Annotated[list[plane], Field(min_length=c, max_length=c, fail_fast=True)]
    # A custom format rather than contentEncoding/contentMediaType: JSON Schema cannot say "a decodable w×h PNG",
    # and a named format lets schema-driven clients (the fuzz tests) plug in a generator of real PNGs.
    png = Annotated[str, Field(min_length=1, json_schema_extra={"format": PNG_FORMAT})]

    class PredictRequest(BaseModel):
        """Exactly one of ``inputs`` or ``images``."""

        model_config = ConfigDict(
            strict=True, allow_inf_nan=False, extra="forbid", json_schema_extra=_exactly_one_schema
        )
        inputs: (
            Annotated[
                list[image],
                Field(
                    min_length=1,
                    max_length=max_batch,
                    fail_fast=True,
                    description=f"N×{_shape_text((c, h, w))} values in [0, 1], 1 <= N <= {max_batch}",
                ),
            ]
            | None
        ) = None
        images: (
            Annotated[
                list[png],
                Field(
                    min_length=1,
                    max_length=max_batch,
                    fail_fast=True,
                    description=f"base64-encoded {w}×{h} PNGs ({'greyscale' if c == 1 else 'RGB'}), "
                    f"1 <= N <= {max_batch}",
                ),
            ]
            | None
        ) = None

        @model_validator(mode="after")
        def _exactly_one(self) -> PredictRequest:
            # An explicit null counts as sent: the schema has no null branch, so the server must not accept one.
            if len(self.model_fields_set) != 1 or (self.inputs is None and self.images is None):
                raise ValueError("send exactly one of 'inputs' (nested lists) or 'images' (base64 PNGs)")
            return self

    PredictRequest.__name__ = PredictRequest.__qualname__ = "PredictRequest"
    return PredictRequest


def _where(loc: Sequence[Any]) -> str:
    if not loc:
        return "request body"
    head, *rest = loc
    return str(head) + "".join(f"[{i}]" for i in rest)


_LEVELS = ("inputs", "channels", "rows", "values per row")


def _explain(error: dict[str, Any], input_shape: Sequence[int], max_batch: int) -> RequestError:
    kind, loc, ctx = error.get("type", ""), tuple(error.get("loc", ())), error.get("ctx") or {}
    where = _where(loc)
    shape = f"each input must be C×H×W = {_shape_text(input_shape)}"
    if kind == "json_invalid":
        return RequestError(400, f"request body is not valid JSON ({ctx.get('error', 'syntax error')})")
    if kind == "model_type":
        return RequestError(422, "request body must be a JSON object with 'inputs' or 'images'")
    if kind == "extra_forbidden":
        return RequestError(
            422, f"unknown field {loc[-1]!r}; send 'inputs' (N×C×H×W nested lists) or 'images' (base64 PNGs)"
        )
    if kind in ("too_long", "too_short") and len(loc) == 1:
        n = ctx.get("actual_length")
        if kind == "too_long":
            return RequestError(
                413,
                f"batch of {n if n is not None else 'more than ' + str(max_batch)} inputs is "
                f"too large: at most {max_batch} per request",
            )
        return RequestError(422, f"'{loc[0]}' is empty: send at least one input")
    if kind in ("too_long", "too_short") and loc and loc[0] == "inputs":
        depth = len(loc) - 1  # 1: an input (its channels), 2: a channel (its rows), 3: a row (its values)
        want = input_shape[depth - 1] if 1 <= depth <= 3 else "?"
        got = ctx.get("actual_length", "a different number of")
        return RequestError(422, f"{where} has {got} {_LEVELS[depth]}, expected {want}: {shape}")
    if kind == "list_type":
        return RequestError(
            422, f"{where} must be a list: {shape}" if loc and loc[0] == "inputs" else f"'{where}' must be a list"
        )
    if kind in ("float_type", "float_parsing"):
        got = type(error.get("input")).__name__.replace("NoneType", "null")
        return RequestError(422, f"{where} must be a number in [0, 1], got {got}")
    if kind == "finite_number":
        return RequestError(422, f"{where} is NaN or Infinity; values must be finite numbers in [0, 1]")
    if kind == "string_type":
        return RequestError(422, f"{where} must be a base64 PNG string")
    if kind == "value_error":
        return RequestError(422, str(ctx.get("error", error.get("msg", "invalid request"))))
    return RequestError(422, f"{where}: {error.get('msg', 'invalid value')}")


def parse_predict(body: bytes, model: type[BaseModel], input_shape: Sequence[int], max_batch: int) -> torch.Tensor:
    """The request's inputs as a float32 N×C×H×W tensor in [0, 1], or a :class:`RequestError`."""
    if not body.strip():
        raise RequestError(400, 'request body is empty; send JSON {"inputs": [...]} or {"images": [...]}')
    try:
        request = model.model_validate_json(body)
    except ValidationError as exc:
        raise _explain(exc.errors(include_url=False)[0], input_shape, max_batch) from None
    if request.inputs is not None:
        values = np.asarray(request.inputs, dtype=np.float64)
        bad = ~((values >= 0.0) & (values <= 1.0))
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise RequestError(
                422, f"{_where(('inputs', *index))} = {values[index]:g} is outside [0, 1]; scale inputs to [0, 1]"
            )
        return torch.from_numpy(values.astype(np.float32))
    images = []
    for i, text in enumerate(request.images):
        if text.startswith(_DATA_URL):
            text = text[len(_DATA_URL) :]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(422, f"images[{i}] is not valid base64") from None
        try:
            images.append(decode_png(data, expect=input_shape))
        except PngError as exc:
            raise RequestError(422, f"images[{i}]: {exc}") from None
    return torch.from_numpy(np.stack(images))
