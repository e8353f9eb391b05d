"""The embedding endpoint of an encoder API: ``POST /v1/embed`` and ``GET /v1/embed/info``.

An encoder as a service (StolenEncoder's "EaaS") answers embedding vectors, never probabilities. The route runs the
same request pipeline as ``/v1/predict`` (:class:`.service.Service`: API key → early refusal → Content-Type
and body size → validation → rate and budget for the batch's N inputs → batched forward pass → ledger line before the
answer leaves); only the answer differs: ``{"embeddings": [[...], ...]}``, one row of ``dim`` floats per input. There
is no output post-processing and no API-time watermark (those act on class probabilities).

Two ways to serve one:

* :func:`create_embedding_app` builds a small app of its own (``/v1/embed``, ``/v1/embed/info``, ``/healthz``)
  with its own keys, limits and ledger from a :class:`~copycatch.serve.config.ServeConfig`;
* :func:`add_embedding_route` adds the two routes to an app made by :func:`copycatch.serve.app.create_app`,
  sharing its API keys, rate limits, query budget and ledger: an input embedded and an input classified are charged
  to the same key's budget and recorded in the same ledger (``"output": "embedding"`` on the line).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .._version import __version__
from ..core.errors import InvalidArgument
from ..oracles.embedding import EMBED_INFO_PATH, EMBED_PATH, as_encoder_oracle
from .config import ServeConfig
from .keys import Keyring
from .ledger import row_digests
from .service import ERROR_RESPONSES, Service, add_docs_routes, add_error_handlers
from .validation import RequestError

EMBEDDING_OUTPUT = "embedding"


class EmbeddingsResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="one row of dim floats per input")


class EmbedInfoResponse(BaseModel):
    input_shape: list[int] = Field(description="C, H, W of one input")
    num_classes: int = Field(description="the answer's width: the embedding dimension (the clients' name for it)")
    embedding_dim: int
    output: str = Field(description="always embedding")
    max_batch: int = Field(description="inputs per request")
    max_body_bytes: int
    input_formats: list[str]
    auth: str | None = None
    server: str


class EmbeddingService(Service):
    """:class:`Service` answering embeddings: the request pipeline is the prediction route's."""

    def __init__(self, encoder: Any, config: ServeConfig, *, keyring: Keyring | None = None):
        if config.output != "probs":
            raise InvalidArgument(
                f"an encoder API answers embeddings as they are; output={config.output!r} does not apply"
            )
        oracle = as_encoder_oracle(encoder)
        super().__init__(oracle, config, keyring=keyring)
        self.embedding_dim = oracle.num_classes

    def encode(self, out: torch.Tensor) -> tuple[dict[str, Any], list[str]]:
        return {"embeddings": out.tolist()}, row_digests(out)

    async def _answer_request(self, request: Request, call: Any) -> dict[str, Any]:
        call.entry["output"] = EMBEDDING_OUTPUT  # the ledger line says what was answered
        return await super()._answer_request(request, call)

    def info(self) -> dict[str, Any]:
        base = super().info()
        return {
            **{k: base[k] for k in ("input_shape", "max_batch", "max_body_bytes", "input_formats", "auth", "server")},
            "num_classes": self.embedding_dim,
            "embedding_dim": self.embedding_dim,
            "output": EMBEDDING_OUTPUT,
        }

    def share(self, other: Service) -> None:
        """Use ``other``'s API keys, limiter and ledger (the prediction service of the same app)."""
        self.keyring, self.limiter, self.ledger = other.keyring, other.limiter, other.ledger


def _routes(app: FastAPI, service: EmbeddingService) -> None:
    schema = service.request_model.model_json_schema()

    async def embed(request: Request) -> JSONResponse:
        return await service.predict(request)

    async def embed_info(request: Request) -> Any:
        try:
            service.identify(request)
        except RequestError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)
        return service.info()

    app.add_api_route(
        EMBED_PATH,
        embed,
        methods=["POST"],
        response_model=EmbeddingsResponse,
        summary="Embed a batch of inputs",
        description=f"`inputs`: N×{'×'.join(map(str, service.input_shape))} nested lists of numbers in [0, 1], or "
        f"`images`: N base64 PNGs; 1 ≤ N ≤ {service.max_batch}. Answers `embeddings`, one row of "
        f"{service.embedding_dim} floats per input.",
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
    )
    app.add_api_route(
        EMBED_INFO_PATH,
        embed_info,
        methods=["GET"],
        response_model=EmbedInfoResponse,
        responses={401: ERROR_RESPONSES[401]},
        summary="What the encoder takes and answers (never any secret)",
    )


def add_embedding_route(app: FastAPI, encoder: Any, *, config: ServeConfig | None = None) -> EmbeddingService:
    """Add ``POST /v1/embed`` and ``GET /v1/embed/info`` serving ``encoder`` (a copycatch encoder, a model or ONNX
    file, an embedding oracle) to ``app``. An app made by :func:`~copycatch.serve.app.create_app` lends the route its
    keys, limits and ledger; ``config`` then sets only the batching and size limits. The app's shutdown also stops
    the route's batcher."""
    base = getattr(app.state, "service", None)
    config = config or (base.config.replace(output="probs") if base is not None else ServeConfig())
    # the shared ledger and limiter are opened by the prediction service, never a second time here
    service = EmbeddingService(encoder, config.replace(ledger=None, rate=None, budget=None, state=None, burst=None))
    if base is not None:
        service.share(base)
    _routes(app, service)
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        async with previous(application) as state:
            yield state
            service.closing = True
            await service.batcher.close()

    app.router.lifespan_context = lifespan
    app.state.embedding_service = service
    return service


def create_embedding_app(
    encoder: Any, config: ServeConfig | None = None, *, keyring: Keyring | str | None = None
) -> FastAPI:
    """A FastAPI app serving ``encoder`` on ``/v1/embed`` with its own keys, limits and ledger (``config``)."""
    config = config or ServeConfig()
    if isinstance(keyring, str):
        keyring = Keyring.load(keyring)
    service = EmbeddingService(encoder, config, keyring=keyring)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.close()

    app = FastAPI(
        title="copycatch embedding API",
        version=__version__,
        description="Embeddings from an encoder. Every answered query is recorded in the owner's ledger.",
        lifespan=lifespan,
        docs_url=None,  # served by add_docs_routes from local assets
        redoc_url=None,
    )
    add_docs_routes(app)
    app.state.embedding_service = service
    _routes(app, service)

    @app.get("/healthz", summary="Liveness: ok, or 503 while shutting down")
    async def healthz() -> Any:
        if service.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}

    add_error_handlers(app)
    return app
