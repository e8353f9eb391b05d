"""The FastAPI application: ``POST /v1/predict``, ``GET /v1/info``, ``GET /v1/usage``, ``GET /healthz``, ``/docs``.

``/v1/predict`` takes JSON, a raw body holding one input (``image/png``, ``audio/wav``, ``text/plain``… as the
model's modality allows) or ``multipart/form-data`` files: :mod:`.decoders` maps the modality to what is accepted.
``/docs`` (Swagger UI) and ``/redoc`` load their scripts from this server (the assets of ``fastapi-offline``), so
they work without Internet access.

What a request goes through, in order (each refusal is a JSON ``{"detail": "..."}`` and one ledger line):

1. API key (``X-API-Key``, when a key file is configured) → 401;
2. a refusal decidable before reading the body (spent budget, empty token bucket) → 429 + ``Retry-After``;
3. ``Content-Type`` → 415; body size (``Content-Length`` and the bytes actually received) → 413;
4. validation and decoding (:mod:`.validation`, :mod:`.decoders`: JSON, shape, types, NaN/Inf, range; images, clips,
   texts; a decompression bomb or an over-long clip → 413) → 400 / 413 / 422;
5. rate and budget for the batch's N inputs (:mod:`.limits`) → 429 + ``Retry-After``; 503 + ``Retry-After`` when
   the shared store of the counts (``ServeConfig.state``, Redis) is unreachable, so no answer goes uncounted;
6. the batcher (:mod:`.batching`) answers through ``ModelOracle`` → ``scheme.protect`` (the secret stays on
   the server) → the output post-processor (top-k, hard label, rounding);
7. the ledger line is written *before* the answer leaves: if it cannot be written the answer is withheld
   (503) — an owner who keeps a ledger wants no unrecorded answers.

Any unexpected failure is logged on the server with its traceback and answered 500 with a request id;
nothing internal reaches the client.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .._version import __version__
from ..core.errors import InvalidArgument
from ..core.key import Key
from ..core.keyset import KeySet, open_keys
from ..data.vocabulary import Vocabulary
from ..models.base import MODELS, Classifier
from ..models.encoder import is_encoder
from .config import ServeConfig
from .decoders import FILES_FIELD, JSON, MULTIPART
from .keys import Keyring
from .service import (
    ERROR_RESPONSES,
    HealthResponse,
    InfoResponse,
    LabelsResponse,
    ProbabilitiesResponse,
    Service,
    UsageResponse,
    add_docs_routes,
    add_error_handlers,
)
from .validation import RequestError

log = logging.getLogger("copycatch.serve")


# ---------------------------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------------------------


def create_app(
    model: Any,
    config: ServeConfig | None = None,
    *,
    key: Key | KeySet | Sequence[Key] | str | None = None,
    keyring: Keyring | str | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    modality: str | None = None,
    vocabulary: Vocabulary | str | None = None,
    encoder: bool | None = None,
) -> FastAPI:
    """A FastAPI app serving ``model`` (an :class:`Oracle`, a :class:`~copycatch.models.base.Classifier`, a model
    file, or anything :func:`copycatch.oracles.suspects.open_suspect` opens) under ``config``.

    ``key`` (a key, a key set, or a file of either) applies its schemes' API-time protection server-side;
    ``keyring`` (or a key file path) requires an ``X-API-Key`` on every ``/v1`` request. ``modality`` defaults to
    the model's (a copycatch model file says it; else from the rank of the input shape); a text model's
    ``vocabulary`` (a :class:`~copycatch.data.vocabulary.Vocabulary` or its JSON file) lets clients send ``texts``,
    and defaults to the one stored with the model. The app opens its ledger at once and closes it on shutdown.
    ``encoder`` True also serves the model's embeddings on ``/v1/embed`` (:mod:`copycatch.serve.embedding`, sharing
    this app's keys, limits and ledger); None does so when the model is a registered encoder architecture.
    """
    from ..oracles.suspects import open_suspect

    config = config or ServeConfig()
    oracle = open_suspect(model, num_classes=num_classes, input_shape=input_shape)
    if class_names is None:
        class_names = getattr(getattr(oracle, "model", None), "class_names", None)
    if isinstance(key, str):
        key = open_keys(key)[0]
    if isinstance(keyring, str):
        keyring = Keyring.load(keyring)
    if isinstance(vocabulary, str):
        vocabulary = _read_vocabulary(vocabulary)
    service = Service(
        oracle, config, key=key, keyring=keyring, class_names=class_names, modality=modality, vocabulary=vocabulary
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await service.close()  # uvicorn has already finished the in-flight requests

    app = FastAPI(
        title="copycatch prediction API",
        version=__version__,
        description=f"Predictions from a protected {service.modality} model. Every answered query is recorded in "
        "the owner's ledger. Send a batch as JSON, one input as the raw body, or files as a multipart form.",
        lifespan=lifespan,
        docs_url=None,  # served by add_docs_routes from local assets
        redoc_url=None,
    )
    app.state.service = service
    _add_predict_route(app, service)
    _add_read_routes(app, service)
    add_docs_routes(app)
    add_error_handlers(app)
    served = getattr(oracle, "model", None)
    if encoder is None:
        encoder = isinstance(served, Classifier) and served.arch in MODELS and is_encoder(served.arch)
    if encoder:
        from .embedding import add_embedding_route  # torch-heavy routes only for an encoder

        add_embedding_route(app, served if served is not None else model)
    return app


def _read_vocabulary(path: str) -> Vocabulary:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read the vocabulary ({exc.strerror or exc})") from None
    return Vocabulary.from_json(text)


def _add_predict_route(app: FastAPI, service: Service) -> None:
    """``POST /v1/predict``, documented with the request schema of the served modality, input shape and output
    mode, and example requests."""
    decoder = service.decoder
    labels = service.config.output == "label"
    content: dict[str, Any] = {
        JSON: {"schema": decoder.request_model.model_json_schema(), "examples": decoder.json_examples()}
    }
    one = {"type": "string", "format": "binary", "description": "one input"}
    content.update({media: {"schema": one} for media in decoder.media_types})
    if decoder.media_types:
        files = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
        files["maxItems"] = service.max_batch
        content[MULTIPART] = {
            "schema": {
                "type": "object",
                "properties": {FILES_FIELD: files},
                "required": [FILES_FIELD],
                "additionalProperties": False,  # another field is refused
            },
        }
    fields = ", ".join(f"`{name}`: {text}" for name, (_, text) in decoder.fields().items())

    async def predict(request: Request) -> JSONResponse:
        return await service.predict(request)

    app.add_api_route(
        "/v1/predict",
        predict,
        methods=["POST"],
        response_model=LabelsResponse if labels else ProbabilitiesResponse,
        summary="Predict a batch of inputs",
        description=f"JSON with exactly one of {fields}; 1 ≤ N ≤ {service.max_batch}. Or one input as the raw body "
        f"({', '.join(f'`{m}`' for m in decoder.media_types)}), or N files under `{FILES_FIELD}` in a "
        f"`{MULTIPART}` form. Answers "
        + ("`labels`" if labels else "`probabilities`, one row per input,")
        + " and the `classes` they refer to.",
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": {"required": True, "content": content}},
    )


def _add_read_routes(app: FastAPI, service: Service) -> None:
    """``GET /v1/info``, ``GET /v1/usage`` (both behind the API key, when there is one) and ``GET /healthz``."""

    def _guarded(request: Request) -> str | JSONResponse:
        try:
            return service.identify(request)
        except RequestError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.get(
        "/v1/info",
        response_model=InfoResponse,
        responses={401: ERROR_RESPONSES[401]},
        summary="What the model takes and answers (never any secret)",
    )
    async def info(request: Request) -> Any:
        who = _guarded(request)
        return who if isinstance(who, JSONResponse) else service.info()

    @app.get(
        "/v1/usage",
        response_model=UsageResponse,
        responses={401: ERROR_RESPONSES[401]},
        summary="Inputs answered for your key and what is left of its budget",
    )
    async def usage(request: Request) -> Any:
        who = _guarded(request)
        return who if isinstance(who, JSONResponse) else service.usage(who)

    @app.get(
        "/healthz",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse}},
        summary="Liveness: ok, or 503 while shutting down",
    )
    async def healthz() -> Any:
        if service.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}
