"""Protocol presets for HTTP suspects: each serving stack's published format (fakes in tests/fake_stacks.py, written
from the stacks' documentation) verified end to end from the CLI, stolen and innocent; the URL given is the URL
used; the server's own error message is shown; a wrong preset is one clear error."""

import json
import re

import pytest
import torch
from conftest import verify_cli
from fake_stacks import HuggingFace, serving

import copycatch as cc
from copycatch.cli.options import EXIT_ERROR, EXIT_NOT_STOLEN, EXIT_STOLEN
from copycatch.core.errors import InvalidArgument, SuspectError
from copycatch.oracles.http import HttpOracle
from copycatch.oracles.protocols import PROTOCOLS, Answer, HttpProtocol, create_protocol, list_protocols
from copycatch.schemes import SCHEMES

PRESETS = ["tfserving", "kserve-v1", "kserve-v2", "torchserve", "mlflow", "hf"]
ROUTES = {  # what each stack's documentation names the prediction URL of a model "tiny"
    "tfserving": "/v1/models/tiny:predict",
    "kserve-v1": "/v1/models/tiny:predict",
    "kserve-v2": "/v2/models/tiny/infer",
    "torchserve": "/predictions/tiny",
    "mlflow": "/invocations",
    "hf": "/models/acme/tiny",
}


def _suspect_args(stack, url):
    """The CLI's suspect options for a fake ``stack`` at base URL ``url``: the base URL and --model-name, or (for
    stacks without a route of their own) the endpoint URL."""
    if stack == "hf":
        return ["--suspect", url + ROUTES["hf"], "--protocol", "hf"]
    return ["--suspect", url, "--protocol", stack, "--model-name", "tiny"]


# ---------------------------------------------------------------------------------------------------------------------
# every preset, end to end
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", PRESETS)
def test_each_preset_tells_a_stolen_model_from_an_innocent_one(
    capsys, margin_key_file, margin_embedding, trained, tmp_path, stack
):
    with serving(stack, margin_embedding.victim) as (url, server):
        code, out, err = verify_cli(
            capsys, "--key", margin_key_file, *_suspect_args(stack, url), "--report", tmp_path / "s"
        )
        assert code == EXIT_STOLEN, err
        assert {path for method, path, _ in server.seen if method == "POST"} == {ROUTES[stack]}
    record = json.loads((tmp_path / "s" / "evidence.json").read_text())
    assert record["suspect"]["protocol"] == stack and record["suspect"]["endpoint"].endswith(ROUTES[stack])
    with serving(stack, trained) as (url, _):
        code, out, err = verify_cli(capsys, "--key", margin_key_file, *_suspect_args(stack, url))
        assert code == EXIT_NOT_STOLEN, err
        assert "NOT STOLEN" in out


@pytest.mark.parametrize(
    "stack, returned",
    [
        ("tfserving", "probabilities"),
        ("kserve-v1", "logits (softmax applied)"),
        ("kserve-v2", "probabilities"),
        ("torchserve", "label/score of all 4 classes"),  # its top 5 covers the 4 classes: probabilities
        ("mlflow", "probabilities"),
        ("hf", "top-2 label/score"),
    ],
)
def test_each_preset_answers_the_models_own_outputs(margin_embedding, splits, stack, returned):
    x = splits.test.x[:6]
    with serving(stack, margin_embedding.victim) as (url, _):
        endpoint = url + ROUTES[stack] if stack == "hf" else url
        oracle = HttpOracle(endpoint, protocol=stack, model_name="tiny", num_classes=4, input_shape=(1, 8, 8))
        answers = oracle.query(x)
    expected = cc.ModelOracle(margin_embedding.victim).query(x)
    assert oracle.returned == returned
    if stack == "hf":  # a top-2 is no distribution: its top labels are what the suspect gives
        assert oracle.output_kind == "labels" and torch.equal(answers.argmax(1), expected.argmax(1))
    else:
        assert oracle.output_kind == "probs"
        # PNG images are quantised to 1/255 before the model sees them
        assert torch.allclose(answers, expected, atol=2e-2 if stack == "torchserve" else 1e-5)
    assert oracle.describe()["protocol"] == stack and oracle.describe()["returned"] == returned


def test_images_go_one_per_request_as_png_bytes(margin_embedding, splits):
    with serving("torchserve", margin_embedding.victim) as (url, server):
        HttpOracle(url, protocol="torchserve", model_name="tiny", num_classes=4).query(splits.test.x[:3])
    assert server.seen == [("POST", "/predictions/tiny", "image/png")] * 3


def test_mlflow_takes_a_dataframe_and_answers_records(margin_embedding, splits):
    x = splits.test.x[:5]
    with serving("mlflow", margin_embedding.victim) as (url, _):
        oracle = HttpOracle(url, protocol="mlflow", input_field="dataframe_split", num_classes=4)
        assert torch.allclose(oracle.query(x), cc.ModelOracle(margin_embedding.victim).query(x), atol=1e-5)


def test_kserve_v2_asks_the_metadata_for_the_input_name(margin_embedding, splits):
    with serving("kserve-v2", margin_embedding.victim) as (url, server):
        HttpOracle(url + "/v2/models/tiny/infer", protocol="kserve-v2", num_classes=4).query(splits.test.x[:2])
        assert server.seen[0][:2] == ("GET", "/v2/models/tiny")
        with pytest.raises(SuspectError, match=r"HTTP 400: unexpected inference input 'x' for model"):
            HttpOracle(url, protocol="kserve-v2", model_name="tiny", input_field="x", num_classes=4).query(
                splits.test.x[:2]
            )


def test_hugging_face_class_names_become_class_indices(margin_embedding, splits, monkeypatch):
    """A model with id2label answers class names; the oracle's class_names map them back (the Python API)."""
    names = list(margin_embedding.victim.class_names)
    monkeypatch.setattr(HuggingFace, "TOP_K", 4)
    monkeypatch.setattr(HuggingFace, "label", lambda self, i: names[i])
    x = splits.test.x[:4]
    with serving("hf", margin_embedding.victim) as (url, _):
        with pytest.raises(SuspectError, match=r"the label 'class-\d', which is not a known class name; pass"):
            HttpOracle(url, protocol="hf", num_classes=4).query(x)
        oracle = HttpOracle(url, protocol="hf", num_classes=4, class_names=names)
        assert torch.allclose(oracle.query(x), cc.ModelOracle(margin_embedding.victim).query(x), atol=2e-2)
    oracle = HttpOracle("http://127.0.0.1:9", protocol="hf", num_classes=4, class_names=names)
    ranked = Answer("ranked", [[("class-2", 0.7), ("class-0", 0.2)]], "(body)")
    assert oracle._rows(ranked, 1).argmax(1).tolist() == [2] and oracle.returned == "top-2 label/score"
    with pytest.raises(SuspectError, match=r"'cat', which is not a known class name \(known: class-0"):
        oracle._class_index("cat")


def test_the_keys_class_names_read_a_hugging_face_suspect_from_the_cli(
    capsys, margin_embedding, margin_key_file, tmp_path, monkeypatch
):
    """The key carries the victim's class names, so a suspect answering names needs no label map from the user; the
    evidence records what the suspect returned."""
    names = list(margin_embedding.victim.class_names)
    assert margin_embedding.key.meta["class_names"] == names and names[0] != "0"
    monkeypatch.setattr(HuggingFace, "TOP_K", 4)
    monkeypatch.setattr(HuggingFace, "label", lambda self, i: names[i])
    with serving("hf", margin_embedding.victim) as (url, _):
        code, _, err = verify_cli(
            capsys, "--key", margin_key_file, *_suspect_args("hf", url), "--report", tmp_path / "r"
        )
    assert code == EXIT_STOLEN, err
    record = json.loads((tmp_path / "r" / "evidence.json").read_text())
    assert record["evidence"][0]["details"]["suspect_returned"] == "label/score of all 4 classes"


def test_a_top_k_suspect_is_refused_by_a_scheme_that_needs_probabilities(margin_embedding, splits):
    with serving("hf", margin_embedding.victim) as (url, _):
        with pytest.raises(SuspectError, match=r"answers only the top-2 label/score of 4 classes"):
            HttpOracle(url, protocol="hf", num_classes=4, output_kind="probs").query(splits.test.x[:1])
        oracle = HttpOracle(url, protocol="hf", num_classes=4)
        oracle.query(splits.test.x[:1])
    needs_probs = next(n for n in SCHEMES.list() if SCHEMES.get(n).factory.needs == "probs")
    with pytest.raises(InvalidArgument, match="needs probabilities but the suspect answers labels only"):
        SCHEMES.create(needs_probs).check_oracle(oracle)


def test_a_top_k_suspect_is_refused_before_it_sees_a_key_input(margin_embedding):
    needs_probs = next(n for n in SCHEMES.list() if SCHEMES.get(n).factory.needs == "probs")
    with serving("hf", margin_embedding.victim) as (url, server):
        oracle = HttpOracle(url, protocol="hf", num_classes=4, input_shape=(1, 8, 8))
        with pytest.raises(InvalidArgument, match="needs probabilities but the suspect answers labels only"):
            SCHEMES.create(needs_probs).check_oracle(oracle)
        posts = [path for method, path, _ in server.seen if method == "POST"]
    assert oracle.queries == 1 and len(posts) == 1  # one blank probe, no key input
    with serving("hf", margin_embedding.victim) as (url, server):  # a scheme that reads labels asks nothing extra
        oracle = HttpOracle(url, protocol="hf", num_classes=4, input_shape=(1, 8, 8))
        SCHEMES.create("margin").check_oracle(oracle)
        assert oracle.queries == 0 and not [m for m, _, _ in server.seen if m == "POST"]


# ---------------------------------------------------------------------------------------------------------------------
# URLs, errors, wrong presets
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["", "/", "/v1/predict"])
def test_the_readme_examples_work_as_written(capsys, margin_key_file, margin_embedding, route):
    """README: `copycatch verify --suspect http://host:8000` (copycatch serve's base URL) or its full route."""
    with serving("copycatch", margin_embedding.victim) as (url, server):
        code, _, err = verify_cli(capsys, "--key", margin_key_file, "--suspect", url + route)
        assert code == EXIT_STOLEN, err
        assert {path for method, path, _ in server.seen if method == "POST"} == {"/v1/predict"}


def test_a_url_copycatch_serve_does_not_have_says_which_it_does(capsys, margin_key_file, margin_embedding):
    with serving("copycatch", margin_embedding.victim) as (url, server):
        code, _, err = verify_cli(capsys, "--key", margin_key_file, "--suspect", url + "/predict", "--retries", "0")
    assert code == EXIT_ERROR and server.seen[-1][:2] == ("POST", "/predict")  # used as given, nothing appended
    assert "HTTP 404: Not Found (no such endpoint" in err and "copycatch serve's is /v1/predict" in err


@pytest.mark.parametrize("stack", ["tfserving", "kserve-v2", "torchserve"])
def test_the_url_given_is_the_url_used(margin_embedding, splits, stack):
    with serving(stack, margin_embedding.victim, model_name="other") as (url, server):
        full = url + ROUTES[stack].replace("tiny", "other")
        HttpOracle(full, protocol=stack, model_name="ignored", num_classes=4).query(splits.test.x[:1])
        assert server.seen[-1][1] == ROUTES[stack].replace("tiny", "other")


def test_the_servers_own_error_message_is_shown(capsys, margin_key_file, margin_embedding):
    with serving("tfserving", margin_embedding.victim) as (url, _):
        code, _, err = verify_cli(
            capsys, "--key", margin_key_file, "--suspect", url, "--protocol", "tfserving", "--model-name", "tiny",
            "--input-format", "nchw",
        )  # fmt: skip
    assert code == EXIT_ERROR and "Traceback" not in err
    assert "HTTP 400: Incompatible shapes: [10, 1, 8, 8] vs [-1,8,8,1]" in err
    with serving("mlflow", margin_embedding.victim) as (url, _):
        code, _, err = verify_cli(
            capsys, "--key", margin_key_file, "--suspect", url, "--protocol", "mlflow", "--input-field", "tensor"
        )
    assert code == EXIT_ERROR and "the mlflow protocol takes inputs, instances or dataframe_split, got 'tensor'" in err


@pytest.mark.parametrize(
    "stack, route, argv, message",
    [
        # the wrong stack's route: the server's 404 and what to check
        ("tfserving", False, ["--protocol", "kserve-v2", "--model-name", "tiny"], r"HTTP 404: Malformed request"),
        ("kserve-v2", False, ["--protocol", "tfserving", "--model-name", "tiny"], r"HTTP 404.*check the URL, --protoc"),
        # the right URL, the wrong answer format
        ("torchserve", True, ["--protocol", "hf"], r"is it a Hugging Face image classification server"),
        ("hf", True, ["--protocol", "torchserve"], r"is it a TorchServe server \(--protocol torchserve\)"),
        # the wrong stack's request: the server's own words
        ("tfserving", True, ["--protocol", "hf"], r"HTTP 400: UnicodeDecodeError"),
        # a base URL without the model's name
        ("torchserve", False, ["--protocol", "torchserve"], r"route /predictions/\{model\} needs the model's name"),
        # copycatch's own protocol on another stack
        ("kserve-v1", False, [], r"HTTP 404.*check the URL"),
        ("mlflow", False, ["--protocol", "tfserving", "--model-name", "tiny", "--encoding", "png"], r"encoding='png'"),
    ],
)
def test_a_wrong_preset_is_one_clear_error(capsys, margin_key_file, margin_embedding, stack, route, argv, message):
    with serving(stack, margin_embedding.victim) as (url, _):
        suspect = url + ROUTES[stack] if route else url
        code, _, err = verify_cli(capsys, "--key", margin_key_file, "--suspect", suspect, "--retries", "0", *argv)
    assert code == EXIT_ERROR and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert re.search(message, err), err


def test_the_protocol_registry_lists_every_preset():
    assert set(list_protocols()) == {"copycatch", *PRESETS}
    for name in list_protocols():
        protocol = create_protocol(name, model_name="m")
        assert isinstance(protocol, HttpProtocol) and PROTOCOLS.get(name).summary
    with pytest.raises(Exception, match="triton"):
        create_protocol("triton")
    assert create_protocol("tfserving").input_layout == "nhwc"
    assert create_protocol("tfserving", input_layout="nchw").input_layout == "nchw"
    with pytest.raises(InvalidArgument, match="input_layout must be one of"):
        create_protocol("mlflow", input_layout="hwc")
