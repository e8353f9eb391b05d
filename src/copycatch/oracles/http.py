"""A prediction API over HTTP as an :class:`~copycatch.oracles.base.Oracle`: the client ``steal`` and ``verify`` use.

It speaks copycatch's own serving protocol by default, every field configurable for other JSON APIs; ``protocol``
chooses a serving stack's published format instead (``tfserving``, ``kserve-v1``, ``kserve-v2``, ``torchserve``,
``mlflow``, ``hf``: :mod:`copycatch.oracles.protocols`, where requests go and what each sends and reads, with
``model_name`` for the stacks whose route names the model). Their answers become rows as below: a top-k of
label/score pairs is probabilities when it covers every class, else the top label (a scheme that needs
probabilities then refuses the suspect); with ``output_kind="auto"`` a row that is no probability distribution is
taken for logits. ``returned`` (and :meth:`HttpOracle.describe`) says what the suspect actually answered.

copycatch's protocol (defaults)::

    POST {url}/v1/predict   {"inputs": [N×C×H×W nested lists of floats in [0, 1]]}
                        or  {"images": ["<base64 PNG>", ...]}                    (encoding="png")
        → 200 {"probabilities": [[...], ...]}  or  {"labels": [...]}
    GET  {url}/v1/info      → {"input_shape": [C, H, W], "num_classes": C, "class_names": [...],
                               "output": "probs" | "top-k" | "label" | "rounded"}
    API key in the header X-API-Key; errors are 4xx JSON {"detail": "..."};
    rate or budget limits answer 429 with Retry-After (seconds).

Where the requests go: a bare base URL (``http://host:8000``, with or without a trailing ``/``) gets the default
paths, ``/v1/predict`` and ``/v1/info``. A URL with a path (``http://host:8000/predict``) is the prediction endpoint
itself, used as given; it has an info endpoint only when its path ends with ``/v1/predict`` (copycatch's API, maybe
under a prefix: ``…/v1/info`` is beside it) or when ``info_path`` names one. Without an info endpoint, pass
``num_classes`` (and ``input_shape``) yourself. A ``predict_path`` other than the default is appended to the URL
(an API under a prefix); ``""`` posts to the URL as is. An ``info_path`` other than the default is a full
``http(s)://`` URL, or a path appended to a base URL, or resolved against an endpoint URL like a link (``"/info"``
from the server's root, ``"info"`` beside the endpoint); ``""`` means none.

Other APIs: ``input_field`` (default "inputs" for lists, "images" for PNG), ``input_layout`` ("nchw", "nhwc" or
"flat" rows; default the protocol's, N×C×H×W but for TF-Serving), ``extra_body`` (constant JSON fields),
``headers``, ``api_key_header``, ``output_field`` (a dotted path such as ``"data.scores"``; default:
``probabilities``, else ``labels``, else a bare JSON list) and ``output_kind``:

* ``"auto"``: a 2-D answer is probabilities, a 1-D answer is labels (class indices, class names when
  ``class_names`` are known, Hugging Face's default ``LABEL_<i>``, or digits);
* ``"probs"``, ``"labels"`` (a 2-D answer is reduced to its argmax), or ``"logits"`` (softmax is applied).

Reliability: each request has a ``timeout`` (seconds, per network operation: the standard library's socket timeout);
connection errors, timeouts, 408 and 5xx are retried ``retries`` times with exponential backoff (``backoff`` ×
2^attempt, at most 60 s); 429 waits what ``Retry-After`` says (seconds or an HTTP date; if absent, the backoff), up
to ``max_retry_after`` seconds, else fails at once with the server's wait in the message. Any other 4xx is a
refusal. Each retry is reported before its wait, with its reason (``on_retry``, a callable taking one line; by
default a warning on the ``copycatch.oracles.http`` logger). A ``deadline`` (seconds) bounds how long the suspect
may keep us waiting: it counts every attempt and retry wait on every endpoint since its last answer (or since the
oracle was opened) and cuts each attempt's timeout to the time left; when it ends, or the next retry could not start
before it does, the request fails with :class:`~copycatch.core.errors.SuspectUnresponsive` naming the URL and the
attempts. Time between requests (the caller's own work) is not counted, so a long run that keeps getting answers
never reaches it; without a deadline, a hanging endpoint costs ``retries + 1`` timeouts plus the backoff. Every HTTP
error ends as a :class:`~copycatch.core.errors.SuspectError` naming the URL, the status and a one-line excerpt of
the body (its JSON ``detail``, ``error`` or ``message``, else its first 200 characters); so do non-JSON bodies, NaN,
wrong shapes and unknown labels. A request that timed out may have been answered (and charged) by the server before
it is sent again; a server that keeps a query ledger will count it twice. With a
:class:`~copycatch.verification.transcript.Transcript`, each request's answers are recorded as they arrive, and
recorded answers are replayed instead of re-asked.

Implementation choice: the client uses only the standard library (``urllib``), so the core package can
query an API without the ``serve`` extra. PNG inputs (1 or 3 channels) are encoded by the package's image codec,
the one ``copycatch serve`` decodes with, and are quantised to 1/255.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..core.errors import InvalidArgument, SuspectError, SuspectUnresponsive
from ..data.image_codec import encode_png
from .base import Oracle
from .protocols import DEFAULT_PREDICT_PATH, JSON_TYPE, Answer, HttpProtocol, create_protocol, has_path
from .protocols import endpoints as endpoints  # copycatch's URL rules, documented above

log = logging.getLogger(__name__)

ENCODINGS = ("lists", "png")
OUTPUT_KINDS = ("auto", "probs", "labels", "logits")
_RETRY_STATUS = {408, 500, 502, 503, 504}
_DETAIL_CHARS = 200
_MAX_BACKOFF = 60.0
_HF_DEFAULT_LABEL = re.compile(r"^LABEL_(\d+)$")  # a Hugging Face model's label without an id2label map
_SUM_TOLERANCE = 1e-3  # how far a row of probabilities may sum from 1 (float32 softmax, rounding servers)
_BASE_HEADERS = {
    "Accept": "application/json",
    "User-Agent": "copycatch-http-oracle",
}


def _check_options(
    url: str,
    encoding: str,
    output_kind: str,
    timeout: float,
    retries: int,
    backoff: float,
    max_retry_after: float,
    batch_size: int,
    deadline: float | None,
) -> None:
    """Refuse an :class:`HttpOracle` option that cannot work, before anything is asked."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidArgument(f"not an http(s) URL: {url!r}")
    if encoding not in ENCODINGS:
        raise InvalidArgument(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if output_kind not in OUTPUT_KINDS:
        raise InvalidArgument(f"output_kind must be one of {', '.join(OUTPUT_KINDS)}, got {output_kind!r}")
    if not timeout > 0:
        raise InvalidArgument(f"timeout must be > 0 seconds, got {timeout}")
    if retries < 0 or backoff < 0 or max_retry_after < 0:
        raise InvalidArgument(
            f"retries, backoff and max_retry_after must be >= 0, got {retries}, {backoff}, {max_retry_after}"
        )
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    if deadline is not None and not deadline > 0:
        raise InvalidArgument(f"deadline must be > 0 seconds (or None: no deadline), got {deadline}")


class HttpOracle(Oracle):
    """A remote prediction API; see the module docstring for the protocol and every option."""

    def __init__(
        self,
        url: str,
        *,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        budget: int | None = None,
        api_key: str | None = None,
        api_key_header: str = "X-API-Key",
        headers: Mapping[str, str] | None = None,
        protocol: str | HttpProtocol = "copycatch",
        model_name: str | None = None,
        predict_path: str | None = None,
        info_path: str | None = None,
        input_field: str | None = None,
        encoding: str = "lists",
        input_layout: str | None = None,
        output_field: str | None = None,
        output_kind: str = "auto",
        extra_body: Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_retry_after: float = 300.0,
        batch_size: int = 256,
        deadline: float | None = None,
        on_retry: Callable[[str], None] | None = None,
        transcript: Any = None,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        _check_options(url, encoding, output_kind, timeout, retries, backoff, max_retry_after, batch_size, deadline)
        self.url = url
        if isinstance(protocol, str):
            protocol = create_protocol(
                protocol,
                model_name=model_name,
                input_field=input_field,
                output_field=output_field,
                input_layout=input_layout,
                extra_body=extra_body,
                encoding=encoding,
                predict_path=predict_path,
                info_path=info_path,
                image_encoder=encode_png,
            )
        self.protocol = protocol
        self.predict_url, self.info_url = protocol.endpoints(url)
        self.headers = {**_BASE_HEADERS, **(headers or {})}
        if api_key:
            self.headers[api_key_header] = api_key
        self.requested_output = output_kind
        self.returned: str | None = None  # what the suspect last answered, in words ("top-5 label/score" …)
        self.timeout = float(timeout)
        self.retries, self.backoff, self.max_retry_after = retries, backoff, max_retry_after
        self.batch_size = min(batch_size, protocol.max_batch or batch_size)
        self.transcript, self._sleep = transcript, sleep
        self.deadline = None if deadline is None else float(deadline)
        self._on_retry = on_retry or log.warning
        self._unanswered = 0.0  # seconds spent waiting on the suspect since its last answer
        self.requests = 0
        self.retried = 0
        self.info: dict[str, Any] | None = None
        # asked even when the caller knows the classes and shape: the answer also says the input's name and whether
        # the suspect answers labels (a missing info route is fine then)
        self.info = self._fetch_info(required=num_classes is None)
        info = self.info or {}
        num_classes, input_shape = self._agree_with_info(url, info, num_classes, input_shape)
        super().__init__(num_classes, input_shape, budget=budget, name=name or url.rstrip("/"))
        self.class_names = list(class_names or info.get("class_names") or []) or None
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise InvalidArgument(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if output_kind == "labels" or (output_kind == "auto" and info.get("output") == "label"):
            self.output_kind = "labels"

    def settle_output_kind(self) -> None:
        """Learn whether the suspect answers every class's score before it sees a key input: when neither the
        caller nor the info route said and it has not answered yet, one blank input is asked (one query). A
        scheme that needs scores calls this first, so a top-k or label-only endpoint is refused without having
        been shown, and having spent, any of the key."""
        if self.requested_output != "auto" or self.output_kind == "labels" or self.returned is not None:
            return
        if self.input_shape is None:
            return  # nothing to build a probe from; the first key answer will tell
        self.query(torch.zeros(1, *self.input_shape))

    def _agree_with_info(
        self, url: str, info: dict[str, Any], num_classes: int | None, input_shape: Sequence[int] | None
    ) -> tuple[int, Sequence[int] | None]:
        """The number of classes and input shape: as given, else as ``/v1/info`` says; given ones must agree."""
        if num_classes is not None and isinstance(info.get("num_classes"), int) and info["num_classes"] != num_classes:
            raise InvalidArgument(
                f"{url} says it has {info['num_classes']} classes, but {num_classes} were expected "
                "(the key's model has that many); is this the right API?"
            )
        if input_shape is not None and info.get("input_shape") and list(info["input_shape"]) != list(input_shape):
            raise InvalidArgument(
                f"{url} takes inputs shaped {tuple(info['input_shape'])}, but "
                f"{tuple(input_shape)} were expected (the key's inputs); is this the right API?"
            )
        num_classes = num_classes if num_classes is not None else info.get("num_classes")
        if input_shape is None and info.get("input_shape"):
            input_shape = info["input_shape"]
        if not isinstance(num_classes, int):
            raise SuspectError(f"{self.info_url} gave num_classes={num_classes!r}; pass num_classes explicitly")
        return num_classes, input_shape

    # -- protocol --------------------------------------------------------------------------------------------------
    def _fetch_info(self, *, required: bool) -> dict[str, Any] | None:
        if self.info_url is None:
            if required:
                raise InvalidArgument(self._no_info_message())
            return None
        try:
            info = self._request("GET", self.info_url, None, None)
        except SuspectUnresponsive:  # the deadline is spent: the prediction endpoint would fail at once
            raise
        except SuspectError as exc:
            if required:
                raise SuspectError(
                    f"cannot learn the number of classes from {self.info_url} ({exc}); pass "
                    "num_classes (--num-classes) and input_shape"
                ) from None
            return None
        if not isinstance(info, dict):
            raise SuspectError(f"{self.info_url} answered {type(info).__name__}, expected a JSON object")
        return self.protocol.read_info(info)

    def _no_info_message(self) -> str:
        """Why the number of classes is unknown, and what to pass: names the URL."""
        if self.protocol.name != "copycatch":
            return (
                f"{self.url}: the {self.protocol.title} protocol does not say how many classes the model has: pass "
                "num_classes (--num-classes; a key gives it)"
            )
        if self.predict_url == self.url and has_path(self.url):
            parts = urllib.parse.urlsplit(self.url)
            return (
                f"{self.url} is used as the prediction endpoint itself (the URL has a path), so there is no info "
                "endpoint to learn the number of classes from: pass num_classes (--num-classes) and input_shape, "
                f"or info_path (--info-path) if the API describes itself; for copycatch's own protocol give the "
                f"base URL ({parts.scheme}://{parts.netloc}) or the full {DEFAULT_PREDICT_PATH} URL"
            )
        return (
            f"{self.url}: no info endpoint to learn the number of classes from: pass num_classes (--num-classes) "
            "and input_shape, or info_path (--info-path)"
        )

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        if self.transcript is not None:
            return self.transcript.answer(x, self._ask, chunk=self.batch_size, output_kind=lambda: self.output_kind)
        return torch.cat([self._ask(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def _ask(self, x: torch.Tensor) -> torch.Tensor:
        """One request, answers validated (so only good answers reach a transcript)."""
        data, content_type = self.protocol.body(x.numpy())
        payload = self._request("POST", self.predict_url, data, content_type)
        try:
            answer = self.protocol.parse(payload, len(x))
        except SuspectError as exc:  # the protocol knows the format, the oracle the URL: the message names both
            raise SuspectError(f"{self.predict_url}: {exc}") from None
        return self._check_output(self._rows(answer, len(x)), len(x))

    def _rows(self, answer: Answer, n: int) -> torch.Tensor:
        """N×C rows from an answer: probabilities as they are, logits through softmax, labels one-hot; says what the
        suspect answered in ``returned``."""
        said = None  # a top-k says what it was
        if answer.kind == "ranked":
            answer, said = self._from_ranked(answer)
        if answer.kind == "labels" or self.requested_output == "labels":
            self.output_kind = "labels"
            self.returned = (said or "labels") if answer.kind == "labels" else "scores (argmax taken)"
            return torch.nn.functional.one_hot(self._labels(answer.value, n), self.num_classes).float()
        try:
            out = torch.tensor(np.asarray(answer.value, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise SuspectError(
                f"{self.name} answered {answer.source!r} that is not a matrix of numbers ({exc})"
            ) from None
        if out.ndim != 2:
            raise SuspectError(
                f"{self.name} answered {answer.source!r} of shape {tuple(out.shape)}, "
                f"expected ({n}, {self.num_classes})"
            )
        self.returned = said or "probabilities"
        logits = self.requested_output == "auto" and self.protocol.detects_logits and not _distributions(out)
        if self.requested_output == "logits" or logits:
            self.returned = "logits (softmax applied)"
            out = torch.softmax(out, dim=1)
        return out

    def _from_ranked(self, answer: Answer) -> tuple[Answer, str]:
        """Scores when every row ranks every class, else the top label of each row (a top-k is no distribution);
        and what the suspect answered, in words."""
        rows, top = [], []
        for pairs in answer.value:
            if not pairs:
                raise SuspectError(f"{self.name} answered an empty list of labels and scores")
            index = [self._class_index(label) for label, _ in pairs]
            row = [0.0] * self.num_classes
            for i, (_, score) in zip(index, pairs):
                row[i] = score
            rows.append(row if len(set(index)) == self.num_classes else None)
            top.append(index[max(range(len(pairs)), key=lambda j: pairs[j][1])])
        if all(row is not None for row in rows):
            return Answer("scores", rows, answer.source), f"label/score of all {self.num_classes} classes"
        said = f"top-{'/'.join(str(k) for k in sorted({len(p) for p in answer.value}))} label/score"
        if self.requested_output in ("probs", "logits"):
            raise SuspectError(
                f"{self.name} answers only the {said} of {self.num_classes} classes; output_kind="
                f"{self.requested_output!r} needs every class's score (output_kind 'labels' reads its top labels)"
            )
        return Answer("labels", top, answer.source), said

    def _labels(self, value: Any, n: int) -> torch.Tensor:
        if not isinstance(value, list) or len(value) != n:
            got = len(value) if isinstance(value, list) else type(value).__name__
            raise SuspectError(f"{self.name} answered {got} labels for {n} inputs")
        if value and isinstance(value[0], list):  # one row of scores per input: take the argmax
            try:
                return torch.tensor(np.asarray(value, dtype=np.float32)).argmax(dim=1)
            except (TypeError, ValueError):
                raise SuspectError(f"{self.name} answered label rows that are not numbers") from None
        return torch.tensor([self._class_index(v) for v in value], dtype=torch.long)

    def _class_index(self, label: Any) -> int:
        """A label's class: an index, a known class name, Hugging Face's default ``LABEL_<i>``, or digits."""
        if isinstance(label, str):
            if self.class_names and label in self.class_names:
                return self.class_names.index(label)
            match = _HF_DEFAULT_LABEL.match(label)
            if match or label.strip().isdigit():
                label = int(match[1] if match else label)
            else:
                known = f" (known: {', '.join(self.class_names[:10])})" if self.class_names else ""
                raise SuspectError(
                    f"{self.name} answered the label {label!r}, which is not a known class name{known}; pass the "
                    "model's class_names, in class order"
                )
        elif isinstance(label, (int, float)) and not isinstance(label, bool) and math.isfinite(label):
            if not float(label).is_integer():
                raise SuspectError(f"{self.name} answered the label {label!r}; expected a class index or name")
            label = int(label)
        else:
            raise SuspectError(f"{self.name} answered the label {label!r}; expected a class index or name")
        if not 0 <= label < self.num_classes:
            raise SuspectError(f"{self.name} answered labels outside 0..{self.num_classes - 1} ({label})")
        return label

    # -- transport -------------------------------------------------------------------------------------------------
    def _request(self, method: str, url: str, data: bytes | None, content_type: str | None = JSON_TYPE) -> Any:
        """The decoded JSON answer of one request, retried as the module docstring says; the time it kept us
        waiting counts against the deadline until the suspect answers."""
        headers = self.headers if content_type is None else {**self.headers, "Content-Type": content_type}
        started = time.monotonic()
        try:
            payload = self._with_retries(method, url, data, headers, started)
        except BaseException:
            self._unanswered += time.monotonic() - started
            raise
        self._unanswered = 0.0
        return payload

    def _time_left(self, started: float) -> float | None:
        """Seconds left before the deadline, for a request started at ``started``; None without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline - self._unanswered - (time.monotonic() - started)

    def _with_retries(
        self, method: str, url: str, data: bytes | None, headers: Mapping[str, str], started: float
    ) -> Any:
        attempt = 0
        while True:
            left = self._time_left(started)
            self.requests += 1
            # never past the deadline, and still > 0 when it is a hair away (a socket timeout of 0 means "don't wait")
            timeout = self.timeout if left is None else max(min(self.timeout, left), 0.001)
            payload, failure, wait = self._try_once(method, url, data, headers, attempt, timeout)
            if failure is None:
                return payload
            left = self._time_left(started)
            # the deadline decides first: at its end (or with no time for the next wait) the failure is the silence
            if left is not None and (left <= 0 or (wait >= left and attempt < self.retries)):
                raise SuspectUnresponsive(
                    f"{url} gave no answer within the deadline of {self.deadline:g} s ({attempt + 1} attempt"
                    f"{'s' if attempt else ''}; last: {failure})"
                )
            if attempt >= self.retries:
                raise SuspectError(f"{url}: {failure}; gave up after {attempt + 1} attempts")
            attempt += 1
            self.retried += 1
            until = "" if left is None else f", {left:.3g} s left before the deadline"
            self._on_retry(f"{url}: {failure}; retry {attempt} of {self.retries} in {wait:.1f} s{until}")
            self._sleep(wait)

    def _try_once(
        self, method: str, url: str, data: bytes | None, headers: Mapping[str, str], attempt: int, timeout: float
    ) -> tuple[Any, str | None, float]:
        """(decoded JSON, None, 0) on success; (None, reason, seconds to wait) when worth retrying; raises otherwise."""
        delay = min(_MAX_BACKOFF, self.backoff * 2**attempt)
        request = urllib.request.Request(url, data=data, headers=dict(headers), method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code == 429:
                retry_after = _retry_after(exc.headers.get("Retry-After"))
                wait = delay if retry_after is None else retry_after
                if wait > self.max_retry_after:
                    raise SuspectError(
                        f"{url}: rate-limited (HTTP 429{detail}); the server asks to wait {wait:.0f} s, "
                        f"more than max_retry_after={self.max_retry_after:g} s; resume later"
                    ) from None
                return None, f"rate-limited (HTTP 429{detail})", wait
            if exc.code in _RETRY_STATUS:
                return None, f"HTTP {exc.code}{detail}", delay
            hint = ""
            if exc.code in (401, 403):
                hint = " (check the API key)"
            elif exc.code in (404, 405):
                hint = f" ({self.protocol.not_found_hint()})"
            raise SuspectError(f"{url} refused the query: HTTP {exc.code}{detail}{hint}") from None
        except TimeoutError:
            return None, f"no answer within {timeout:.3g} s (timeout)", delay
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                return None, f"no answer within {timeout:.3g} s (timeout)", delay
            return None, f"cannot connect ({reason})", delay
        except (ConnectionError, http.client.HTTPException) as exc:
            return None, f"connection failed ({type(exc).__name__}: {exc})", delay
        try:
            return json.loads(raw), None, 0.0
        except (json.JSONDecodeError, UnicodeDecodeError):
            snippet = raw[:80].decode("utf-8", "replace")
            raise SuspectError(f"{url} answered something that is not JSON: {snippet!r}") from None

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            {
                "url": self.predict_url,
                "protocol": self.protocol.name,
                "returned": self.returned,
                "encoding": self.protocol.encoding,
                "input_field": self.protocol.input_field,
                "output_field": self.protocol.output_field,
                "requests": self.requests,
                "retried": self.retried,
            }
        )
        return d


def _distributions(out: torch.Tensor) -> bool:
    """Whether every row is a probability distribution (else, to ``output_kind="auto"``, the rows are logits)."""
    return bool((out >= 0).all() and ((out.sum(dim=1) - 1).abs() <= _SUM_TOLERANCE).all())


def _detail(exc: urllib.error.HTTPError) -> str:
    """``": <excerpt>"`` of an error answer's body, or ``""`` when it has none worth showing."""
    try:
        body = exc.read(64_000)
    except Exception:  # the body is only for the message; a broken one must not hide the status
        return ""
    excerpt = body_excerpt(body)
    return f": {excerpt}" if excerpt else ""


def body_excerpt(body: bytes, limit: int = _DETAIL_CHARS) -> str:
    """One line from an error answer: its JSON ``detail``/``error``/``message`` field, else the start of its text."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    value: Any = text
    if isinstance(parsed, dict):
        for field in ("detail", "error", "message"):
            found = parsed.get(field)
            if isinstance(found, dict) and isinstance(found.get("message"), str):  # {"error": {"message": ...}}
                found = found["message"]
            if found not in (None, "", [], {}):
                value = found
                break
    if not isinstance(value, str):  # e.g. FastAPI's validation errors: a list of objects
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
