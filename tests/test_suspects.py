"""Suspects behind one Oracle: HTTP APIs (a small server written here, not copycatch's), ONNX files, scikit-learn
callables; each verified from the CLI; misbehaving suspects give one clear error and a transcript --resume continues."""

import base64
import json
import threading
import time
import warnings
from http.server import ThreadingHTTPServer

import numpy as np
import pytest
import torch
from conftest import JsonHandler, verify_cli

import copycatch as cc
from copycatch.cli.options import EXIT_NOT_STOLEN
from copycatch.core.errors import InvalidArgument, SuspectError
from copycatch.data.image_codec import decode_image, encode_png
from copycatch.oracles.http import HttpOracle, _retry_after, endpoints
from copycatch.oracles.suspects import describe_suspect, open_suspect
from copycatch.verification.transcript import Transcript

# ---------------------------------------------------------------------------------------------------------------------
# a tiny prediction API with switchable misbehaviour
# ---------------------------------------------------------------------------------------------------------------------


class _Handler(JsonHandler):
    def do_GET(self):
        api = self.server.api
        api["paths"].append(("GET", self.path))
        if self.path == api["info_path"] and api["info"] is not None:
            self._send(200, api["info"])
        else:
            self._send(404, {"detail": "not found"})

    def do_POST(self):
        api = self.server.api
        with api["lock"]:
            api["inflight"] += 1
        try:
            self._predict(api)
        finally:
            with api["lock"]:
                api["inflight"] -= 1

    def _predict(self, api):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        api["paths"].append(("POST", self.path))
        if api["predict_path"] is not None and self.path != api["predict_path"]:
            return self._send(404, {"detail": "Not Found"})
        if api["key"] is not None and self.headers.get("X-API-Key") != api["key"]:
            return self._send(401, {"detail": "missing or wrong API key"})
        mode = api["script"].pop(0) if api["script"] else api["mode"]
        if mode == "refuse":
            return self._send(403, {"detail": "query budget of this key is spent"})
        if mode.startswith("429"):
            return self._send(429, {"detail": "slow down"}, [("Retry-After", mode.partition(":")[2] or "1")])
        if mode == "slow":
            time.sleep(1.0)
        if mode == "error":
            return self._send(*api["error"])
        if mode == "notjson":
            return self._send(200, b"<html>oops</html>")
        x = self._inputs(body, api)
        api["asked"] += len(x)
        probs = api["model"](x)
        if mode == "nan":
            probs[0, 0] = float("nan")
        if mode == "short":
            probs = probs[:-1]
        self._send(200, api["respond"](probs))

    def _inputs(self, body, api):
        if "images" in body:
            imgs = [decode_image(base64.b64decode(s), expect=api["shape"]) for s in body["images"]]
            return torch.tensor(np.stack(imgs))
        x = torch.tensor(body[api["input_field"]], dtype=torch.float32)
        if api["layout"] == "flat":
            x = x.reshape(len(x), *api["shape"])
        return x


@pytest.fixture()
def api_server():
    """Yields (url, api): api is the mutable behaviour of the server (model, mode, scripted modes, counters)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.api = {
        "info": None,
        "info_path": "/v1/info",
        "predict_path": None,  # None: any path predicts
        "paths": [],
        "error": (400, {"detail": "bad request"}),
        "key": None,
        "mode": "ok",
        "script": [],
        "asked": 0,
        "input_field": "inputs",
        "inflight": 0,
        "lock": threading.Lock(),
        "layout": "nchw",
        "shape": (1, 8, 8),
        "model": None,
        "respond": lambda p: {"probabilities": p.tolist()},
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.api
    server.shutdown()
    server.server_close()


def _serve(api, model):
    oracle = cc.ModelOracle(model)
    api["model"] = lambda x: oracle.query(x).clone()
    api["info"] = {
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "class_names": list(model.class_names),
        "output": "probs",
    }


# ---------------------------------------------------------------------------------------------------------------------
# shared models and keys
# ---------------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------------------


def test_http_oracle_speaks_the_copycatch_protocol(api_server, trained, splits):
    url, api = api_server
    _serve(api, trained)
    api["key"] = "s3cret"
    oracle = HttpOracle(url, api_key="s3cret", batch_size=7)
    assert (
        oracle.num_classes == 4 and oracle.input_shape == (1, 8, 8) and oracle.class_names == list(trained.class_names)
    )
    x = splits.test.x[:20]
    assert torch.allclose(oracle.query(x), cc.ModelOracle(trained).query(x), atol=1e-6)
    assert oracle.requests == 1 + 3 and oracle.queries == 20  # info + ceil(20 / 7) predictions
    with pytest.raises(SuspectError, match=r"HTTP 401: missing or wrong API key.*check the API key"):
        HttpOracle(url, api_key="wrong").query(x[:1])


def test_http_png_encoding_reaches_the_server_as_the_quantised_image(api_server, trained, splits):
    url, api = api_server
    _serve(api, trained)
    seen = []
    model = api["model"]
    api["model"] = lambda x: (seen.append(x), model(x))[1]
    x = splits.test.x[:5]
    HttpOracle(url, encoding="png").query(x)
    assert torch.equal(seen[0], (x * 255).round() / 255)


def test_png_codec_round_trips_and_reads_other_encoders_filters(tmp_path):
    rng = np.random.default_rng(0)
    for shape in [(1, 7, 5), (3, 6, 4), (3, 9, 4)]:
        img = rng.integers(0, 256, size=shape).astype(np.float32) / 255
        assert np.array_equal(decode_image(encode_png(img), expect=shape), img)
    pil = pytest.importorskip("PIL.Image")
    smooth = (np.add.outer(np.arange(16), np.arange(16)) * 7 % 256).astype(np.uint8)
    pil.fromarray(smooth).save(tmp_path / "p.png", optimize=True)  # zlib picks Sub/Up/Average/Paeth rows
    assert np.array_equal(
        decode_image((tmp_path / "p.png").read_bytes(), expect=(1, 16, 16))[0], smooth / np.float32(255)
    )


def test_http_fields_layouts_and_label_answers_are_configurable(api_server, trained, splits):
    """Another API: flat rows under "data", answers as class names nested in "result.labels", no info endpoint."""
    url, api = api_server
    _serve(api, trained)
    api["info"] = None
    api["input_field"], api["layout"] = "data", "flat"
    names = list(trained.class_names)
    api["respond"] = lambda p: {"result": {"labels": [names[i] for i in p.argmax(1).tolist()]}}
    with pytest.raises(InvalidArgument, match=r"/api is used as the prediction endpoint itself.*--num-classes"):
        HttpOracle(url + "/api", predict_path="")
    oracle = HttpOracle(
        url + "/predict",
        predict_path="",
        info_path="",
        num_classes=4,
        input_field="data",
        input_layout="flat",
        output_field="result.labels",
        class_names=names,
        extra_body={"model": "v2"},
    )
    x = splits.test.x[:9]
    out = oracle.query(x)
    assert oracle.output_kind == "labels" and torch.equal(out.argmax(1), cc.ModelOracle(trained).query(x).argmax(1))
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_http_429_waits_what_retry_after_says(api_server, trained, splits):
    url, api = api_server
    _serve(api, trained)
    waits = []
    api["script"] = ["429:2", "429:3"]
    oracle = HttpOracle(url, sleep=waits.append)
    assert oracle.query(splits.test.x[:3]).shape == (3, 4)
    assert waits == [2.0, 3.0] and oracle.retried == 2
    api["script"] = ["429:3600"]
    with pytest.raises(SuspectError, match=r"rate-limited.*3600 s.*max_retry_after"):
        HttpOracle(url, sleep=waits.append).query(splits.test.x[:3])


def test_retry_after_accepts_seconds_and_http_dates():
    assert _retry_after("7") == 7.0 and _retry_after(None) is None and _retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= _retry_after(future) <= 31


@pytest.mark.parametrize(
    "mode, message",
    [
        ("nan", "NaN"),
        ("short", r"shape \(2, 4\), expected \(3, 4\)"),
        ("refuse", "refused the query: HTTP 403: query budget of this key is spent"),
        ("slow", "timeout.*gave up after 2 attempts"),
        ("notjson", "not JSON"),
    ],
)
def test_http_misbehaviour_is_one_clear_error(api_server, trained, splits, mode, message):
    url, api = api_server
    _serve(api, trained)
    api["mode"] = mode
    oracle = HttpOracle(url, timeout=0.3, retries=1, backoff=0.0)
    with pytest.raises(SuspectError, match=message):
        oracle.query(splits.test.x[:3])


def test_transient_server_errors_are_retried_with_backoff(api_server, trained, splits):
    url, api = api_server
    _serve(api, trained)
    api["script"] = ["slow"]
    waits = []
    oracle = HttpOracle(url, timeout=0.3, retries=3, backoff=0.25, sleep=waits.append)
    assert oracle.query(splits.test.x[:2]).shape == (2, 4) and waits == [0.25]


def test_an_api_for_another_model_is_refused_before_any_query(api_server, trained):
    url, api = api_server
    _serve(api, trained)
    with pytest.raises(InvalidArgument, match="says it has 4 classes, but 10 were expected"):
        HttpOracle(url, num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(InvalidArgument, match=r"takes inputs shaped \(1, 8, 8\)"):
        HttpOracle(url, num_classes=4, input_shape=(3, 8, 8))
    assert api["asked"] == 0


def test_bad_http_options_are_named():
    with pytest.raises(InvalidArgument, match="encoding"):
        HttpOracle("http://127.0.0.1:9", num_classes=2, encoding="jpeg")
    with pytest.raises(InvalidArgument, match="not an http"):
        HttpOracle("ftp://x", num_classes=2)


@pytest.mark.parametrize(
    "url, predict_path, info_path, expected",
    [
        ("http://h:8000", None, None, ("http://h:8000/v1/predict", "http://h:8000/v1/info")),
        ("http://h:8000/", None, None, ("http://h:8000/v1/predict", "http://h:8000/v1/info")),
        ("http://h:8000/predict", None, None, ("http://h:8000/predict", None)),
        # the CLI passes the default paths explicitly: they must not be appended to an endpoint URL
        ("http://h:8000/predict", "/v1/predict", "/v1/info", ("http://h:8000/predict", None)),
        ("http://h/api/v1/predict", None, None, ("http://h/api/v1/predict", "http://h/api/v1/info")),
        ("http://h/api/v1/predict?m=2", None, None, ("http://h/api/v1/predict?m=2", "http://h/api/v1/info")),
        ("http://h/api", "/score", None, ("http://h/api/score", "http://h/api/v1/info")),
        ("http://h/api", "", "", ("http://h/api", None)),
        ("http://h/m/a/predict", None, "/info", ("http://h/m/a/predict", "http://h/info")),
        ("http://h/m/a/predict", None, "info", ("http://h/m/a/predict", "http://h/m/a/info")),
        ("http://h/m/a/predict", None, "https://o/meta", ("http://h/m/a/predict", "https://o/meta")),
        ("http://h:8000", None, "/meta", ("http://h:8000/v1/predict", "http://h:8000/meta")),
        ("http://h:8000", None, "", ("http://h:8000/v1/predict", None)),
    ],
)
def test_suspect_urls_are_read_as_users_write_them(url, predict_path, info_path, expected):
    assert endpoints(url, predict_path, info_path) == expected


def test_a_url_with_a_path_is_the_prediction_endpoint(api_server, trained, splits):
    url, api = api_server
    _serve(api, trained)
    x = splits.test.x[:3]
    expected = cc.ModelOracle(trained).query(x)
    api["predict_path"] = "/predict"
    oracle = HttpOracle(url + "/predict", num_classes=4, input_shape=(1, 8, 8))
    assert torch.allclose(oracle.query(x), expected, atol=1e-6)
    assert api["paths"] == [("POST", "/predict")]  # no guessed info endpoint was asked
    # without the number of classes: one clear error naming the URL and what to pass, and nothing asked
    api["paths"].clear()
    with pytest.raises(InvalidArgument) as err:
        HttpOracle(url + "/predict")
    message = str(err.value)
    assert f"{url}/predict is used as the prediction endpoint" in message and "--num-classes" in message
    assert f"base URL ({url})" in message and api["paths"] == []
    # a bare base URL (with or without its slash) speaks copycatch's protocol
    api["predict_path"] = "/v1/predict"
    for base in (url, url + "/"):
        api["paths"].clear()
        oracle = HttpOracle(base)
        assert oracle.num_classes == 4 and torch.allclose(oracle.query(x), expected, atol=1e-6)
        assert api["paths"] == [("GET", "/v1/info"), ("POST", "/v1/predict")]
    # the full /v1/predict URL of copycatch's API, here under a prefix, still finds its info beside it
    api["predict_path"], api["info_path"] = "/api/v1/predict", "/api/v1/info"
    api["paths"].clear()
    oracle = HttpOracle(url + "/api/v1/predict")
    assert oracle.num_classes == 4 and oracle.query(x).shape == (3, 4)
    assert api["paths"] == [("GET", "/api/v1/info"), ("POST", "/api/v1/predict")]
    # the explicit options still work: an API under a prefix
    api["predict_path"], api["info_path"] = "/api/score", "/api/meta"
    oracle = HttpOracle(url + "/api", predict_path="/score", info_path="/meta")
    assert oracle.num_classes == 4 and oracle.query(x).shape == (3, 4)
    # a wrong path is a 404 that says so
    api["predict_path"] = "/predict"
    with pytest.raises(SuspectError, match=rf"{url}/v1/predict refused the query: HTTP 404: Not Found \(no such"):
        HttpOracle(url, num_classes=4).query(x)


def test_cli_verifies_a_prediction_endpoint_url_as_written(
    capsys, api_server, margin_key_file, margin_embedding, tmp_path
):
    """The README's form, ``--suspect http://host:8000/predict``: posted to /predict, not /predict/v1/predict."""
    url, api = api_server
    _serve(api, margin_embedding.victim)
    api["predict_path"] = "/predict"
    code, out, err = verify_cli(
        capsys, "--key", margin_key_file, "--suspect", url + "/predict", "--report", tmp_path / "ep"
    )
    assert code == 0, err
    assert "STOLEN" in out and "NOT STOLEN" not in out
    assert {p for _, p in api["paths"]} == {"/predict"}
    record = json.loads((tmp_path / "ep" / "evidence.json").read_text())
    assert record["suspect"]["identity"] == url + "/predict"


@pytest.mark.parametrize(
    "status, body, excerpt",
    [
        (400, {"detail": "inputs must be 1x8x8, got 1x7x8"}, "HTTP 400: inputs must be 1x8x8, got 1x7x8"),
        (400, {"error": "unknown model 'v2'", "code": 17}, "HTTP 400: unknown model 'v2'"),
        (422, {"error": {"message": "bad\nshape", "type": "invalid"}}, "HTTP 422: bad shape"),
        (400, {"message": "no"}, "HTTP 400: no"),
        (422, {"detail": [{"loc": ["body", "inputs"], "msg": "field required"}]}, 'HTTP 422: [{"loc":["body",'),
        (400, b"<html>\n<body>\n  Bad\tRequest\r\n</body></html>", "HTTP 400: <html> <body> Bad Request </body>"),
        (404, b"", "HTTP 404 (no such endpoint"),
        (503, {"detail": "model is loading"}, "HTTP 503: model is loading; gave up after 2 attempts"),
    ],
)
def test_http_errors_carry_the_status_the_url_and_the_servers_words(api_server, trained, splits, status, body, excerpt):
    url, api = api_server
    _serve(api, trained)
    api["mode"], api["error"] = "error", (status, body)
    with pytest.raises(SuspectError) as err:
        HttpOracle(url, retries=1, backoff=0.0).query(splits.test.x[:2])
    message = str(err.value)
    assert message.startswith(f"{url}/v1/predict") and excerpt in message and "\n" not in message, message


def test_long_error_bodies_are_cut_to_one_short_line(api_server, trained, splits):
    url, api = api_server
    _serve(api, trained)
    api["mode"], api["error"] = "error", (400, ("Traceback (most recent call last):\n" + "  x" * 500).encode())
    with pytest.raises(SuspectError) as err:
        HttpOracle(url).query(splits.test.x[:2])
    message = str(err.value)
    assert "HTTP 400: Traceback (most recent call last): x x" in message and "\n" not in message
    assert message.endswith("…") and len(message) < len(url) + 260


# ---------------------------------------------------------------------------------------------------------------------
# ONNX and Python callables
# ---------------------------------------------------------------------------------------------------------------------


def test_onnx_export_answers_like_the_model_and_describes_itself(trained, splits, tmp_path):
    from copycatch.oracles.onnx import OnnxOracle, export_onnx

    path = export_onnx(trained, tmp_path / "m.onnx")
    oracle = open_suspect(str(path))
    assert isinstance(oracle, OnnxOracle) and oracle.num_classes == 4 and oracle.input_shape == (1, 8, 8)
    x = splits.test.x[:50]
    assert torch.allclose(oracle.query(x), cc.ModelOracle(trained).query(x), atol=1e-5)
    fp = describe_suspect(str(path), oracle)
    assert fp["kind"] == "onnx" and len(fp["sha256"]) == 64


def test_onnx_logit_and_label_graphs(trained, splits, tmp_path):
    """A foreign ONNX file without our metadata: logits are softmaxed, integer outputs are labels."""
    from copycatch.oracles.onnx import OnnxOracle

    class Labels(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).argmax(1)

    x = splits.test.x[:16]
    for name, module in [("logits", trained), ("labels", Labels(trained))]:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                x[:1],
                str(tmp_path / f"{name}.onnx"),
                input_names=["x"],
                dynamic_axes={"x": {0: "n"}},
                dynamo=False,
            )
        oracle = OnnxOracle(tmp_path / f"{name}.onnx", num_classes=4)
        out = oracle.query(x)
        assert torch.equal(out.argmax(1), trained(x).argmax(1))
        assert oracle.output_kind == ("labels" if name == "labels" else "probs")
        assert torch.allclose(out.sum(1), torch.ones(len(x)), atol=1e-5)


SKLEARN_SUSPECT = """
import copycatch as cc
from sklearn.linear_model import LogisticRegression

_data = cc.load_dataset("synthetic", n=2400, num_classes=4, size=8, noise=0.25, seed=0)
_splits = cc.make_splits(_data, seed=0, fractions=cc.SplitFractions(owner_train=0.45, owner_holdout=0.1,
                                                                    attacker_pool=0.45))
clf = LogisticRegression(max_iter=300).fit(_splits.attacker_pool.x.reshape(len(_splits.attacker_pool.x), -1).numpy(),
                                           _splits.attacker_pool.y.numpy())
"""


@pytest.fixture(scope="module")
def sklearn_file(tmp_path_factory):
    pytest.importorskip("sklearn")
    path = tmp_path_factory.mktemp("sk") / "sk_suspect.py"
    path.write_text(SKLEARN_SUSPECT)
    return path


def test_sklearn_predict_proba_and_predict_work_unchanged(sklearn_file, splits):
    proba = open_suspect(f"{sklearn_file}:clf.predict_proba", num_classes=4, input_shape=(1, 8, 8))
    labels = open_suspect(f"{sklearn_file}:clf.predict", num_classes=4, input_shape=(1, 8, 8))
    x = splits.test.x[:30]
    p, y = proba.query(x), labels.query(x)
    assert proba.input_format == "flat" and p.shape == (30, 4) and torch.allclose(p.sum(1), torch.ones(30), atol=1e-5)
    assert labels.output_kind == "labels" and torch.equal(y.argmax(1), p.argmax(1))
    fp = describe_suspect(f"{sklearn_file}:clf.predict_proba", proba)
    assert fp["kind"] == "python callable" and len(fp["source_sha256"]) == 64


# ---------------------------------------------------------------------------------------------------------------------
# acceptance: each kind of suspect verified from the CLI
# ---------------------------------------------------------------------------------------------------------------------


def test_cli_verifies_a_scikit_learn_classifier(capsys, margin_key_file, sklearn_file, tmp_path):
    code, out, err = verify_cli(
        capsys, "--key", margin_key_file, "--suspect", f"{sklearn_file}:clf.predict_proba", "--report", tmp_path / "sk"
    )
    assert code == EXIT_NOT_STOLEN, err
    assert "NOT STOLEN" in out
    record = json.loads((tmp_path / "sk" / "evidence.json").read_text())
    assert record["suspect"]["kind"] == "python callable" and record["verdict"] == "not stolen"
    code, out, err = verify_cli(capsys, "--key", margin_key_file, "--suspect", f"{sklearn_file}:clf.predict", "--fixed")
    assert code == EXIT_NOT_STOLEN and "NOT STOLEN" in out and "queries used:    30" in out


def test_cli_verifies_an_onnx_export(capsys, margin_key_file, margin_embedding, trained, tmp_path):
    from copycatch.oracles.onnx import export_onnx

    victim = export_onnx(margin_embedding.victim, tmp_path / "victim.onnx")
    code, out, _err = verify_cli(capsys, "--key", margin_key_file, "--suspect", victim, "--json")
    record = json.loads(out)
    assert code == 0 and record["verdict"] == "stolen" and record["suspect"]["kind"] == "onnx"
    innocent = export_onnx(trained, tmp_path / "innocent.onnx")
    code, out, _ = verify_cli(capsys, "--key", margin_key_file, "--suspect", innocent)
    assert code == EXIT_NOT_STOLEN and "NOT STOLEN" in out


def test_cli_verifies_a_model_behind_an_http_server(
    capsys, api_server, margin_key_file, margin_embedding, tmp_path, monkeypatch
):
    url, api = api_server
    _serve(api, margin_embedding.victim)
    api["key"] = "k3y"
    monkeypatch.setenv("COPYCATCH_API_KEY", "k3y")
    code, out, err = verify_cli(capsys, "--key", margin_key_file, "--suspect", url, "--report", tmp_path / "http")
    assert code == 0, err
    assert "STOLEN" in out and "NOT STOLEN" not in out
    record = json.loads((tmp_path / "http" / "evidence.json").read_text())
    assert record["suspect"]["kind"] == "http" and record["suspect"]["info"]["num_classes"] == 4
    assert record["queries_used"] == api["asked"] < 30  # sequential: stopped before the end of the key
    assert "k3y" not in (tmp_path / "http" / "evidence.json").read_text()


@pytest.mark.parametrize(
    "mode, phrase", [("nan", "NaN"), ("short", "answered shape"), ("refuse", "HTTP 403"), ("slow", "timeout")]
)
def test_a_failing_suspect_leaves_a_transcript_that_resume_continues(
    capsys, api_server, margin_key_file, margin_embedding, tmp_path, mode, phrase
):
    url, api = api_server
    _serve(api, margin_embedding.victim)
    api["script"] = ["ok"]  # the first request is answered, then the suspect misbehaves
    api["mode"] = mode
    args = [
        "--key",
        margin_key_file,
        "--suspect",
        url,
        "--fixed",
        "--request-batch",
        "10",
        "--report",
        tmp_path / "r",
        "--timeout",
        "0.3",
        "--retries",
        "1",
        "--backoff",
        "0",
    ]
    code, _out, err = verify_cli(capsys, *args)
    *retries, last = err.strip().splitlines()
    assert code == 2 and last.startswith("copycatch: error: ") and phrase in last and "--resume" in last, err
    assert all("; retry " in line for line in retries), err  # before the error, only the retries and their reasons
    partial = Transcript.load(tmp_path / "r" / "transcript.jsonl")
    assert partial.answered == 10 and partial.lines[-1]["kind"] == "error"
    deadline = time.monotonic() + 30
    while api["inflight"] and time.monotonic() < deadline:  # requests the client gave up on may still finish
        time.sleep(0.05)
    api["mode"], api["asked"] = "ok", 0
    code, _out, err = verify_cli(capsys, *args, "--resume")
    assert code == 0, err
    record = json.loads((tmp_path / "r" / "evidence.json").read_text())
    assert api["asked"] == 20 and record["queries_used"] == 30  # only the unanswered 20 were asked again
    assert record["transcript"]["replayed_this_session"] == 10 and record["verdict"] == "stolen"
    assert (
        record["transcript"]["chain"][-1]
        == record["transcript"]["head"]
        == Transcript.load(tmp_path / "r" / "transcript.jsonl").head
    )


def test_a_failing_callable_saves_its_partial_transcript_where_the_error_says(
    capsys, margin_key_file, margin_embedding, tmp_path, monkeypatch
):
    module = tmp_path / "flaky_suspect.py"
    module.write_text(
        "import torch\n"
        "from copycatch.models import load_model\n"
        f"model = load_model({str(tmp_path / 'v.safetensors')!r})\n"
        "calls = [0]\n"
        "def predict(x):\n"
        "    calls[0] += 1\n"
        "    p = torch.softmax(model(torch.as_tensor(x)), 1).detach()\n"
        "    if calls[0] > 1:\n"
        "        p[0, 0] = float('nan')\n"
        "    return p.numpy()\n"
    )
    cc.save_model(margin_embedding.victim, tmp_path / "v.safetensors")
    monkeypatch.chdir(tmp_path)
    code, _out, err = verify_cli(
        capsys, "--key", margin_key_file, "--suspect", f"{module}:predict", "--request-batch", "5"
    )
    assert code == 2 and "NaN" in err and "--resume --transcript" in err, err
    saved = next(tmp_path.glob("copycatch-transcript-*.jsonl"))
    assert Transcript.load(saved).answered == 5
