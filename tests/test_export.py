"""`copycatch export`: a model file to ONNX whose onnxruntime answers match PyTorch's, with the names, batch axis and
opset asked for; bad options and files are one-line errors with exit status 2."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_ERROR
from copycatch.oracles.suspects import open_suspect

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def model_file(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "victim.safetensors"
    cc.save_model(trained, path)
    return path


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def probabilities(model, x):
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).numpy()


def test_cli_export_answers_like_pytorch_with_the_names_asked_for(model_file, trained, splits, tmp_path, capsys):
    out = tmp_path / "victim.onnx"
    argv = ["export", str(model_file), "--out", str(out), "--input-name", "pixels", "--output-name", "p", "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["ok"] is True and record["dynamic_batch"] is True and record["opset"] == 17
    assert record["check"]["max_abs_diff"] <= 1e-5 and record["check"]["batch_sizes"] == [8, 1]
    graph = onnx.load(str(out))
    assert [i.name for i in graph.graph.input] == ["pixels"] and [o.name for o in graph.graph.output] == ["p"]
    assert graph.opset_import[0].version == 17
    run = session(out)
    for n in (1, 7):  # the batch axis is dynamic
        x = splits.test.x[:n]
        got = run.run(["p"], {"pixels": x.numpy()})[0]
        assert got.shape == (n, 4)
        np.testing.assert_allclose(got, probabilities(trained, x), atol=1e-5, rtol=0)
    oracle = open_suspect(str(out))
    assert oracle.num_classes == 4 and oracle.input_shape == (1, 8, 8) and oracle.output_kind == "probs"


def test_cli_export_logits_with_a_static_batch(model_file, trained, splits, tmp_path, capsys):
    out = tmp_path / "logits.onnx"
    argv = ["export", str(model_file), "-o", str(out), "--output", "logits", "--static-batch", "--opset", "13"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "static batch of 1" in said and "'logits'" in said and "round trip" in said
    run = session(out)
    assert run.get_inputs()[0].shape == [1, 1, 8, 8] and run.get_outputs()[0].name == "logits"
    x = splits.test.x[:7]
    with torch.no_grad():
        logits = trained(x).numpy()
    np.testing.assert_allclose(run.run(None, {"input": x[:1].numpy()})[0], logits[:1], atol=1e-5, rtol=0)
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        run.run(None, {"input": x.numpy()})
    # the oracle feeds a static-batch graph one input at a time, and softmaxes the logits the metadata announces
    oracle = open_suspect(str(out))
    np.testing.assert_allclose(oracle.query(x).numpy(), probabilities(trained, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("opset", ["8", "21", "99"])
def test_an_opset_out_of_range_is_a_one_line_error(model_file, tmp_path, capsys, opset):
    out = tmp_path / "bad.onnx"
    assert main(["export", str(model_file), "--out", str(out), "--opset", opset]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("copycatch: error: ") and f"got {opset}" in err and "9 to 20" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_bad_files_and_names_are_one_line_errors(model_file, tmp_path, capsys):
    missing = tmp_path / "nowhere.safetensors"
    assert main(["export", str(missing), "--out", str(tmp_path / "m.onnx")]) == EXIT_ERROR
    assert "nowhere.safetensors: no such model file" in capsys.readouterr().err
    not_a_model = tmp_path / "junk.safetensors"
    not_a_model.write_bytes(b"not safetensors")
    assert main(["export", str(not_a_model), "--out", str(tmp_path / "m.onnx")]) == EXIT_ERROR
    assert "junk.safetensors" in capsys.readouterr().err
    same = ["--input-name", "x", "--output-name", "x"]
    assert main(["export", str(model_file), "--out", str(tmp_path / "m.onnx"), *same]) == EXIT_ERROR
    assert "must differ, both are 'x'" in capsys.readouterr().err
    assert main(["export", str(model_file), "--out", str(tmp_path), "--json"]) == EXIT_ERROR
    assert "is a directory" in capsys.readouterr().err


def test_a_file_that_answers_differently_fails_the_round_trip(model_file, tmp_path, capsys, monkeypatch):
    """The check compares the file with the model loaded from MODEL: an export of other weights must fail it."""
    import copycatch.oracles.onnx as onnx_oracle

    export = onnx_oracle.export_onnx

    def export_other_weights(model, path, **options):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.5)
        return export(other, path, **options)

    monkeypatch.setattr(onnx_oracle, "export_onnx", export_other_weights)
    out = tmp_path / "other.onnx"
    assert main(["export", str(model_file), "--out", str(out), "--json", "--output", "logits"]) == EXIT_ERROR
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["ok"] is False and record["check"]["max_abs_diff"] > 1e-5 and out.is_file()
    assert "onnxruntime and PyTorch differ by up to" in captured.err and "atol=1e-05" in captured.err
