"""Text and audio models at the prediction API (in-process, FastAPI's TestClient): texts encoded with the model's
vocabulary or token ids, base64 WAV clips or sample lists, raw and multipart bodies; each under the same budgets and
ledger as images, and every bad clip or text a clear 4xx."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from conftest import tiny_audio_splits, tiny_text_splits

import copycatch as cc
from copycatch.core.errors import InvalidArgument
from copycatch.data.vocabulary import Vocabulary, VocabularySettings
from copycatch.serve import ServeConfig, create_app
from copycatch.serve.ledger import read_ledger

sf = pytest.importorskip("soundfile")
TestClient = pytest.importorskip("fastapi.testclient").TestClient

from copycatch.data.audio import encode_wav  # noqa: E402 - needs soundfile

SAMPLES = 4000  # a quarter of a second at 16 kHz


@pytest.fixture(scope="module")
def text_splits():
    return tiny_text_splits(60, 3, (1, 7))


@pytest.fixture(scope="module")
def text_model(text_splits):
    return cc.create_for("lstm", text_splits, seed=0, embed_dim=8, hidden=8).eval()


@pytest.fixture(scope="module")
def audio_model():
    splits = tiny_audio_splits(12, 3, SAMPLES, 0.1, (0.2, 0.6), ("low", "mid", "high"))
    return cc.create_for("m5", splits, seed=0, width=8).eval()  # batch norm: the served model is in eval mode


def probs(model, x):
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def answered(response):
    assert response.status_code == 200, response.text
    return torch.tensor(response.json()["probabilities"])


def client(model, **kwargs):
    options = {"batch_wait_ms": 0, **kwargs.pop("options", {})}
    return TestClient(create_app(model, ServeConfig.from_dict(options), **kwargs))


# ---------------------------------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------------------------------


def test_texts_are_encoded_with_the_vocabulary_and_counted(text_model, text_splits, tmp_path):
    vocabulary = text_splits.vocabulary
    texts = ["the goal of the match", "Stock market PROFIT!", "rain and wind"]
    want = probs(text_model, vocabulary.encode(texts))
    ledger = tmp_path / "ledger.jsonl"
    options = {"budget": "6", "ledger": str(ledger)}
    with client(text_model, vocabulary=vocabulary, options=options) as api:
        info = api.get("/v1/info").json()
        assert info["modality"] == "text" and info["input_shape"] == [12]
        assert info["input_formats"] == ["inputs", "texts", "text/plain", "multipart/form-data"]
        r = api.post("/v1/predict", json={"texts": texts})
        assert torch.allclose(answered(r), want, atol=1e-6)
        assert r.json()["classes"] == ["sport", "business", "weather"] and r.headers["X-Budget-Remaining"] == "3"
        raw = api.post("/v1/predict", content=texts[0].encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
        assert torch.allclose(answered(raw), want[:1], atol=1e-6)
        form = api.post("/v1/predict", files=[("files", ("a.txt", t.encode(), "text/plain")) for t in texts[1:]])
        assert torch.allclose(answered(form), want[1:], atol=1e-6)
        r = api.post("/v1/predict", json={"texts": ["one more"]})
        assert r.status_code == 429 and "budget" in r.json()["detail"]
    entries = read_ledger(ledger).entries
    assert [(e["status"], e.get("n")) for e in entries] == [(200, 3), (200, 1), (200, 2), (429, None)]


def test_token_ids_are_padded_and_bounded_by_the_model(text_model, text_splits):
    vocabulary = text_splits.vocabulary
    ids = vocabulary.encode(["storm rain snow", "doctor"])
    rows = [[int(i) for i in row if i] for row in ids]  # without the padding
    with client(text_model) as api:  # no vocabulary: token ids only
        assert api.get("/v1/info").json()["input_formats"] == ["inputs"]
        assert torch.allclose(
            answered(api.post("/v1/predict", json={"inputs": rows})), probs(text_model, ids), atol=1e-6
        )
        top = text_model.arch_kwargs["vocab_size"]
        for body, needle in [
            ({"inputs": [[1, top]]}, f"inputs[0][1] = {top} is not a token id of this model (0..{top - 1})"),
            ({"inputs": [[1, -1]]}, "is not a token id"),
            ({"inputs": [[1.5]]}, "inputs[0][0] must be a token id (an integer), got float"),
            ({"inputs": [[True]]}, "got bool"),
            ({"inputs": [[1] * 13]}, "inputs[0] has 13 token ids, expected 1 to 12"),
            ({"inputs": [[]]}, "inputs[0] has 0 token ids"),
            ({"texts": ["a text"]}, "unknown field 'texts'"),
        ]:
            r = api.post("/v1/predict", json=body)
            assert r.status_code == 422 and needle in r.json()["detail"], (body, r.text)
        r = api.post("/v1/predict", content=b"a text", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and "application/json" in r.json()["detail"]


@pytest.mark.parametrize(
    "request_kwargs,status,needle",
    [
        ({"json": {"texts": [""]}}, 422, "texts[0] is empty"),
        ({"json": {"texts": ["fine", "  \n "]}}, 422, "texts[1] is empty"),
        ({"json": {"texts": [7]}}, 422, "texts[0] must be a string"),
        ({"content": b" ", "headers": {"Content-Type": "text/plain"}}, 422, "request body is empty"),
        ({"content": b"\xff\xfe", "headers": {"Content-Type": "text/plain"}}, 422, "request body is not UTF-8 text"),
        ({"json": {"texts": ["word " * 30]}}, 413, "at most 100 per text"),
        ({"json": {"images": ["x"]}}, 422, "unknown field 'images'"),
    ],
    ids=["empty", "blank", "number", "empty-body", "not-utf8", "too-long", "images"],
)
def test_bad_texts_are_a_clear_4xx(text_model, text_splits, request_kwargs, status, needle):
    with client(text_model, vocabulary=text_splits.vocabulary, options={"max_text_chars": 100}) as api:
        r = api.post("/v1/predict", **request_kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_the_vocabulary_file_and_its_length_are_checked(text_model, text_splits, tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(text_splits.vocabulary.to_json())
    with client(text_model, vocabulary=str(path)) as api:
        assert api.post("/v1/predict", json={"texts": ["goal"]}).status_code == 200
    shorter = Vocabulary.build(["a b c"], VocabularySettings(max_length=5, min_freq=1))
    with pytest.raises(InvalidArgument, match="cuts texts to 5 tokens but the model reads 12"):
        create_app(text_model, vocabulary=shorter)
    smaller = Vocabulary(text_splits.vocabulary.tokens[:-1], text_splits.vocabulary.settings)
    with pytest.raises(InvalidArgument, match=r"holds \d+ tokens but the model embeds vocab_size="):
        create_app(text_model, vocabulary=smaller)


# ---------------------------------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------------------------------


def tone(seconds: float, hz: float = 900.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return 0.4 * np.sin(2 * np.pi * hz * t)


def as_model_input(clip: np.ndarray) -> torch.Tensor:
    """What the server makes of a clip: 16-bit samples, padded or cut to the model's length."""
    samples = np.clip(np.round(clip * 32768), -32768, 32767).astype(np.int16)[:SAMPLES]
    out = np.zeros(SAMPLES, np.float32)
    out[: len(samples)] = samples / np.float32(32768)
    return torch.from_numpy(out).reshape(1, 1, SAMPLES)


def test_wav_clips_and_sample_lists_are_answered(audio_model, tmp_path):
    short, long = tone(0.1), tone(0.5, 400)  # padded with silence; cut to the model's quarter second
    want = probs(audio_model, torch.cat([as_model_input(short), as_model_input(long)]))
    ledger = tmp_path / "ledger.jsonl"
    with client(audio_model, options={"ledger": str(ledger)}) as api:
        info = api.get("/v1/info").json()
        assert info["modality"] == "audio" and info["input_shape"] == [1, SAMPLES]
        assert info["input_formats"][:2] == ["inputs", "clips"] and "audio/wav" in info["input_formats"]
        clips = [base64.b64encode(encode_wav(c)).decode() for c in (short, long)]
        r = api.post("/v1/predict", json={"clips": clips})
        assert torch.allclose(answered(r), want, atol=1e-5) and r.json()["classes"] == ["low", "mid", "high"]
        raw = api.post("/v1/predict", content=encode_wav(long), headers={"Content-Type": "audio/wav"})
        assert torch.allclose(answered(raw), want[1:], atol=1e-5)
        form = api.post("/v1/predict", files=[("files", ("a.wav", encode_wav(short), "audio/x-wav"))])
        assert torch.allclose(answered(form), want[:1], atol=1e-5)
        lists = api.post("/v1/predict", json={"inputs": as_model_input(long).tolist()})
        assert torch.allclose(answered(lists), want[1:], atol=1e-5)
        r = api.post("/v1/predict", json={"inputs": [[[1.5] * SAMPLES]]})
        assert r.status_code == 422 and "inputs[0][0][0] = 1.5 is outside [-1, 1]" in r.json()["detail"]
    entries = read_ledger(ledger).entries
    assert [(e["status"], e.get("n")) for e in entries] == [(200, 2), (200, 1), (200, 1), (200, 1), (422, None)]


def _wav(samples: np.ndarray, rate: int = 16000, channels: int = 1, fmt: str = "WAV", subtype: str = "PCM_16"):
    import io

    buffer = io.BytesIO()
    data = np.repeat(samples[:, None], channels, axis=1) if channels > 1 else samples
    sf.write(buffer, data, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data,status,needle",
    [
        (_wav(tone(0.1), rate=8000), 422, "sampled at 8000 Hz"),
        (_wav(tone(0.1), channels=2), 422, "2 channels"),
        (_wav(tone(0.1), fmt="FLAC"), 422, "not WAV"),
        (b"RIFF....WAVEfmt nonsense", 422, "not a readable WAV file"),
        (b"just text", 422, "not a readable WAV file"),
        (_wav(np.zeros(0)), 422, "holds no samples"),
        (_wav(tone(2.5)), 413, "2.50 s long; at most 2 s per clip"),
        (bytes(300_000), 413, "bytes; at most"),
    ],
    ids=["8khz", "stereo", "flac", "bad-header", "text", "empty", "too-long", "too-many-bytes"],
)
def test_bad_clips_are_a_clear_4xx(audio_model, data, status, needle):
    with client(audio_model, options={"max_clip_seconds": 2}) as api:
        for r in (
            api.post("/v1/predict", content=data, headers={"Content-Type": "audio/wav"}),
            api.post("/v1/predict", json={"clips": [base64.b64encode(data).decode()]}),
        ):
            assert r.status_code == status, r.text
            detail = r.json()["detail"]
            assert needle in detail and "\n" not in detail and "Traceback" not in detail


def test_modality_comes_from_the_model_or_the_shape_and_examples_are_valid(audio_model, text_model, text_splits):
    def identity(x):
        return torch.softmax(x.reshape(len(x), -1)[:, :3].float(), dim=1)

    app = create_app(identity, num_classes=3, input_shape=(1, SAMPLES))  # a callable: the rank says audio
    assert app.state.service.modality == "audio"
    with pytest.raises(InvalidArgument, match="cannot tell the modality"):
        create_app(identity, num_classes=3, input_shape=(1, 2, 3, 4))
    with pytest.raises(InvalidArgument, match="only text models take one"):
        create_app(audio_model, vocabulary=text_splits.vocabulary)
    for model, kwargs in ((audio_model, {}), (text_model, {"vocabulary": text_splits.vocabulary})):
        with client(model, **kwargs) as api:
            schema = api.get("/openapi.json").json()
            content = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
            for name, example in content["application/json"]["examples"].items():
                r = api.post("/v1/predict", content=json.dumps(example["value"]).encode())
                assert r.status_code == 200, (name, r.text)


def test_a_text_model_file_brings_its_vocabulary(text_splits, tmp_path):
    model = cc.create_for("lstm", text_splits, seed=1, embed_dim=8, hidden=8).eval()  # saving sets model.vocabulary
    path = cc.save_model(model, tmp_path / "text.safetensors", vocabulary=text_splits.vocabulary)
    with client(str(path)) as api:
        r = api.post("/v1/predict", json={"texts": ["storm and rain"]})
        want = probs(model, text_splits.vocabulary.encode(["storm and rain"]))
        assert torch.allclose(answered(r), want, atol=1e-6)
