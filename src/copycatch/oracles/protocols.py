"""The request and answer formats of serving stacks, for :class:`~copycatch.oracles.http.HttpOracle`.

A protocol builds one request body from a batch of inputs and reads one answer into an :class:`Answer`; the oracle
keeps the transport (retries, deadlines, API keys) and turns answers into the N×C rows verification reads. Built
in, each as its stack publishes it:

* ``copycatch``: copycatch's own API (``copycatch serve``), and any JSON API its field options describe (the
  :mod:`~copycatch.oracles.http` module docstring);
* ``tfserving``: TensorFlow Serving's REST API, ``POST /v1/models/NAME:predict`` ``{"instances": [...]}`` (images
  N×H×W×C, TensorFlow's layout) → ``{"predictions": [...]}``;
* ``kserve-v1``: KServe's v1 protocol, the same format with the inputs as the model takes them (N×C×H×W);
* ``kserve-v2``: the Open Inference Protocol (KServe v2, Triton, MLServer), ``POST /v2/models/NAME/infer`` with typed
  tensors ``{"inputs": [{"name", "shape", "datatype": "FP32", "data"}]}`` (data flattened row-major) →
  ``{"outputs": [{"name", "shape", "datatype", "data"}]}``; the input's name comes from the model metadata
  (``GET /v2/models/NAME``) unless ``input_field`` gives it, the output read is ``output_field`` or the first;
* ``torchserve``: TorchServe's inference API, ``POST /predictions/NAME`` with one image (PNG bytes) per request →
  a list of probabilities, or ``{label: score}`` (the top-k of its image classifier handler);
* ``mlflow``: an MLflow pyfunc scoring server, ``POST /invocations`` ``{"inputs": [...]}`` (``input_field``
  ``"instances"``, or ``"dataframe_split"`` for flat rows as a DataFrame) → ``{"predictions": ...}``;
* ``hf``: Hugging Face image classification (Inference API, Inference Endpoints), one image (PNG bytes) per request
  → ``[{"label": ..., "score": ...}, ...]``, the top-k.

The URL given is the URL used: a URL with a path is the endpoint itself; a bare base URL (``http://host:8501``)
gets the stack's route, which for tfserving, kserve-v1, kserve-v2 and torchserve needs ``model_name``. A
``predict_path`` is appended to the URL instead. Labels in answers are class indices, class names (when the oracle
knows them), Hugging Face's default ``LABEL_<i>``, or digits.

Other stacks: subclass :class:`HttpProtocol` (``endpoints``, ``body``, ``parse``) and decorate it with
:func:`register_protocol`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from ..core.errors import InvalidArgument, SuspectError
from ..core.registry import Registry

DEFAULT_PREDICT_PATH = "/v1/predict"
DEFAULT_INFO_PATH = "/v1/info"
LAYOUTS = ("nchw", "nhwc", "flat")
JSON_TYPE = "application/json"


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer, read but not yet turned into rows.

    ``kind``: ``"scores"`` (one row of numbers per input), ``"labels"`` (one class index or name per input) or
    ``"ranked"`` (one list of (label, score) pairs per input: a top-k); ``source`` names where in the answer it was.
    """

    kind: str
    value: list[Any]
    source: str


class HttpProtocol:
    """One stack's request and answer format; subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # the stack, for messages
    route: ClassVar[str | None] = None  # the prediction path under a bare base URL; "{model}" is the model name
    layout: ClassVar[str] = "nchw"  # the input layout the stack's models take unless input_layout says otherwise
    sends_images: ClassVar[bool] = False  # one PNG image per request, as the raw body
    encodings: ClassVar[tuple[str, ...]] = ("lists",)  # the encoding options it takes (its own format is fixed)
    detects_logits: ClassVar[bool] = True  # output_kind "auto": rows that are no distribution are logits

    def __init__(
        self,
        *,
        model_name: str | None = None,
        input_field: str | None = None,
        output_field: str | None = None,
        input_layout: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        encoding: str = "lists",
        predict_path: str | None = None,
        info_path: str | None = None,
        image_encoder: Callable[[np.ndarray], bytes] | None = None,
    ):
        if input_layout is not None and input_layout not in LAYOUTS:
            raise InvalidArgument(f"input_layout must be one of {', '.join(LAYOUTS)}, got {input_layout!r}")
        if encoding not in self.encodings:
            raise InvalidArgument(
                f"encoding={encoding!r} is not one the {self.name} protocol takes ({', '.join(self.encodings)})"
            )
        self.model_name, self.input_field, self.output_field = model_name, input_field, output_field
        self.input_layout = input_layout or self.layout
        self.layout_given = input_layout is not None
        self.extra_body = dict(extra_body or {})
        self.encoding, self.predict_path, self.info_path = encoding, predict_path, info_path
        self.image_encoder = image_encoder

    @property
    def max_batch(self) -> int | None:
        """Most inputs one request may carry (None: no limit of the protocol's own)."""
        return 1 if self.sends_images else None

    # -- where requests go -----------------------------------------------------------------------------------------
    def endpoints(self, url: str) -> tuple[str, str | None]:
        """(prediction URL, info URL or None) for the suspect URL; see the module docstring."""
        if self.predict_path:
            predict = url.rstrip("/") + "/" + self.predict_path.lstrip("/")
        elif self.predict_path == "" or has_path(url) or self.route is None:
            predict = url
        else:
            if "{model}" in self.route and not self.model_name:
                raise InvalidArgument(
                    f"{url} is a base URL and the {self.title} route {self.route} needs the model's name: pass "
                    f"model_name (--model-name), or give the full URL (e.g. {url.rstrip('/')}"
                    f"{self.route.format(model='MODEL')})"
                )
            predict = url.rstrip("/") + self.route.format(model=urllib.parse.quote(self.model_name or "", safe=""))
        if self.info_path == "":
            return predict, None
        if self.info_path:
            return predict, urllib.parse.urljoin(predict, self.info_path)
        return predict, self.default_info(predict)

    def default_info(self, predict_url: str) -> str | None:
        """The URL the stack describes the model at, if it has one worth asking."""
        return None

    def not_found_hint(self) -> str:
        """What to check when the prediction URL does not exist."""
        if self.route is None:
            return f"no such endpoint: check the URL and --protocol ({self.name})"
        name = " and --model-name" if "{model}" in self.route else ""
        return (
            f"no such endpoint: check the URL, --protocol ({self.name}){name}; {self.title} predicts at {self.route} "
            "under the server's URL"
        )

    # -- requests and answers --------------------------------------------------------------------------------------
    def body(self, x: np.ndarray) -> tuple[bytes, str]:
        """(request body, its content type) for a batch ``x`` (N×C×H×W, or N×D, floats in [0, 1])."""
        if self.sends_images:
            return self.png(x)[0], "image/png"
        return to_json({**self.extra_body, **self.json_body(x)}), JSON_TYPE

    def json_body(self, x: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, payload: Any, n: int) -> Answer:
        """The answer for ``n`` inputs in a decoded JSON response; a :class:`SuspectError` when it is not one."""
        raise NotImplementedError

    def read_info(self, info: dict[str, Any]) -> dict[str, Any]:
        """What the info URL said, as the oracle reads it (``num_classes``, ``input_shape``, ``class_names``,
        ``output``); protocols that learn request details from it keep them."""
        return info

    # -- helpers ---------------------------------------------------------------------------------------------------
    def laid_out(self, x: np.ndarray) -> np.ndarray:
        if self.input_layout == "nhwc":
            if x.ndim != 4 and not self.layout_given:  # the stack's image layout; other inputs go as they are
                return x
            if x.ndim != 4:
                raise InvalidArgument(f"input_layout='nhwc' needs N×C×H×W inputs, got {x.shape}")
            return x.transpose(0, 2, 3, 1)
        if self.input_layout == "flat":
            return x.reshape(len(x), -1)
        return x

    def png(self, x: np.ndarray) -> list[bytes]:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InvalidArgument(f"PNG images need N×C×H×W inputs with 1 or 3 channels, got {x.shape}")
        if self.image_encoder is None:
            raise InvalidArgument(f"the {self.name} protocol sends PNG images, but no image encoder was given")
        return [self.image_encoder(img) for img in np.clip(x, 0.0, 1.0)]

    def wrong(self, what: str) -> SuspectError:
        """The error for an answer this protocol does not know, with the hint that the protocol may be the wrong one."""
        return SuspectError(f"the suspect answered {what}; is it a {self.title} server (--protocol {self.name})?")

    def field(self, payload: Any, default: str) -> tuple[Any, str]:
        """The value at ``output_field`` (dotted) or ``default`` in a JSON object, and its name."""
        path = self.output_field or default
        value = payload
        for part in path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise self.wrong(f"without the field {path!r}{keys_hint(payload)}")
        return value, path


PROTOCOLS: Registry[type[HttpProtocol]] = Registry("HTTP protocol")


def register_protocol(cls: type[HttpProtocol]) -> type[HttpProtocol]:
    PROTOCOLS.register(cls.name)(cls)
    return cls


def create_protocol(name: str, **options: Any) -> HttpProtocol:
    """The protocol ``name`` with ``options`` (``None`` values are left to its defaults)."""
    return PROTOCOLS.create(name, **options)


def list_protocols() -> list[str]:
    return PROTOCOLS.list()


# ---------------------------------------------------------------------------------------------------------------------
# copycatch's own protocol, fields configurable
# ---------------------------------------------------------------------------------------------------------------------


@register_protocol
class CopycatchProtocol(HttpProtocol):
    """copycatch's API (POST /v1/predict, GET /v1/info), or any JSON API its field options describe."""

    name = "copycatch"
    title = "copycatch"
    encodings = ("lists", "png")
    detects_logits = False  # "auto" keeps its documented meaning: a 2-D answer is probabilities

    def endpoints(self, url: str) -> tuple[str, str | None]:
        return endpoints(url, self.predict_path, self.info_path)

    def not_found_hint(self) -> str:
        return (
            "no such endpoint: check the URL (a URL with a path is the endpoint itself: copycatch serve's is "
            f"{DEFAULT_PREDICT_PATH}, or give its base URL), or --protocol for another serving stack"
        )

    def body(self, x: np.ndarray) -> tuple[bytes, str]:
        field = self.input_field or ("images" if self.encoding == "png" else "inputs")
        if self.encoding == "png":
            value: Any = [base64.b64encode(img).decode("ascii") for img in self.png(x)]
        else:
            value = self.laid_out(x).tolist()
        return to_json({**self.extra_body, field: value}), JSON_TYPE

    def parse(self, payload: Any, n: int) -> Answer:
        if self.output_field:
            value, source = self.field(payload, self.output_field)
            return rows_or_labels(value, source.rsplit(".", 1)[-1])
        if isinstance(payload, dict):
            if "probabilities" in payload:
                return Answer("scores", payload["probabilities"], "probabilities")
            if "labels" in payload:
                return Answer("labels", payload["labels"], "labels")
            raise SuspectError(
                f"the suspect answered neither 'probabilities' nor 'labels'{keys_hint(payload)}; name the field with "
                "output_field (--output-field), or choose its serving stack's --protocol"
            )
        if isinstance(payload, list):
            return rows_or_labels(payload, "(body)")
        raise SuspectError(f"the suspect answered a JSON {type(payload).__name__}, expected an object or a list")


def endpoints(url: str, predict_path: str | None = None, info_path: str | None = None) -> tuple[str, str | None]:
    """copycatch's (prediction URL, info URL or None) for a suspect URL and the path options (the
    :mod:`~copycatch.oracles.http` module docstring). ``None`` and the default paths mean the same: the CLI
    passes the defaults explicitly."""
    base = url.rstrip("/")
    path_given = has_path(url)
    if predict_path in (None, DEFAULT_PREDICT_PATH) and not path_given:  # a bare base URL
        predict_url, default_info, endpoint = base + DEFAULT_PREDICT_PATH, base + DEFAULT_INFO_PATH, False
    elif predict_path in (None, DEFAULT_PREDICT_PATH, ""):  # the URL is the prediction endpoint
        predict_url, default_info, endpoint = url, _beside_our_predict(url), path_given
    else:  # an API under a prefix: the paths go below the URL
        predict_url, default_info, endpoint = base + predict_path, base + DEFAULT_INFO_PATH, False
    if info_path in (None, DEFAULT_INFO_PATH):
        return predict_url, default_info
    if not info_path:
        return predict_url, None
    if urllib.parse.urlsplit(info_path).scheme in ("http", "https"):
        return predict_url, info_path
    if endpoint:
        return predict_url, urllib.parse.urljoin(url, info_path)
    return predict_url, base + "/" + info_path.lstrip("/")


def _beside_our_predict(url: str) -> str | None:
    """The info URL of copycatch's protocol for a ``…/v1/predict`` endpoint URL, else None."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith(DEFAULT_PREDICT_PATH):
        return None
    prefix = path[: len(path) - len(DEFAULT_PREDICT_PATH)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, prefix + DEFAULT_INFO_PATH, "", ""))


# ---------------------------------------------------------------------------------------------------------------------
# the serving stacks
# ---------------------------------------------------------------------------------------------------------------------


@register_protocol
class TfServingProtocol(HttpProtocol):
    """TensorFlow Serving REST: POST /v1/models/NAME:predict {"instances"} (N×H×W×C) → {"predictions"}."""

    name = "tfserving"
    title = "TensorFlow Serving"
    route = "/v1/models/{model}:predict"
    layout = "nhwc"

    def json_body(self, x: np.ndarray) -> dict[str, Any]:
        # the row format; input_field="inputs" asks for the columnar one, answered under "outputs"
        return {self.input_field or "instances": self.laid_out(x).tolist()}

    def parse(self, payload: Any, n: int) -> Answer:
        if not isinstance(payload, dict):
            raise self.wrong(f"a JSON {type(payload).__name__}, not an object with 'predictions'")
        value, source = self.field(payload, "outputs" if "outputs" in payload else "predictions")
        if isinstance(value, list) and value and isinstance(value[0], dict):  # a model with named outputs
            value = [_named_output(row, self) for row in value]
        return rows_or_labels(value, source)


@register_protocol
class KServeV1Protocol(TfServingProtocol):
    """KServe v1: POST /v1/models/NAME:predict {"instances"} (as the model takes them, N×C×H×W) → {"predictions"}."""

    name = "kserve-v1"
    title = "KServe v1"
    layout = "nchw"


@register_protocol
class OpenInferenceProtocol(HttpProtocol):
    """Open Inference Protocol (KServe v2, Triton, MLServer): POST /v2/models/NAME/infer, typed tensors."""

    name = "kserve-v2"
    title = "Open Inference Protocol (KServe v2)"
    route = "/v2/models/{model}/infer"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.input_name = self.input_field or "input-0"  # the metadata's name replaces the default

    def default_info(self, predict_url: str) -> str | None:
        parts = urllib.parse.urlsplit(predict_url)
        if not parts.path.endswith("/infer"):
            return None
        return urllib.parse.urlunsplit(parts._replace(path=parts.path[: -len("/infer")], query=""))

    def read_info(self, info: dict[str, Any]) -> dict[str, Any]:
        inputs = info.get("inputs")
        if self.input_field is None and isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
            self.input_name = str(inputs[0].get("name") or self.input_name)
        return {"model_metadata": info}

    def json_body(self, x: np.ndarray) -> dict[str, Any]:
        arr = np.ascontiguousarray(self.laid_out(x), dtype=np.float32)
        tensor = {"name": self.input_name, "shape": list(arr.shape), "datatype": "FP32", "data": arr.ravel().tolist()}
        body: dict[str, Any] = {"inputs": [tensor]}
        if self.output_field:
            body["outputs"] = [{"name": self.output_field}]
        return body

    def parse(self, payload: Any, n: int) -> Answer:
        outputs = payload.get("outputs") if isinstance(payload, dict) else None
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise self.wrong(f"without a list of 'outputs'{keys_hint(payload)}")
        names = [o.get("name") for o in outputs]
        if self.output_field is not None and self.output_field not in names:
            raise self.wrong(f"the outputs {names}, not {self.output_field!r}")
        out = outputs[names.index(self.output_field)] if self.output_field is not None else outputs[0]
        source = f"outputs[{out.get('name')!r}]"
        shape, data = out.get("shape"), out.get("data")
        if not isinstance(shape, list) or not isinstance(data, list):
            raise self.wrong(f"the output {out.get('name')!r} without a 'shape' and 'data' list")
        if out.get("datatype") == "BYTES":  # class names
            return Answer("labels", _flat(data), source)
        try:
            arr = np.asarray(data, dtype=np.float64).reshape(shape)
        except (TypeError, ValueError) as exc:
            raise SuspectError(f"the suspect's output {source} does not fit its shape {shape} ({exc})") from None
        if arr.ndim == 2 and arr.shape[1] > 1:
            return Answer("scores", arr.tolist(), source)
        return Answer("labels", arr.reshape(-1).tolist(), source)


@register_protocol
class TorchServeProtocol(HttpProtocol):
    """TorchServe: POST /predictions/NAME, one PNG per request → probabilities, or {label: score} (top-k)."""

    name = "torchserve"
    encodings = ("lists", "png")  # it always sends PNG images; either option means the same
    title = "TorchServe"
    route = "/predictions/{model}"
    sends_images = True

    def parse(self, payload: Any, n: int) -> Answer:
        if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], (list, dict)):
            payload = payload[0]  # a handler that answers its batch of one as a list
        if isinstance(payload, dict):
            try:
                return Answer("ranked", [[(k, float(v)) for k, v in payload.items()]], "(body)")
            except (TypeError, ValueError):
                raise self.wrong(f"an object whose values are not all scores{keys_hint(payload)}") from None
        if isinstance(payload, list) and all(_is_number(v) for v in payload):
            return Answer("scores", [payload], "(body)")
        if isinstance(payload, (int, str)) and not isinstance(payload, bool):
            return Answer("labels", [payload], "(body)")
        raise self.wrong(_shape_of(payload))


@register_protocol
class MlflowProtocol(HttpProtocol):
    """MLflow pyfunc scoring server: POST /invocations {"inputs"} (or dataframe_split, instances) → {"predictions"}."""

    name = "mlflow"
    title = "MLflow scoring server"
    route = "/invocations"

    def json_body(self, x: np.ndarray) -> dict[str, Any]:
        field = self.input_field or "inputs"
        if field == "dataframe_split":
            rows = x.reshape(len(x), -1)
            return {field: {"columns": [str(i) for i in range(rows.shape[1])], "data": rows.tolist()}}
        if field not in ("inputs", "instances"):
            raise InvalidArgument(f"the mlflow protocol takes inputs, instances or dataframe_split, got {field!r}")
        return {field: self.laid_out(x).tolist()}

    def parse(self, payload: Any, n: int) -> Answer:
        value, source = self.field(payload, "predictions") if isinstance(payload, dict) else (payload, "(body)")
        if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
            value = [list(row) for row in zip(*(value[k] for k in _column_order(value)))]  # a dict of columns
        elif isinstance(value, list) and value and all(isinstance(r, dict) for r in value):  # DataFrame records
            value = [[r[k] for k in _column_order(r)] for r in value]
        return rows_or_labels(value, source)


@register_protocol
class HuggingFaceProtocol(HttpProtocol):
    """Hugging Face image classification: one PNG per request → [{"label", "score"}, ...] (top-k)."""

    name = "hf"
    encodings = ("lists", "png")  # it always sends PNG images; either option means the same
    title = "Hugging Face image classification"
    sends_images = True

    def parse(self, payload: Any, n: int) -> Answer:
        if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], list):
            payload = payload[0]  # answered as a batch of one
        if not isinstance(payload, list) or not all(
            isinstance(d, dict) and {"label", "score"} <= set(d) for d in payload
        ):
            raise self.wrong(f"{_shape_of(payload)}, not a list of {{'label', 'score'}} objects")
        try:
            return Answer("ranked", [[(d["label"], float(d["score"])) for d in payload]], "(body)")
        except (TypeError, ValueError):
            raise self.wrong("a score that is not a number") from None


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def rows_or_labels(value: Any, source: str) -> Answer:
    """A list of rows is scores, a flat list labels."""
    if not isinstance(value, list):
        raise SuspectError(f"the suspect answered {source!r} as a {type(value).__name__}, expected a list")
    if value and isinstance(value[0], list):
        return Answer("scores", value, source)
    return Answer("labels", value, source)


def has_path(url: str) -> bool:
    return urllib.parse.urlsplit(url).path not in ("", "/")


def to_json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def keys_hint(payload: Any) -> str:
    if isinstance(payload, dict):
        return f" (it has {', '.join(map(repr, list(payload)[:8]))})"
    return ""


def _named_output(row: dict[str, Any], protocol: HttpProtocol) -> Any:
    """One input's answer from a row of named outputs (TF-Serving's row format for a multi-output signature)."""
    if protocol.output_field in row:
        return row[protocol.output_field]
    if len(row) == 1:
        return next(iter(row.values()))
    raise SuspectError(
        f"the suspect answered the named outputs {', '.join(map(repr, row))}: choose one with output_field "
        "(--output-field)"
    )


def _column_order(columns: Mapping[str, Any]) -> list[str]:
    """Column names in class order: numerically when they are all digits, else as answered."""
    names = list(columns)
    return sorted(names, key=int) if all(str(k).isdigit() for k in names) else names


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flat(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [item for v in value for item in _flat(v)]
    return [value]


def _shape_of(payload: Any) -> str:
    if isinstance(payload, dict):
        return f"a JSON object{keys_hint(payload)}"
    return f"a JSON {type(payload).__name__}"
