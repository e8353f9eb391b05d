"""The protected prediction API over real loopback HTTP: validation, keys, limits, budgets, ledger, batching,
output modes; and its parts (token bucket, budgets, API keys, batcher) on their own. Images, raw and multipart
bodies: tests/test_serve_media.py; text and audio models: tests/test_serve_modalities.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.cli.main import main
from copycatch.core.errors import CorruptFile, InvalidArgument
from copycatch.data.image_codec import encode_png
from copycatch.serve import ServeConfig, create_app, serve_in_thread
from copycatch.serve.batching import Batcher
from copycatch.serve.keys import Keyring, hash_secret, new_key
from copycatch.serve.ledger import read_ledger, row_digests
from copycatch.serve.limits import NEVER_RETRY_AFTER, Budget, QueryLimiter, Rate

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def model():
    return cc.create_model("mlp", SHAPE, 4, hidden=16, seed=0, class_names=("a", "b", "c", "d"))


@pytest.fixture(scope="module")
def inputs():
    return cc.load_dataset("synthetic", n=64, num_classes=4, size=8, seed=1).x


@contextlib.contextmanager
def served(model, *, key=None, keyring=None, **options):
    app = create_app(model, ServeConfig.from_dict(options), key=key, keyring=keyring)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        client.app = app
        yield client


def local_probs(model, x):
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def post(client, body, **kw):
    return client.post("/v1/predict", json=body, **kw)


@pytest.fixture(scope="module")
def open_api(model, tmp_path_factory):
    ledger = tmp_path_factory.mktemp("serve") / "ledger.jsonl"
    with served(model, ledger=str(ledger), batch_wait_ms=0) as client:
        client.ledger = ledger
        yield client


# ---------------------------------------------------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------------------------------------------------


def test_info_describes_the_model_and_nothing_secret(open_api):
    info = open_api.get("/v1/info").json()
    assert info["input_shape"] == list(SHAPE) and info["num_classes"] == 4
    assert info["class_names"] == ["a", "b", "c", "d"] and info["output"] == "probs"
    assert info["max_batch"] == 256 and info["auth"] is None
    assert open_api.get("/healthz").json() == {"status": "ok"}
    assert "/v1/predict" in open_api.get("/openapi.json").json()["paths"]
    assert open_api.get("/docs").status_code == 200


def test_predict_answers_the_models_probabilities(open_api, model, inputs):
    r = post(open_api, {"inputs": inputs[:10].tolist()})
    assert r.status_code == 200, r.text
    probs = torch.tensor(r.json()["probabilities"])
    assert torch.allclose(probs, local_probs(model, inputs[:10]), atol=1e-6)
    assert r.headers["X-Request-ID"]


def test_png_images_answer_like_their_pixels(open_api, model, inputs):
    images = [base64.b64encode(encode_png(x)).decode() for x in inputs[:4]]
    images[1] = "data:image/png;base64," + images[1]
    r = post(open_api, {"images": images})
    assert r.status_code == 200, r.text
    quantised = (inputs[:4] * 255).round() / 255
    assert torch.allclose(torch.tensor(r.json()["probabilities"]), local_probs(model, quantised), atol=1e-6)


def test_each_request_is_one_ledger_line_with_its_digests(open_api, inputs):
    before = len(read_ledger(open_api.ledger).entries)
    r = post(open_api, {"inputs": inputs[20:23].tolist()})
    post(open_api, {"inputs": [[[[2.0]]]]})
    entries = read_ledger(open_api.ledger).entries[before:]
    assert [e["status"] for e in entries] == [200, 422]
    ok = entries[0]
    assert ok["key"] == "anonymous" and ok["n"] == 3 and ok["output"] == "probs" and ok["client"] == "127.0.0.1"
    assert ok["inputs"] == row_digests(inputs[20:23])
    assert ok["outputs"] == row_digests(torch.tensor(r.json()["probabilities"]))
    assert ok["request"] == r.headers["X-Request-ID"]
    assert "error" in entries[1] and "outputs" not in entries[1]


@pytest.mark.parametrize(
    "output,check",
    [
        ("top-k", "top-k"),
        ("label", "label"),
        ("rounded", "rounded"),
    ],
)
def test_output_modes(model, inputs, output, check):
    with served(model, output=output, top_k=2, decimals=2) as client:
        assert client.get("/v1/info").json()["output"] == output
        body = post(client, {"inputs": inputs[:8].tolist()}).json()
    expected = local_probs(model, inputs[:8])
    if check == "label":
        assert body == {"labels": expected.argmax(1).tolist(), "classes": ["a", "b", "c", "d"]}
        return
    probs = torch.tensor(body["probabilities"])
    assert torch.equal(probs.argmax(1), expected.argmax(1))
    if check == "top-k":
        assert ((probs > 0).sum(1) == 2).all()
        top = expected.topk(2, dim=1)
        assert torch.allclose(probs.gather(1, top.indices), top.values, atol=1e-6)
    else:
        assert all(round(v, 2) == v for row in body["probabilities"] for v in row)
        assert torch.allclose(probs, expected, atol=0.005 + 1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# validation: every bad request is a 4xx with one clear line
# ---------------------------------------------------------------------------------------------------------------------

ROW = [0.5] * 8
IMAGE = [[ROW] * 8]


@pytest.mark.parametrize(
    "body,status,needle",
    [
        (b"", 400, "empty"),
        (b"{", 400, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (b'{"inputs": []}', 422, "empty"),
        (json.dumps({"inputs": [IMAGE], "images": ["x"]}).encode(), 422, "exactly one"),
        (b"{}", 422, "exactly one"),
        (b'{"pixels": []}', 422, "unknown field 'pixels'"),
        (json.dumps({"inputs": [[[ROW] * 7]]}).encode(), 422, "has 7 rows, expected 8"),
        (json.dumps({"inputs": [[[ROW[:5]] * 8]]}).encode(), 422, "has 5 values per row, expected 8"),
        (json.dumps({"inputs": [IMAGE * 3]}).encode(), 422, "has 3 channels, expected 1"),
        (json.dumps({"inputs": IMAGE}).encode(), 422, "must be a list"),
        (json.dumps({"inputs": [[[[True] * 8] * 8]]}).encode(), 422, "must be a number in [0, 1], got bool"),
        (json.dumps({"inputs": [[[["0.5"] * 8] * 8]]}).encode(), 422, "got str"),
        (json.dumps({"inputs": [[[[None] * 8] * 8]]}).encode(), 422, "got null"),
        (
            b'{"inputs": [[[[NaN' + b", 0.5" * 7 + b"]" + b", [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]" * 7 + b"]]]}",
            422,
            "NaN or Infinity",
        ),
        (
            json.dumps({"inputs": [[[ROW] * 7 + [[0.5] * 7 + [1.5]]]]}).encode(),
            422,
            "inputs[0][0][7][7] = 1.5 is outside",
        ),
        (json.dumps({"inputs": [[[ROW] * 7 + [[0.5] * 7 + [-1e39]]]]}).encode(), 422, "is outside [0, 1]"),
        (json.dumps({"images": ["not base64!"]}).encode(), 422, "not valid base64"),
        (
            json.dumps({"images": [base64.b64encode(b"GIF89a").decode()]}).encode(),
            422,
            "images[0]: not a readable PNG, JPEG or WebP image",
        ),
        (json.dumps({"images": [7]}).encode(), 422, "images[0] must be a base64 string"),
        (json.dumps({"inputs": [IMAGE] * 257}).encode(), 413, "at most 256 per request"),
    ],
)
def test_bad_requests_get_a_clear_4xx(open_api, body, status, needle):
    r = open_api.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and needle in detail and "Traceback" not in detail and "\n" not in detail


def test_wrong_content_type_and_method_and_path(open_api):
    r = open_api.post("/v1/predict", content=b"inputs=1", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    assert open_api.get("/v1/predict").status_code == 405
    r = open_api.get("/v2/predict")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


def test_a_client_that_hangs_up_mid_body_is_recorded_not_crashed(open_api):
    import socket

    host, port = open_api.base_url.host, open_api.base_url.port
    before = len(read_ledger(open_api.ledger).entries)
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 5000\r\n\r\n{"inputs": [[['
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while len(read_ledger(open_api.ledger).entries) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_ledger(open_api.ledger).entries[-1]["status"] == 499
    assert open_api.get("/healthz").json() == {"status": "ok"}


def test_body_size_limits_declared_and_streamed(model):
    with served(model, max_body_bytes=4096) as client:
        big = json.dumps({"inputs": [IMAGE] * 20}).encode()
        r = client.post("/v1/predict", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "at most 4096 bytes" in r.json()["detail"]
        # no Content-Length (chunked): the limit holds on the bytes actually received
        r = client.post(
            "/v1/predict", content=iter([big[:3000], big[3000:]]), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        assert post(client, {"inputs": [IMAGE]}).status_code == 200


# ---------------------------------------------------------------------------------------------------------------------
# access: keys, rate, budget
# ---------------------------------------------------------------------------------------------------------------------


def test_api_keys_401_and_the_ledger_never_holds_a_secret(model, inputs, tmp_path):
    keys = tmp_path / "keys.txt"
    alice = new_key(keys, "alice")
    ledger = tmp_path / "ledger.jsonl"
    with served(model, keyring=Keyring.load(keys), ledger=str(ledger)) as client:
        r = post(client, {"inputs": inputs[:2].tolist()})
        assert r.status_code == 401 and "missing X-API-Key" in r.json()["detail"]
        assert r.headers["WWW-Authenticate"] == "X-API-Key"
        r = post(client, {"inputs": inputs[:2].tolist()}, headers={"X-API-Key": "cc_guess"})
        assert r.status_code == 401 and r.json()["detail"] == "unknown API key"
        assert client.get("/v1/info").status_code == 401
        assert client.get("/healthz").status_code == 200
        good = {"X-API-Key": alice}
        assert client.get("/v1/info", headers=good).json()["auth"] == "X-API-Key"
        assert post(client, {"inputs": inputs[:2].tolist()}, headers=good).status_code == 200
        assert client.get("/v1/usage", headers=good).json()["key"] == "alice"
    text = ledger.read_text() + keys.read_text()
    assert alice not in text and "cc_guess" not in text
    assert [e["key"] for e in read_ledger(ledger).entries] == ["(unauthenticated)"] * 2 + ["alice"]


def test_rate_limit_is_429_with_retry_after(model, inputs):
    with served(model, rate="4/min") as client:
        assert client.get("/v1/info").json()["max_batch"] == 4  # never more than the bucket holds
        r = post(client, {"inputs": inputs[:5].tolist()})
        assert r.status_code == 413 and "at most 4 per request" in r.json()["detail"]
        assert post(client, {"inputs": inputs[:3].tolist()}).status_code == 200
        r = post(client, {"inputs": inputs[:3].tolist()})
        assert r.status_code == 429 and "rate limit" in r.json()["detail"]
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert post(client, {"inputs": inputs[:1].tolist()}).status_code == 200  # refused batch spent nothing
        r = post(client, {"inputs": inputs[:1].tolist()})
        assert r.status_code == 429 and r.json()["detail"].startswith("rate limit")  # refused before parsing


def test_budget_is_per_key_and_survives_a_restart_through_the_ledger(model, inputs, tmp_path):
    keys = tmp_path / "keys.txt"
    alice, bob = new_key(keys, "alice"), new_key(keys, "bob")
    ledger = str(tmp_path / "ledger.jsonl")
    with served(model, keyring=Keyring.load(keys), budget="6", ledger=ledger) as client:
        r = post(client, {"inputs": inputs[:4].tolist()}, headers={"X-API-Key": alice})
        assert r.status_code == 200 and r.headers["X-Budget-Remaining"] == "2"
        r = post(client, {"inputs": inputs[:4].tolist()}, headers={"X-API-Key": alice})
        assert (
            r.status_code == 429 and "budget exhausted" in r.json()["detail"] and "does not renew" in r.json()["detail"]
        )
        assert int(r.headers["Retry-After"]) == NEVER_RETRY_AFTER and r.headers["X-Budget-Remaining"] == "2"
        assert post(client, {"inputs": inputs[:2].tolist()}, headers={"X-API-Key": alice}).status_code == 200
        assert post(client, {"inputs": inputs[:6].tolist()}, headers={"X-API-Key": bob}).status_code == 200
    with served(model, keyring=Keyring.load(keys), budget="6", ledger=ledger) as client:
        r = post(client, {"inputs": inputs[:1].tolist()}, headers={"X-API-Key": alice})
        assert r.status_code == 429
        usage = client.get("/v1/usage", headers={"X-API-Key": bob}).json()
        assert usage == {"key": "bob", "queries": 6, "budget": "6 queries in total", "remaining": 0}


def test_token_bucket_and_budget_windows_with_a_fake_clock():
    now = [0.0]
    wall = [1000.0 * 86400 + 100.0]
    limiter = QueryLimiter(
        rate=Rate.parse("10/s"), burst=20, budget=Budget.parse("50/day"), clock=lambda: now[0], wall=lambda: wall[0]
    )
    assert limiter.admit("k", 20).allowed
    refused = limiter.admit("k", 5)
    assert not refused.allowed and refused.kind == "rate" and refused.retry_after == pytest.approx(0.5)
    assert limiter.quick_reject("k") is not None and limiter.quick_reject("other") is None
    now[0] = 0.5
    assert limiter.admit("k", 5).allowed
    now[0] = 10.0
    assert limiter.admit("k", 20).allowed
    now[0] = 20.0
    d = limiter.admit("k", 10)
    assert not d.allowed and d.kind == "budget" and d.budget_remaining == 5
    assert d.retry_after == pytest.approx(86400 - 100)
    limiter.refund("k", 5)
    assert limiter.remaining("k") == 10
    wall[0] += 86400  # next day: the budget renews
    assert limiter.remaining("k") == 50 and limiter.admit("k", 10).allowed
    assert Rate.parse("6000/min").per_second == 100 and Rate.parse("2.5").per_second == 2.5
    assert Budget.parse("20000").period is None and Budget.parse("7/days").period == 86400
    for bad in ("fast", "10/fortnight", "-3/s", "0/s"):
        with pytest.raises(InvalidArgument):
            Rate.parse(bad)
    with pytest.raises(InvalidArgument):
        Budget.parse("1.5")


def test_serve_config_rejects_bad_values():
    for bad in [
        {"output": "logits"},
        {"top_k": 0},
        {"max_batch": 0},
        {"burst": 5},
        {"rate": "many"},
        {"budget": "lots"},
        {"fsync": "sometimes"},
        {"decimals": 12},
        {"colour": "blue"},
    ]:
        with pytest.raises(InvalidArgument):
            ServeConfig.from_dict(bad)


def test_key_file_holds_hashes_and_refuses_plaintext(tmp_path):
    keys = tmp_path / "keys.txt"
    secret = new_key(keys, "alice")
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    assert keys.read_text() == f"alice sha256:{hash_secret(secret)}\n"
    ring = Keyring.load(keys)
    assert ring.identify(secret) == "alice" and ring.identify(secret + "x") is None and ring.identify("") is None
    with pytest.raises(InvalidArgument, match="already exists"):
        new_key(keys, "alice")
    leaked = tmp_path / "leaked.txt"
    leaked.write_text("# keys\nbob hunter2-plaintext\n")
    with pytest.raises(CorruptFile, match=r"leaked\.txt:2") as err:
        Keyring.load(leaked)
    assert "hunter2" not in str(err.value)
    with pytest.raises(InvalidArgument, match="no such API key file"):
        Keyring.load(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------------------------------
# robustness and batching
# ---------------------------------------------------------------------------------------------------------------------


def test_a_failing_model_is_a_500_without_internals_and_the_server_lives_on(model, inputs):
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("secret internal path /srv/model.bin")
        return np.full((len(batch), 4), 0.25, dtype=np.float32)

    oracle = cc.CallableOracle(flaky, 4, input_shape=SHAPE)
    with served(oracle) as client:
        r = post(client, {"inputs": inputs[:2].tolist()})
        assert r.status_code == 500
        detail = r.json()["detail"]
        assert "internal server error" in detail and "secret" not in detail and "Traceback" not in r.text
        assert r.headers["X-Request-ID"] in detail
        r = post(client, {"inputs": inputs[:2].tolist()})
        assert r.status_code == 200 and r.json()["probabilities"] == [[0.25] * 4] * 2


def test_concurrent_requests_share_forward_passes(model, inputs):
    forward_sizes = []

    def slow_model(batch):
        forward_sizes.append(len(batch))
        time.sleep(0.15)
        return torch.softmax(model(torch.as_tensor(batch)), dim=1).detach().numpy()

    oracle = cc.CallableOracle(slow_model, 4, input_shape=SHAPE)
    results: dict[int, list] = {}
    with served(oracle, batch_wait_ms=20) as client:

        def ask(i):
            results[i] = post(client, {"inputs": inputs[i : i + 2].tolist()}).json()["probabilities"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(forward_sizes) == 24 and len(forward_sizes) <= 4 and max(forward_sizes) > 2
    for i in range(12):  # each request got its own rows back
        assert torch.allclose(torch.tensor(results[i]), local_probs(model, inputs[i : i + 2]), atol=1e-5)


def test_batcher_splits_answers_propagates_errors_and_drains_on_close():
    async def scenario():
        calls = []

        def answer(x):
            calls.append(len(x))
            if (x < 0).any():
                raise ValueError("negative")
            return x * 2

        batcher = Batcher(answer, max_batch=8, max_wait=0.01)
        xs = [torch.full((n, 1), float(i)) for i, n in enumerate([3, 2, 4, 1])]
        outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
        assert all(torch.equal(o, x * 2) for o, x in zip(outs, xs))
        assert sum(calls) == 10 and all(c <= 8 for c in calls) and len(calls) == 2
        with pytest.raises(ValueError, match="negative"):
            await batcher.submit(torch.full((1, 1), -1.0))
        pending = [asyncio.ensure_future(batcher.submit(torch.ones(1, 1))) for _ in range(3)]
        await asyncio.sleep(0)
        await batcher.close()
        assert [float(p.result()) for p in pending] == [2.0] * 3
        with pytest.raises(Exception, match="shutting down"):
            await batcher.submit(torch.ones(1, 1))

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------------------------------
# protection and the CLI verb
# ---------------------------------------------------------------------------------------------------------------------


def test_protect_with_a_training_time_key_serves_the_models_own_answers(tmp_path, inputs):
    splits = cc.make_splits(cc.load_dataset("synthetic", n=600, num_classes=4, size=8, seed=0), seed=0)
    result = cc.embed(
        "margin", splits, arch="mlp", params={"n_triggers": 10}, config=cc.TrainConfig(epochs=1, seed=0), max_cost=None
    )
    key_path = tmp_path / "victim.cckey"
    result.key.save(key_path)
    with served(result.victim, key=str(key_path)) as client:
        info = client.get("/v1/info").json()
        assert set(info) == {
            "modality",
            "input_shape",
            "num_classes",
            "class_names",
            "output",
            "top_k",
            "decimals",
            "max_batch",
            "max_body_bytes",
            "input_formats",
            "auth",
            "server",
        }
        probs = torch.tensor(post(client, {"inputs": inputs[:6].tolist()}).json()["probabilities"])
    assert torch.allclose(probs, local_probs(result.victim, inputs[:6]), atol=1e-6)
    wrong = cc.create_model("mlp", SHAPE, 3, hidden=8, seed=0)
    with pytest.raises(InvalidArgument, match="4-class model but the served model has 3"):
        create_app(wrong, key=str(key_path))


def test_serve_verb_help_new_key_and_one_line_errors(capsys, tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: copycatch serve" in out and "/v1/predict" in out and "--budget" in out
    keys = tmp_path / "keys.txt"
    assert main(["serve", "--new-key", "carol", "--api-keys", str(keys)]) == 0
    captured = capsys.readouterr()
    secret = captured.out.strip()
    assert Keyring.load(keys).identify(secret) == "carol" and "shown only now" in captured.err
    assert main(["serve", "--new-key", "carol"]) == 2
    assert "needs --api-keys" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing.safetensors"), "--port", "0", "--no-ledger"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("copycatch: error: ") and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the extra were not installed
    assert main(["serve", "model.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'copycatch[serve]'" in err and err.count("\n") == 1


def test_help_works_without_the_serve_extra(capsys, monkeypatch):
    for name in ("fastapi", "uvicorn", "starlette"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "serve" in out and "ledger" in out


def test_serve_module_imports_without_fastapi(monkeypatch):
    import importlib

    for name in list(sys.modules):
        if name.startswith("copycatch.serve") or name in ("fastapi", "uvicorn"):
            monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)
    serve = importlib.import_module("copycatch.serve")
    assert serve.Ledger and serve.encode_png
    with pytest.raises(cc.CopycatchError, match="pip install"):
        serve.create_app  # noqa: B018 - the lazy attribute is the thing under test


def test_serve_verb_passes_the_per_input_size_limits_to_the_server(monkeypatch, capsys):
    """--max-image-pixels, --max-clip-seconds and --max-text-chars reach the ServeConfig; a bad value is one error."""
    from copycatch import api

    seen = {}

    def fake_open_server(model, config, **_):
        seen["config"] = config
        raise cc.CopycatchError("stop here")  # the server itself is tested elsewhere

    monkeypatch.setattr(api, "open_server", fake_open_server)
    argv = ["serve", "m.safetensors", "--no-ledger", "--max-image-pixels", "4096", "--max-clip-seconds", "2.5"]
    assert main([*argv, "--max-text-chars", "300"]) == 2
    config = seen["config"]
    assert (config.max_image_pixels, config.max_clip_seconds, config.max_text_chars) == (4096, 2.5, 300)
    capsys.readouterr()
    assert main(["serve", "m.safetensors", "--no-ledger", "--max-clip-seconds", "0"]) == 2
    assert "max_clip_seconds must be > 0, got 0.0" in capsys.readouterr().err
