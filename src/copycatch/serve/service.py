"""The request pipeline shared by the prediction and embedding routes: :class:`Service` (API key, early
refusal, body limits, decoding, rate and budget, the batcher, the ledger; see :mod:`copycatch.serve.app` for the
order), the response models of the OpenAPI schema, the error table and the JSON error handlers. The routes are in
:mod:`.app` (``/v1/predict``, ``/v1/info`` …) and :mod:`.embedding` (``/v1/embed``), both built on this module."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .._version import __version__
from ..core.errors import InvalidArgument
from ..core.key import Key
from ..core.keyset import KeySet, open_keys
from ..data.base import MODALITIES
from ..data.vocabulary import Vocabulary
from ..models.base import SHAPES
from ..oracles.base import Oracle
from .batching import Batcher, ShuttingDown
from .config import ServeConfig, limiter_for
from .dawn_records import attach_record_file, has_dawn
from .decoders import FILES_FIELD, JSON, MULTIPART, Decoder, decoder_for
from .keys import HEADER, Keyring
from .ledger import ANONYMOUS, Ledger, LedgerError, row_digests
from .limits import StateUnavailable
from .validation import RequestError

log = logging.getLogger("copycatch.serve")


UNAUTHENTICATED = "(unauthenticated)"
_PARSE_IN_THREAD = 256 * 1024  # bodies larger than this are parsed off the event loop


# ---------------------------------------------------------------------------------------------------------------------
# response models (for the OpenAPI schema and /docs)
# ---------------------------------------------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    detail: str = Field(description="one line saying what was wrong")


class InfoResponse(BaseModel):
    modality: str = Field(description="image | text | audio: what the model reads")
    input_shape: list[int] = Field(description="the shape of one input: C, H, W (image), L (text) or 1, S (audio)")
    num_classes: int
    class_names: list[str]
    output: str = Field(description="probs | top-k | label | rounded")
    top_k: int | None = Field(None, description="k of the top-k output")
    decimals: int | None = Field(None, description="decimals of the rounded output")
    max_batch: int = Field(description="inputs per request")
    max_body_bytes: int
    input_formats: list[str] = Field(
        description="JSON fields (inputs, and images, texts or clips) and Content-Types the predict route accepts"
    )
    auth: str | None = Field(None, description="header carrying the API key, when keys are required")
    server: str


class ProbabilitiesResponse(BaseModel):
    probabilities: list[list[float]] = Field(description="one row of num_classes probabilities per input")
    classes: list[str] = Field(description="the class names, in the order of each row's columns")


class LabelsResponse(BaseModel):
    labels: list[int] = Field(description="one predicted class index per input")
    classes: list[str] = Field(description="the class names, indexed by the labels")


class UsageResponse(BaseModel):
    key: str
    queries: int = Field(description="inputs answered for this key in the current budget window")
    budget: str | None = None
    remaining: int | None = None


class HealthResponse(BaseModel):
    status: str


# ---------------------------------------------------------------------------------------------------------------------
# the service
# ---------------------------------------------------------------------------------------------------------------------


def protected_oracle(
    oracle: Oracle,
    *,
    key: Key | KeySet | Sequence[Key] | None = None,
    output: str = "probs",
    top_k: int = 3,
    decimals: int = 2,
) -> Oracle:
    """The oracle the server answers with: every key's ``scheme.protect`` (API-time watermarks; a key set's parts
    in order) then the output mode."""
    if key is not None:
        from ..schemes import protect_oracle

        keys = open_keys(key)[0]
        for k in keys:
            classes = k.meta.get("num_classes")
            if classes is not None and int(classes) != oracle.num_classes:
                raise InvalidArgument(
                    f"key is for a {classes}-class model but the served model has {oracle.num_classes} classes"
                )
            shape = k.meta.get("input_shape")
            if shape and oracle.input_shape is not None and tuple(shape) != tuple(oracle.input_shape):
                raise InvalidArgument(
                    f"key is for inputs shaped {tuple(shape)} but the served model takes {tuple(oracle.input_shape)}"
                )
        oracle = protect_oracle(oracle, keys)
    config = ServeConfig(output=output, top_k=top_k, decimals=decimals)
    spec = config.postprocess_spec()
    return oracle.postprocess(spec) if spec else oracle


class PrevalidatedOracle(Oracle):
    """The served model behind the API's own validation: :mod:`.decoders` already guarantees finite inputs of the
    model's shape and range (float32, or int64 token ids), so re-checking every input value (an ``isfinite`` over
    the whole batch, about 1-2 ms per 512 Fashion-MNIST inputs) at each layer of the oracle chain is skipped.
    Answers are still checked (shape, finiteness) and queries counted."""

    def __init__(self, inner: Oracle):
        super().__init__(inner.num_classes, inner.input_shape, name=inner.name)
        self.inner = inner
        self.output_kind = inner.output_kind

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return answer_validated(self, x)

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner._answer(x)


def answer_validated(oracle: Oracle, x: torch.Tensor) -> torch.Tensor:
    """``oracle.query(x)`` for inputs the server has validated: counted, answers checked, inputs not re-scanned."""
    oracle._charge(len(x))
    return oracle._check_output(oracle._answer(x), len(x))


@dataclasses.dataclass
class _Call:
    """One ``/v1/predict`` request on its way through: its ledger line, the response headers, what was charged."""

    request_id: str
    entry: dict[str, Any]
    headers: dict[str, str]
    charged: tuple[str, int] | None = None  # (key, inputs) charged to the limiter, refunded if not answered


class Service:
    """State and request handling behind the routes (kept out of the route functions so tests can reach it)."""

    def __init__(
        self,
        oracle: Oracle,
        config: ServeConfig,
        *,
        key: Key | KeySet | Sequence[Key] | None = None,
        keyring: Keyring | None = None,
        class_names: Sequence[str] | None = None,
        modality: str | None = None,
        vocabulary: Vocabulary | None = None,
    ):
        if oracle.input_shape is None:
            raise InvalidArgument("the served model must declare its input shape (give --input-shape)")
        self.config = config
        self.input_shape = tuple(int(v) for v in oracle.input_shape)
        self.modality = served_modality(oracle, modality)
        self.num_classes = oracle.num_classes
        names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise InvalidArgument(f"{len(names)} class names for a {self.num_classes}-class model")
        self.class_names = names
        self.oracle = protected_oracle(
            PrevalidatedOracle(oracle), key=key, output=config.output, top_k=config.top_k, decimals=config.decimals
        )
        self.keys, self.keyring = open_keys(key)[0] if key is not None else [], keyring  # what protects the answers
        self.max_batch = config.effective_max_batch
        model = getattr(oracle, "model", None)
        self.decoder: Decoder = decoder_for(
            self.modality,
            self.input_shape,
            self.max_batch,
            config,
            vocabulary=vocabulary if vocabulary is not None else getattr(model, "vocabulary", None),
            vocab_size=(getattr(model, "arch_kwargs", None) or {}).get("vocab_size"),
        )
        self.request_model = self.decoder.request_model  # the JSON schema, for routes built on this service
        self.ledger = None
        if config.ledger:
            self.ledger = Ledger(
                config.ledger, max_bytes=config.ledger_max_bytes, keep=config.ledger_keep, fsync=config.fsync
            )  # type: ignore[arg-type]
        # DAWN keys: each watermarked answer is recorded next to the ledger before it leaves (.dawn_records); without
        # a ledger nothing says which client asked what, so the evidence would be lost: refuse instead
        if self.ledger is None and has_dawn(self.oracle):
            raise InvalidArgument(
                "a DAWN key is served without a query ledger: its evidence is the inputs each client asked, recorded "
                "beside the ledger; give one (copycatch serve --ledger FILE, ServeConfig(ledger=...))"
            )
        self.dawn_records = (
            attach_record_file(self.oracle, self.ledger.path, fsync=config.fsync == "always")
            if self.ledger is not None
            else None
        )
        # budgets survive a restart through the ledger; config.state shares them with other replicas (Redis)
        self.limiter = limiter_for(config, self.ledger.path if self.ledger is not None else None)
        self.batcher = Batcher(
            self._answer, max_batch=max(config.forward_batch, self.max_batch), max_wait=config.batch_wait_ms / 1000.0
        )
        self.closing = False

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        return answer_validated(self.oracle, x)

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "modality": self.modality,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "output": c.output,
            "top_k": c.top_k if c.output == "top-k" else None,
            "decimals": c.decimals if c.output == "rounded" else None,
            "max_batch": self.max_batch,
            "max_body_bytes": c.max_body_bytes,
            "input_formats": self.decoder.input_formats(),
            "auth": HEADER if self.keyring is not None else None,
            "server": f"copycatch {__version__}",
        }

    # -- request steps ---------------------------------------------------------------------------------------------
    def identify(self, request: Request) -> str:
        if self.keyring is None:
            return ANONYMOUS
        secret = request.headers.get(HEADER)
        if not secret:
            raise RequestError(401, f"missing {HEADER} header: this API needs a key", {"WWW-Authenticate": HEADER})
        key_id = self.keyring.identify(secret)
        if key_id is None:
            raise RequestError(401, "unknown API key", {"WWW-Authenticate": HEADER})
        return key_id

    def _refusal(self, decision: Any) -> RequestError:
        headers = {"Retry-After": decision.retry_after_header}
        if decision.budget_remaining is not None:
            headers["X-Budget-Remaining"] = str(decision.budget_remaining)
        status = {"burst": 413, "unavailable": 503}.get(decision.kind, 429)
        return RequestError(status, decision.reason, headers if status != 413 else {})

    def media_type(self, request: Request) -> str:
        """The request's media type (JSON when none is given), refused (415) unless the decoder takes it."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower() or JSON
        accepted = self.decoder.content_types()
        if media not in accepted:
            raise RequestError(415, f"Content-Type must be one of {', '.join(accepted)}; got {media!r}")
        return media

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise RequestError(400, "Content-Length is not a number") from None
            if size > limit:
                raise RequestError(413, f"request body of {size} bytes is too large: at most {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"request body is too large: at most {limit} bytes")
        return bytes(body)

    def encode(self, out: torch.Tensor) -> tuple[dict[str, Any], list[str]]:
        if self.config.output == "label":
            labels = out.argmax(dim=1)
            return {"labels": labels.tolist(), "classes": self.class_names}, row_digests(labels)
        if self.config.output == "rounded":
            # Send the short decimal, not the float32 next to it (0.1, not 0.10000000149011612).
            rows = np.round(out.double().numpy(), self.config.decimals).tolist()
            return {"probabilities": rows, "classes": self.class_names}, row_digests(out)
        return {"probabilities": out.tolist(), "classes": self.class_names}, row_digests(out)

    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        call = _Call(
            request_id,
            entry={
                "request": request_id,
                "key": UNAUTHENTICATED,
                "client": request.client.host if request.client else None,
                "output": self.config.output,
            },
            headers={"X-Request-ID": request_id},
        )
        try:
            status, payload = await self._respond(request, call)
            call.entry["status"] = status
            call.entry["ms"] = round((time.perf_counter() - started) * 1000, 2)
            if status != 200:
                call.entry.pop("outputs", None)
                call.entry["error"] = payload["detail"][:200]
            if self.ledger is not None:
                status, payload = await self._record(call, status, payload)
            if status != 200:
                self._refund(call)
            return JSONResponse(payload, status_code=status, headers=call.headers)
        except asyncio.CancelledError:  # the client went away mid-request
            self._refund(call)
            raise

    async def _respond(self, request: Request, call: _Call) -> tuple[int, dict[str, Any]]:
        """The status and JSON payload for this request: the answer, or a refusal that says why."""
        try:
            return 200, await self._answer_request(request, call)
        except RequestError as exc:
            call.headers.update(exc.headers)
            return exc.status, {"detail": exc.detail}
        except ShuttingDown:
            call.headers["Retry-After"] = "1"
            return 503, {"detail": "the server is shutting down; retry on another instance"}
        except ClientDisconnect:  # nobody is left to answer; recorded as nginx does (499)
            return 499, {"detail": "client closed the connection before sending the whole body"}
        except Exception:
            log.exception("request %s failed", call.request_id)
            return 500, {"detail": f"internal server error (request {call.request_id}); the server log has details"}

    async def _answer_request(self, request: Request, call: _Call) -> dict[str, Any]:
        """Steps 1-6 of the module docstring; raises what refuses the request."""
        key_id = call.entry["key"] = self.identify(request)
        if self.closing:
            raise ShuttingDown
        if self.limiter is not None and (early := self.limiter.quick_reject(key_id)) is not None:
            raise self._refusal(early)
        media = self.media_type(request)
        body = await self.read_body(request)
        x = await self.decode(request, media, body)
        call.entry["n"] = len(x)
        call.entry["inputs"] = row_digests(x)
        if self.limiter is not None:
            decision = self.limiter.admit(key_id, len(x))
            if not decision.allowed:
                raise self._refusal(decision)
            call.charged = (key_id, len(x))
            if decision.budget_remaining is not None:
                call.headers["X-Budget-Remaining"] = str(decision.budget_remaining)
        out = await self.batcher.submit(x)
        payload, digests = self.encode(out)
        call.entry["outputs"] = digests
        return payload

    async def decode(self, request: Request, media: str, body: bytes) -> torch.Tensor:
        """The batch a body of ``media`` type holds; large bodies are decoded off the event loop."""
        if media == JSON:
            work: Any = functools.partial(self.decoder.parse_json, body)
        elif media == MULTIPART:
            work = functools.partial(self.decoder.from_media, await self.read_form(request.headers, body))
        else:
            work = functools.partial(self.decoder.from_media, [("request body", body)])
        return await asyncio.to_thread(work) if len(body) > _PARSE_IN_THREAD else work()

    async def read_form(self, headers: Headers, body: bytes) -> list[tuple[str, bytes]]:
        """The files of a ``multipart/form-data`` body, all under the field ``files``, as (name, bytes)."""

        async def stream() -> Any:
            yield body

        # one more than allowed, so a batch too large is told apart from a malformed body
        limit = self.max_batch + 1
        try:
            form = await MultiPartParser(headers, stream(), max_files=limit, max_fields=limit).parse()
        except MultiPartException as exc:
            if exc.message.startswith("Too many"):
                raise RequestError(413, f"too many parts: at most {self.max_batch} inputs per request") from None
            raise RequestError(400, f"malformed multipart body ({exc.message})") from None
        try:
            items = []
            for i, (field, value) in enumerate(form.multi_items()):
                if field != FILES_FIELD:
                    raise RequestError(422, f"unknown form field {field!r}; send the inputs as files under 'files'")
                data = await value.read() if isinstance(value, UploadFile) else value.encode("utf-8")
                items.append((f"files[{i}]", data))
        finally:
            await form.close()
        if not items:
            raise RequestError(422, "the form holds no files; send one or more under 'files'")
        if len(items) > self.max_batch:
            raise RequestError(413, f"batch of {len(items)} inputs is too large: at most {self.max_batch} per request")
        return items

    async def _record(self, call: _Call, status: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Write the ledger line; an answer that cannot be recorded is withheld (503)."""
        try:
            if self.config.fsync == "always":
                await asyncio.to_thread(self.ledger.record, call.entry)
            else:
                self.ledger.record(call.entry)
        except (LedgerError, OSError, ValueError):
            log.exception("ledger write failed for request %s", call.request_id)
            if status == 200:  # withhold answers we could not record
                call.headers["Retry-After"] = "5"
                return 503, {"detail": "the query ledger cannot be written; not answering"}
        return status, payload

    def _refund(self, call: _Call) -> None:
        """Give back the inputs charged to the key for a request that was not answered."""
        if call.charged is not None and self.limiter is not None:
            self.limiter.refund(*call.charged)
            call.headers.pop("X-Budget-Remaining", None)

    def usage(self, key_id: str) -> dict[str, Any]:
        budget = self.limiter.budget if self.limiter is not None else None
        spent = self.limiter.spent(key_id) if self.limiter is not None else 0
        return {
            "key": key_id,
            "queries": spent,
            "budget": budget.describe() if budget else None,
            "remaining": self.limiter.remaining(key_id) if self.limiter is not None else None,
        }

    async def close(self) -> None:
        self.closing = True
        await self.batcher.close()
        if self.limiter is not None:
            self.limiter.close()
        if self.ledger is not None:
            self.ledger.close()
        if self.dawn_records is not None:
            self.dawn_records.close()


def served_modality(oracle: Oracle, modality: str | None = None) -> str:
    """The modality of the served model: ``modality`` when given, else the model's own, else the one whose input
    rank the oracle's shape has (image C×H×W, audio 1×S, text L)."""
    if modality is None:
        modality = getattr(getattr(oracle, "model", None), "modality", None)
    if modality is None:
        by_rank = {rank: name for name, (rank, _) in SHAPES.items()}
        modality = by_rank.get(len(oracle.input_shape or ()))
        if modality is None:
            raise InvalidArgument(
                f"cannot tell the modality of a model taking inputs shaped {tuple(oracle.input_shape or ())}; "
                f"give one of {', '.join(MODALITIES)}"
            )
    if modality not in MODALITIES:
        raise InvalidArgument(f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}")
    return modality


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (400, "malformed request (not JSON, a malformed form, bad Content-Length)"),
        (401, "missing or unknown API key"),
        (413, "request body, batch, image (pixels), clip (bytes or seconds) or text too large"),
        (415, "Content-Type is not one the model's modality takes"),
        (422, "invalid inputs (shape, types, NaN/Inf, range; an undecodable image, clip or text)"),
        (429, "over the rate limit or query budget; see Retry-After"),
        (503, "shutting down, the query ledger cannot be written, or the shared limits store is unreachable"),
    ]
}


def add_error_handlers(app: FastAPI) -> None:
    """Every error as a JSON ``{"detail": ...}``; an unexpected one logged here and answered 500 without details."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(StateUnavailable)
    async def _state(request: Request, exc: StateUnavailable) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the shared store of rate limits and budgets is unreachable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error; the server log has details"}, status_code=500)


_ASSETS = "/docs/assets"


def add_docs_routes(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their scripts, styles and icon served from ``/docs/assets`` (the
    files ``fastapi-offline`` ships): FastAPI's own pages load them from a CDN and stay blank offline."""
    import fastapi_offline

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    title = f"{app.title} {app.version}"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url=f"{_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{_ASSETS}/favicon.png",
            # the validator badge would fetch an image from swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            redoc_js_url=f"{_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
