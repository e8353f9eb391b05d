"""Validation of prediction requests at the API boundary: the JSON body's form, and every refusal's status and text.

A JSON body holds exactly one of the fields its modality's decoder (:mod:`.decoders`) declares, e.g.
``{"inputs": [...]}`` (nested lists) or ``{"images": ["<base64 PNG>", ...]}``. Everything is checked before the
model sees it — JSON syntax, the body's type, exactly one field, batch size, each input's shape, number types
(``true`` and ``"0.5"`` are not numbers), NaN/Infinity, value range, each encoded input's validity and size — and
every failure becomes a :class:`RequestError` with a status (400 malformed, 413 too large, 415 unsupported
Content-Type, 422 invalid content) and a one-line message naming the bad element, never echoing the input back.

Types and shape are checked by pydantic-core straight from the JSON bytes, stopping at the first error so
a hostile body cannot make us build a million error objects; a float range is checked with NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator


class RequestError(Exception):
    """A request we refuse: HTTP ``status``, a one-line ``detail`` and optional response headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def shape_text(shape: Sequence[int]) -> str:
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


def build_request_model(fields: dict[str, tuple[Any, str]], max_batch: int) -> type[BaseModel]:
    """The pydantic model (and so the OpenAPI schema) of a ``POST /v1/predict`` JSON body: exactly one of ``fields``
    (name -> (annotation of one item, description)), each a list of 1 to ``max_batch`` items."""
    names = list(fields)

    def exactly_one(self: BaseModel) -> BaseModel:
        # An explicit null counts as sent: the schema has no null branch, so the server must not accept one.
        if len(self.model_fields_set) != 1 or all(getattr(self, n) is None for n in names):
            raise ValueError(f"send exactly one of {_either(names)}")
        return self

    model = create_model(  # type: ignore[call-overload]
        "PredictRequest",
        __config__=ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", json_schema_extra=_exactly_one_schema),
        __doc__=f"Exactly one of {_either(names)}.",
        __validators__={"exactly_one": model_validator(mode="after")(exactly_one)},
        **{
            name: (
                Annotated[
                    list[item],
                    Field(
                        min_length=1,
                        max_length=max_batch,
                        fail_fast=True,
                        description=f"{text}, 1 <= N <= {max_batch}",
                    ),
                ]
                | None,
                None,
            )
            for name, (item, text) in fields.items()
        },
    )
    return model


def _either(names: Sequence[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]]) if len(quoted) > 1 else quoted[0]


def _where(loc: Sequence[Any]) -> str:
    if not loc:
        return "request body"
    head, *rest = loc
    return str(head) + "".join(f"[{i}]" for i in rest)


# `decoder` below is a .decoders.Decoder, not imported: that module builds on this one
def explain(error: dict[str, Any], decoder: Any) -> RequestError:
    """The refusal of pydantic's first error, in the words of ``decoder``'s modality."""
    kind, loc, ctx = error.get("type", ""), tuple(error.get("loc", ())), error.get("ctx") or {}
    where, fields = _where(loc), _either(list(decoder.fields()))
    shape = f"each input must be {shape_text(decoder.input_shape)}"
    if kind == "json_invalid":
        return RequestError(400, f"request body is not valid JSON ({ctx.get('error', 'syntax error')})")
    if kind == "model_type":
        return RequestError(422, f"request body must be a JSON object with {fields}")
    if kind == "extra_forbidden":
        return RequestError(422, f"unknown field {loc[-1]!r}; send {fields}")
    if kind in ("too_long", "too_short") and len(loc) == 1:
        n = ctx.get("actual_length")
        if kind == "too_long":
            return RequestError(
                413,
                f"batch of {n if n is not None else 'more than ' + str(decoder.max_batch)} inputs is "
                f"too large: at most {decoder.max_batch} per request",
            )
        return RequestError(422, f"'{loc[0]}' is empty: send at least one input")
    if kind in ("too_long", "too_short") and loc and loc[0] == "inputs":
        depth = len(loc) - 1  # 1: an input, 2: its first level, ...
        levels = decoder.levels
        name = levels[depth] if depth < len(levels) else "values"
        got = ctx.get("actual_length", "a different number of")
        if decoder.modality == "text":
            return RequestError(422, f"{where} has {got} {name}, expected 1 to {decoder.input_shape[0]}")
        want = decoder.input_shape[depth - 1] if 1 <= depth <= len(decoder.input_shape) else "?"
        return RequestError(422, f"{where} has {got} {name}, expected {want}: {shape}")
    if kind == "list_type":
        return RequestError(
            422, f"{where} must be a list: {shape}" if loc and loc[0] == "inputs" else f"'{where}' must be a list"
        )
    if kind in ("float_type", "float_parsing", "int_type", "int_parsing", "int_from_float"):
        got = type(error.get("input")).__name__.replace("NoneType", "null")
        lo, hi = decoder.value_range
        what = "a token id (an integer)" if kind.startswith("int") else f"a number in [{lo:g}, {hi:g}]"
        return RequestError(422, f"{where} must be {what}, got {got}")
    if kind in ("greater_than_equal", "less_than_equal"):
        return RequestError(
            422, f"{where} = {error.get('input')} is not a token id of this model (0..{decoder.vocab_size - 1})"
        )
    if kind == "finite_number":
        return RequestError(422, f"{where} is NaN or Infinity; values must be finite numbers")
    if kind == "string_type":
        string = "a string" if decoder.modality == "text" else "a base64 string"
        return RequestError(422, f"{where} must be {string} ({decoder.encoded_what})")
    if kind in ("string_too_short", "string_pattern_mismatch"):
        return RequestError(422, f"{where} is empty" + (": send some text" if decoder.modality == "text" else ""))
    if kind == "value_error":
        return RequestError(422, str(ctx.get("error", error.get("msg", "invalid request"))))
    return RequestError(422, f"{where}: {error.get('msg', 'invalid value')}")


def parse_json(body: bytes, model: type[BaseModel], decoder: Any) -> BaseModel:
    """The validated request, or a :class:`RequestError` saying what is wrong with it."""
    if not body.strip():
        raise RequestError(400, f"request body is empty; send JSON with {_either(list(decoder.fields()))}")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise explain(exc.errors(include_url=False)[0], decoder) from None
