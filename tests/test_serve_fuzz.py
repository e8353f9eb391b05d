"""Fuzzing the prediction API over loopback HTTP: schemathesis from the OpenAPI schema, and raw hypothesis
bodies. No request may produce a 5xx or a stack trace; every answer must match the declared schema; every request
the schema allows is answered (positive data acceptance) and every one it forbids is refused."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

import copycatch as cc
from copycatch.data.image_codec import encode_png
from copycatch.serve import Keyring, ServeConfig, create_app, serve_in_thread
from copycatch.serve.decoders import ImageDecoder
from copycatch.serve.keys import hash_secret

SECRET = "cc_fuzz-secret"
SHAPE = (1, 4, 4)
_model = cc.create_model("mlp", SHAPE, 3, hidden=8, seed=0)


def _png_text(pixels: list[int], data_url: bool) -> str:
    text = base64.b64encode(encode_png(np.asarray(pixels, np.float32).reshape(SHAPE) / 255)).decode()
    return "data:image/png;base64," + text if data_url else text


# The schema names the format of an `images` item (a base64 PNG of the input size), which JSON Schema cannot
# spell out; this is its generator, so schemathesis sends real PNGs where the schema asks for one.
schemathesis.openapi.format(
    ImageDecoder.encoded_format,
    st.builds(
        _png_text,
        st.lists(st.integers(0, 255), min_size=int(np.prod(SHAPE)), max_size=int(np.prod(SHAPE))),
        st.booleans(),
    ),
)


def _image_file(pixels: list[int], fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8).reshape(SHAPE[1:])).save(buffer, format=fmt)
    return buffer.getvalue()


# Raw bodies and multipart files are `format: binary`; any real PNG, JPEG or WebP image is valid (it is made the
# model's channels and size), so this generator replaces schemathesis's arbitrary bytes.
schemathesis.openapi.format(
    "binary",
    st.builds(
        _image_file,
        st.lists(st.integers(0, 255), min_size=int(np.prod(SHAPE)), max_size=int(np.prod(SHAPE))),
        st.sampled_from(["PNG", "JPEG", "WEBP"]),
    ),
)
open_app = create_app(_model, ServeConfig(max_batch=8, max_body_bytes=64 * 1024, batch_wait_ms=0))
guarded_app = create_app(
    _model,
    ServeConfig(max_batch=8, rate="1000/s", budget="100000", batch_wait_ms=0),
    keyring=Keyring({"fuzzer": hash_secret(SECRET)}),
)
# 413 (batch or body too large) is a correct rejection of schema-violating data (too many items).
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 413, 415, 422, 429]}}}
)
open_schema = schemathesis.openapi.from_dict(open_app.openapi(), config=CONFIG)
guarded_schema = schemathesis.openapi.from_dict(guarded_app.openapi(), config=CONFIG)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def open_url():
    with serve_in_thread(open_app) as url:
        yield url


@pytest.fixture(scope="module")
def open_client(open_url):
    with httpx.Client(base_url=open_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def guarded_url():
    with serve_in_thread(guarded_app) as url:
        yield url


@open_schema.parametrize()
@FUZZ
def test_schema_fuzz_open_api(case, open_url):
    case.call_and_validate(base_url=open_url, checks=CHECKS)


@guarded_schema.parametrize()
@FUZZ
def test_schema_fuzz_with_keys_rate_and_budget(case, guarded_url):
    case.call_and_validate(base_url=guarded_url, headers={"X-API-Key": SECRET}, checks=CHECKS)
    response = case.call(base_url=guarded_url, headers={"X-API-Key": "wrong"})
    assert response.status_code < 500
    if case.path.startswith("/v1"):  # a wrong key never gets an answer (only /healthz and /docs are open)
        assert response.status_code != 200


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(["inputs", "images", "x"]), inner, max_size=3)
    ),
    max_leaves=60,
)


@given(
    body=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())),
    ctype=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", None]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_raw_bodies_never_5xx(open_client, body, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    r = open_client.post("/v1/predict", content=body, headers=headers)
    assert 200 <= r.status_code < 500, r.text
    payload = r.json()
    if r.status_code != 200:
        assert isinstance(payload["detail"], str) and "Traceback" not in payload["detail"]
