"""Images at the prediction API (in-process, FastAPI's TestClient): PNG, JPEG and WebP as base64 JSON, as a raw body
and as multipart files, each through the same checks, budgets and ledger; decompression bombs and corrupt bytes;
class names in the answer; the offline /docs; and the Pillow codec (copycatch.data.image_codec) on its own."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.core.errors import InvalidArgument
from copycatch.data.image_codec import (
    ImageError,
    ImageTooLarge,
    decode_image,
    encode_png,
    read_pixels,
)
from copycatch.serve import ServeConfig, create_app
from copycatch.serve.ledger import read_ledger, row_digests

Image = pytest.importorskip("PIL.Image")
TestClient = pytest.importorskip("fastapi.testclient").TestClient

SHAPE = (3, 8, 8)
CLASSES = ("cat", "dog", "fox", "owl")
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def model():
    return cc.create_model("mlp", SHAPE, 4, hidden=16, seed=0, class_names=CLASSES)


def client_for(model, **options):
    return TestClient(create_app(model, ServeConfig.from_dict({"batch_wait_ms": 0, **options})))


@pytest.fixture(scope="module")
def api(model):
    with client_for(model) as client:
        yield client


def image_bytes(fmt: str, size=(8, 8), mode="RGB", **save) -> bytes:
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def expected(model, files) -> torch.Tensor:
    """The model's own probabilities on what the codec makes of the files."""
    x = torch.from_numpy(np.stack([decode_image(f, expect=SHAPE) for f in files]))
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def answered(response) -> torch.Tensor:
    assert response.status_code == 200, response.text
    return torch.tensor(response.json()["probabilities"])


# ---------------------------------------------------------------------------------------------------------------------
# three formats, three ways in
# ---------------------------------------------------------------------------------------------------------------------

FORMATS = [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]


@pytest.mark.parametrize("fmt,media", FORMATS)
def test_every_format_is_answered_as_base64_raw_and_multipart_alike(api, model, fmt, media):
    files = [image_bytes(fmt) for _ in range(3)]
    want = expected(model, files)
    as_json = api.post("/v1/predict", json={"images": [base64.b64encode(f).decode() for f in files]})
    data_url = api.post("/v1/predict", json={"images": [f"data:{media};base64," + base64.b64encode(files[0]).decode()]})
    raw = api.post("/v1/predict", content=files[0], headers={"Content-Type": media})
    form = api.post("/v1/predict", files=[("files", (f"{i}.img", f, media)) for i, f in enumerate(files)])
    assert torch.allclose(answered(as_json), want, atol=1e-6)
    assert torch.allclose(answered(form), want, atol=1e-6)
    assert torch.allclose(answered(raw), want[:1], atol=1e-6)
    assert torch.allclose(answered(data_url), want[:1], atol=1e-6)


def test_the_format_is_read_from_the_bytes_and_any_size_or_colour_is_made_the_models(api, model):
    jpeg = image_bytes("JPEG")
    # a JPEG declared as a PNG is still a JPEG: the Content-Type only says "one image"
    assert torch.allclose(answered(api.post("/v1/predict", content=jpeg, headers={"Content-Type": "image/png"})),
                          expected(model, [jpeg]), atol=1e-6)  # fmt: skip
    other = [image_bytes("PNG", size=(20, 13)), image_bytes("PNG", mode="L"), image_bytes("PNG", mode="RGBA")]
    r = api.post("/v1/predict", json={"images": [base64.b64encode(f).decode() for f in other]})
    assert torch.allclose(answered(r), expected(model, other), atol=1e-6)


def test_answers_carry_the_class_names(api, model):
    r = api.post("/v1/predict", content=image_bytes("PNG"), headers={"Content-Type": "image/png"})
    assert r.json()["classes"] == list(CLASSES)
    with client_for(model, output="label") as client:
        body = client.post("/v1/predict", json={"images": [base64.b64encode(image_bytes("WEBP")).decode()]}).json()
    assert body["classes"] == list(CLASSES) and len(body["labels"]) == 1
    assert api.get("/v1/info").json()["input_formats"] == [
        "inputs",
        "images",
        "image/png",
        "image/jpeg",
        "image/webp",
        "multipart/form-data",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims ``width``×``height`` pixels (its CRC made right)."""
    data = bytearray(image_bytes("PNG", size=(1, 1), mode="L"))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_decompression_bombs_are_refused_413_from_the_header(api, model):
    bomb = _png_claiming(100_000, 100_000)
    assert len(bomb) < 100
    for response in (
        api.post("/v1/predict", json={"images": [base64.b64encode(bomb).decode()]}),
        api.post("/v1/predict", content=bomb, headers={"Content-Type": "image/png"}),
        api.post("/v1/predict", files=[("files", ("a.png", bomb, "image/png"))]),
    ):
        assert response.status_code == 413, response.text
        assert "decompression bomb" in response.json()["detail"]
    with client_for(model, max_image_pixels=100) as client:  # a real 11×10 image over a small limit
        r = client.post(
            "/v1/predict", content=image_bytes("JPEG", size=(11, 10)), headers={"Content-Type": "image/jpeg"}
        )
        assert r.status_code == 413 and "11×10 is more than 100 pixels" in r.json()["detail"]
        assert client.post(
            "/v1/predict", content=image_bytes("JPEG"), headers={"Content-Type": "image/jpeg"}
        ).is_success


@pytest.mark.parametrize(
    "data,needle",
    [
        (image_bytes("PNG")[:-30], "request body: not a readable PNG image"),
        (image_bytes("JPEG")[:40], "request body: not a readable PNG, JPEG or WebP image"),
        (b"GIF89a" + bytes(40), "not a readable PNG, JPEG or WebP image"),
        (image_bytes("BMP"), "not a readable PNG, JPEG or WebP image"),  # files may be BMP; clients may not
        (b"", "not a readable"),
    ],
    ids=["truncated-png", "truncated-jpeg", "gif", "bmp", "empty"],
)
def test_corrupt_or_unsupported_bytes_are_422(api, data, needle):
    r = api.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert needle in detail and "\n" not in detail and "Traceback" not in detail and "BytesIO" not in detail


@pytest.mark.parametrize(
    "kwargs,status,needle",
    [
        ({"files": [("photo", ("a.png", b"x", "image/png"))]}, 422, "unknown form field 'photo'"),
        ({"data": {"files": "not a file"}, "files": [("files", ("a.png", b"x", "image/png"))]}, 422, "files[0]"),
        ({"files": [("files", (f"{i}.png", b"x", "image/png")) for i in range(5)]}, 413, "at most 4"),
        ({"content": b"--x--\r\n", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}, 422, "no files"),
        ({"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}}, 400, "malformed multipart"),
        ({"content": b"abc", "headers": {"Content-Type": "image/gif"}}, 415, "image/png, image/jpeg"),
        ({"json": {"images": ["data:image/gif;base64,R0lG"]}}, 422, "data: URL of image/gif"),
    ],
    ids=["unknown-field", "text-field", "too-many", "no-files", "no-boundary", "gif-type", "gif-data-url"],
)
def test_bad_forms_and_types_get_a_clear_4xx(model, kwargs, status, needle):
    with client_for(model, max_batch=4) as client:
        r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_raw_and_multipart_bodies_share_the_budget_ledger_and_size_limit(model, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    files = [image_bytes("PNG") for _ in range(2)]
    with client_for(model, budget="3", ledger=str(ledger), max_body_bytes=4096) as client:
        big = client.post("/v1/predict", content=bytes(5000), headers={"Content-Type": "image/png"})
        assert big.status_code == 413 and "at most 4096 bytes" in big.json()["detail"]
        assert client.post("/v1/predict", files=[("files", ("a.png", f, "image/png")) for f in files]).is_success
        r = client.post("/v1/predict", content=files[0], headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.headers["X-Budget-Remaining"] == "0"
        r = client.post("/v1/predict", content=files[1], headers={"Content-Type": "image/webp"})
        assert r.status_code == 429 and "budget" in r.json()["detail"]
    entries = read_ledger(ledger).entries
    assert [(e["status"], e.get("n")) for e in entries] == [(413, None), (200, 2), (200, 1), (429, None)]
    pixels = torch.from_numpy(np.stack([decode_image(f, expect=SHAPE) for f in files]))
    assert entries[1]["inputs"] == row_digests(pixels)


# ---------------------------------------------------------------------------------------------------------------------
# the documentation pages work offline, and their examples are valid requests
# ---------------------------------------------------------------------------------------------------------------------


def test_docs_load_only_local_assets(api):
    for page in ("/docs", "/redoc"):
        html = api.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text) + re.findall(r"url: ?'([^']+)'", html.text)
        assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        assert "http://" not in html.text and "https://" not in html.text
        for url in urls:
            assert api.get(url).status_code == 200, url
    assert (
        api.get("/docs/assets/swagger-ui-bundle.js")
        .headers["content-type"]
        .startswith(("application/javascript", "text/javascript"))
    )


def test_openapi_examples_are_answered(api):
    body = api.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "image/png", "image/jpeg", "image/webp", "multipart/form-data"}
    examples = body["application/json"]["examples"]
    assert set(examples) == {"lists", "image"}
    for example in examples.values():
        assert api.post("/v1/predict", json=example["value"]).status_code == 200


# ---------------------------------------------------------------------------------------------------------------------
# the codec
# ---------------------------------------------------------------------------------------------------------------------


def test_codec_round_trips_and_converts_modes():
    x = torch.rand(3, 5, 4)
    assert np.array_equal(read_pixels(encode_png(x), expect=(3, 5, 4)), (x * 255).round().to(torch.uint8).numpy())
    grey = torch.rand(1, 5, 4)
    got = decode_image(encode_png(grey), expect=(3, 5, 4))
    assert got.dtype == np.float32 and np.allclose(got, np.repeat((grey * 255).round().numpy() / 255, 3, axis=0))
    wide = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000  # 16-bit greyscale keeps its high byte
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    assert np.array_equal(read_pixels(buffer.getvalue(), expect=(1, 3, 4))[0], (wide >> 8).astype(np.uint8))
    palette = Image.fromarray(RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8)).convert("P", colors=8)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    want = np.asarray(palette.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(read_pixels(buffer.getvalue(), expect=(3, 6, 6)), want)


def test_codec_refusals_are_one_named_error():
    with pytest.raises(ImageTooLarge, match=r"photo\.png: 5000×5000 is more than 16 pixels"):
        read_pixels(_png_claiming(5000, 5000), expect=(1, 8, 8), name="photo.png", max_pixels=16)
    with pytest.raises(ImageTooLarge, match="more than 89,478,485 pixels"):  # over Pillow's own guard, reworded
        read_pixels(_png_claiming(20_000, 20_000), expect=(1, 8, 8), max_pixels=10**12)
    with pytest.raises(ImageError, match="not a readable PNG image"):
        read_pixels(image_bytes("JPEG"), expect=(1, 8, 8), formats=("PNG",))
    with pytest.raises(InvalidArgument, match="C = 1 or 3"):
        encode_png(np.zeros((2, 4, 4)))
    with pytest.raises(InvalidArgument, match=r"\[0, 1\]"):
        encode_png(np.full((1, 4, 4), 2.0))
