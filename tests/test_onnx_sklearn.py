"""scikit-learn classifiers converted by skl2onnx: the ONNX oracle (and the server built on it) answers the
classifier's predict_proba, not one-hot labels, whether the probabilities come as a ZipMap or as a tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import copycatch.oracles.onnx as onnx_oracle
from copycatch.core.errors import InvalidArgument
from copycatch.oracles.onnx import OnnxOracle

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx converts the scikit-learn models under test")
sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed")
LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
# (zipmap, input dtype, string class labels): skl2onnx's default (a ZipMap of float maps), a probability tensor,
# double inputs (which skl2onnx can only convert without the ZipMap), and class names whose sorted order is not 0..9
VARIANTS = {
    "zipmap": (True, np.float32, False),
    "tensor": (False, np.float32, False),
    "double": (False, np.float64, False),
    "zipmap-strings": (True, np.float32, True),
}


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8×8 digits in [0, 1]: 400 to fit on, 40 to ask."""
    data = sklearn_datasets.load_digits()
    x = (data.images / 16.0).astype(np.float32)
    return x[:400], data.target[:400], x[400:440]


def convert(digits, folder, variant):
    zipmap, dtype, strings = VARIANTS[variant]
    x, y, queries = digits
    flat = x.reshape(len(x), -1).astype(dtype)
    clf = LogisticRegression(max_iter=500).fit(flat, NAMES[y] if strings else y)
    options = None if zipmap else {id(clf): {"zipmap": False}}
    graph = skl2onnx.to_onnx(clf, flat[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    path = folder / f"{variant}.onnx"
    path.write_bytes(graph.SerializeToString())
    expected = clf.predict_proba(queries.reshape(len(queries), -1).astype(dtype))
    return path, expected


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_oracle_answers_predict_proba(digits, tmp_path, variant):
    path, expected = convert(digits, tmp_path, variant)
    oracle = OnnxOracle(path, input_shape=(1, 8, 8))
    assert oracle.num_classes == 10 and oracle.input_format == "flat"
    assert "prob" in oracle.output.name  # not the label output, which comes first in skl2onnx's graphs
    answers = oracle.query(torch.from_numpy(digits[2]).unsqueeze(1))
    assert oracle.output_kind == "probs" and oracle.describe()["output"] == "probs"
    np.testing.assert_allclose(answers.numpy(), expected, atol=1e-5, rtol=0)
    assert (answers.max(dim=1).values < 1).any()  # probabilities, not one-hot rows


def test_a_zipmap_without_its_class_labels_is_read_in_sorted_class_order(digits, tmp_path, monkeypatch):
    """Without the ZipMap node's labels (no onnx to read them), the maps' keys are sorted, as predict_proba's
    columns are; the number of classes must then be given."""
    path, expected = convert(digits, tmp_path, "zipmap-strings")
    monkeypatch.setattr(onnx_oracle, "_zipmap_classes", lambda model_bytes, output_name: None)
    with pytest.raises(InvalidArgument, match="pass num_classes"):
        OnnxOracle(path, input_shape=(1, 8, 8))
    oracle = OnnxOracle(path, input_shape=(1, 8, 8), num_classes=10)
    answers = oracle.query(torch.from_numpy(digits[2]).unsqueeze(1))
    np.testing.assert_allclose(answers.numpy(), expected, atol=1e-5, rtol=0)
    assert oracle.zipmap_classes == sorted(NAMES.tolist())


def test_probabilities_from_a_label_output_are_refused(digits, tmp_path):
    path, _ = convert(digits, tmp_path, "zipmap")
    with pytest.raises(InvalidArgument, match="'output_label' \\(tensor\\(int64\\)\\) holds none"):
        OnnxOracle(path, input_shape=(1, 8, 8), output_name="output_label", output="probs")
    labels = OnnxOracle(path, input_shape=(1, 8, 8), output_name="output_label", num_classes=10)
    answers = labels.query(torch.from_numpy(digits[2]).unsqueeze(1))
    assert labels.output_kind == "labels" and torch.equal(answers.max(dim=1).values, torch.ones(len(answers)))


@pytest.mark.parametrize("variant", ["zipmap", "tensor"])
def test_the_server_answers_probabilities(digits, tmp_path, variant):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import httpx

    from copycatch.serve import ServeConfig, create_app, serve_in_thread

    path, expected = convert(digits, tmp_path, variant)
    # skl2onnx lists the label output first: read, it would be served as one-hot rows
    app = create_app(str(path), ServeConfig.from_dict({"batch_wait_ms": 0}), input_shape=(1, 8, 8), num_classes=10)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/v1/info").json()["num_classes"] == 10
        r = client.post("/v1/predict", json={"inputs": digits[2][:, None].tolist()})
    assert r.status_code == 200, r.text
    answers = np.array(r.json()["probabilities"])
    np.testing.assert_allclose(answers, expected, atol=1e-5, rtol=0)
    assert (answers.max(axis=1) < 1).any() and (answers > 0).sum() > len(answers)
