"""Fake serving stacks around a tiny torch model, for tests/test_protocols.py.

Each is written from its stack's published API documentation, not from copycatch's client: the route, what a client
sends, what the stack answers and how it words an error.

* TensorFlow Serving, "RESTful API": ``POST /v1/models/NAME[/versions/V]:predict``, row format
  ``{"instances": [...]}`` with each instance shaped as the signature's input (images H×W×C) →
  ``{"predictions": [...]}``; errors ``{"error": "..."}``.
* KServe, "V1 Inference Protocol": ``POST /v1/models/NAME:predict`` ``{"instances": [...]}`` →
  ``{"predictions": [...]}`` (what the model's predict returns: here raw logits, as a custom model may).
* KServe / Triton, "Open Inference Protocol (V2)": ``GET /v2/models/NAME`` (metadata: inputs and outputs with name,
  datatype, shape); ``POST /v2/models/NAME/infer`` with ``inputs`` [{name, shape, datatype, data}], ``data``
  flattened in row-major order, → ``outputs`` [{name, shape, datatype, data}]; an input must carry the name the
  metadata gives (as Triton checks); errors ``{"error": "..."}``.
* TorchServe, "Inference API": ``POST /predictions/NAME`` with the image file as the body; the image_classifier
  handler answers the top 5 as ``{label: probability}`` (labels are class indices without an index_to_name.json);
  errors ``{"code", "type", "message"}``.
* MLflow, "Deploy MLflow models" (local REST server): ``POST /invocations``, ``Content-Type: application/json``, one
  of ``inputs``, ``instances``, ``dataframe_split``, ``dataframe_records``; → ``{"predictions": ...}`` (a DataFrame as
  records); errors ``{"error_code", "message"}``.
* Hugging Face Inference API, image classification: the image bytes as the body → ``[{"label", "score"}, ...]``, the
  top-k, best first (``LABEL_<i>`` for a model without id2label); errors ``{"error": "..."}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import numpy as np
import torch
from conftest import JsonHandler


class StackHandler(JsonHandler):
    """Shared plumbing: the body, the model's answers, and a record of what was asked (``server.seen``)."""

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def json_body(self) -> Any:
        return json.loads(self.body())

    def scores(self, x: np.ndarray, *, logits: bool = False) -> np.ndarray:
        with torch.no_grad():
            out = self.server.model(torch.from_numpy(np.asarray(x, dtype=np.float32)))
        return (out if logits else torch.softmax(out, dim=1)).numpy()

    def image(self, data: bytes) -> np.ndarray:
        """A 1×C×H×W batch from image bytes, read with Pillow as the stacks' image handlers do."""
        from PIL import Image

        img = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 255
        return (img[None, None] if img.ndim == 2 else img.transpose(2, 0, 1)[None]).copy()

    def do_POST(self):
        self.server.seen.append(("POST", self.path, self.headers.get("Content-Type")))
        try:
            self.post()
        except Exception as exc:  # a request the stack cannot read: its 400, in its words
            self._send(400, self.error(f"{type(exc).__name__}: {exc}"))

    def error(self, message: str) -> dict[str, Any]:
        return {"error": message}

    def do_GET(self):
        self.server.seen.append(("GET", self.path, None))
        self.get()

    def get(self):
        self._send(404, {"error": f"no route {self.path}"})


class TfServing(StackHandler):
    def post(self):
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/\d+)?:predict", self.path)
        if not match:
            return self._send(404, {"error": f"Malformed request: POST {self.path}"})
        if match[1] != self.server.model_name:
            return self._send(404, {"error": f"Servable not found for request: Latest({match[1]})"})
        instances = np.asarray(self.json_body()["instances"], dtype=np.float32)
        c, h, w = self.server.model.input_shape
        if instances.shape[1:] != (h, w, c):
            return self._send(400, {"error": f"Incompatible shapes: {list(instances.shape)} vs [-1,{h},{w},{c}]"})
        self._send(200, {"predictions": self.scores(instances.transpose(0, 3, 1, 2)).tolist()})


class KServeV1(StackHandler):
    def post(self):
        if self.path != f"/v1/models/{self.server.model_name}:predict":
            return self._send(404, {"error": f"Model with name {self.path} does not exist."})
        instances = np.asarray(self.json_body()["instances"], dtype=np.float32)
        self._send(200, {"predictions": self.scores(instances, logits=True).tolist()})


class OpenInference(StackHandler):
    INPUT, OUTPUT = "input__0", "output__0"

    def get(self):
        if self.path == f"/v2/models/{self.server.model_name}":
            shape = [-1, *self.server.model.input_shape]
            return self._send(
                200,
                {
                    "name": self.server.model_name,
                    "versions": ["1"],
                    "platform": "pytorch_libtorch",
                    "inputs": [{"name": self.INPUT, "datatype": "FP32", "shape": shape}],
                    "outputs": [
                        {"name": self.OUTPUT, "datatype": "FP32", "shape": [-1, self.server.model.num_classes]}
                    ],
                },
            )
        self._send(404, {"error": f"Request for unknown model: '{self.path}' is not found"})

    def post(self):
        if self.path != f"/v2/models/{self.server.model_name}/infer":
            return self._send(404, {"error": f"Request for unknown model: '{self.path}' is not found"})
        (tensor,) = self.json_body()["inputs"]
        if tensor["name"] != self.INPUT:
            return self._send(400, {"error": f"unexpected inference input '{tensor['name']}' for model"})
        if tensor["datatype"] != "FP32" or len(tensor["data"]) != int(np.prod(tensor["shape"])):
            return self._send(400, {"error": "input byte size does not match the shape and datatype"})
        probs = self.scores(np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))
        output = {"name": self.OUTPUT, "datatype": "FP32", "shape": list(probs.shape), "data": probs.ravel().tolist()}
        self._send(200, {"model_name": self.server.model_name, "outputs": [output]})


class TorchServe(StackHandler):
    def error(self, message: str) -> dict[str, Any]:
        return {"code": 400, "type": "BadRequestException", "message": message}

    def post(self):
        if self.path != f"/predictions/{self.server.model_name}":
            return self._send(
                404, {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {self.path}"}
            )
        probs = self.scores(self.image(self.body()))[0]
        top = np.argsort(-probs)[:5]
        self._send(200, {str(i): float(probs[i]) for i in top})


class Mlflow(StackHandler):
    def error(self, message: str) -> dict[str, Any]:
        return {"error_code": "BAD_REQUEST", "message": message}

    def post(self):
        if self.path != "/invocations":
            return self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": "Not found"})
        if self.headers.get("Content-Type") != "application/json":
            return self._send(415, {"error_code": "BAD_REQUEST", "message": "Content-Type must be application/json"})
        body = self.json_body()
        formats = [k for k in ("inputs", "instances", "dataframe_split", "dataframe_records") if k in body]
        if len(formats) != 1:
            message = "The input must be a JSON dictionary with exactly one of the input fields {'inputs', ...}"
            return self._send(400, {"error_code": "BAD_REQUEST", "message": message})
        if formats[0] == "dataframe_split":
            rows = np.asarray(body["dataframe_split"]["data"], dtype=np.float32)
            probs = self.scores(rows.reshape(len(rows), *self.server.model.input_shape))
            return self._send(200, {"predictions": [{str(j): float(p) for j, p in enumerate(row)} for row in probs]})
        self._send(200, {"predictions": self.scores(np.asarray(body[formats[0]])).tolist()})


class HuggingFace(StackHandler):
    TOP_K = 2

    def post(self):
        probs = self.scores(self.image(self.body()))[0]
        top = np.argsort(-probs)[: self.TOP_K]
        self._send(200, [{"label": self.label(i), "score": float(probs[i])} for i in top])

    def label(self, i: int) -> str:
        return f"LABEL_{i}"  # a model without id2label


class Copycatch(StackHandler):
    """copycatch's own routes only (``copycatch serve``): anything else is FastAPI's 404."""

    def get(self):
        if self.path != "/v1/info":
            return self._send(404, {"detail": "Not Found"})
        m = self.server.model
        info = {"input_shape": list(m.input_shape), "num_classes": m.num_classes, "output": "probs"}
        self._send(200, {**info, "class_names": list(m.class_names)})

    def post(self):
        if self.path != "/v1/predict":
            return self._send(404, {"detail": "Not Found"})
        self._send(200, {"probabilities": self.scores(np.asarray(self.json_body()["inputs"])).tolist()})


STACKS = {
    "tfserving": TfServing,
    "kserve-v1": KServeV1,
    "kserve-v2": OpenInference,
    "torchserve": TorchServe,
    "mlflow": Mlflow,
    "hf": HuggingFace,
    "copycatch": Copycatch,
}


@contextlib.contextmanager
def serving(stack: str, model: torch.nn.Module, model_name: str = "tiny") -> Iterator[tuple[str, Any]]:
    """(base URL, server) of a fake ``stack`` serving ``model`` on a free local port; ``server.seen`` lists the
    requests."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), STACKS[stack])
    server.daemon_threads = True
    server.model, server.model_name, server.seen = model.eval(), model_name, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
