"""What ``copycatch serve`` can be told (:class:`ServeConfig`); importable without FastAPI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..core.errors import InvalidArgument
from ..core.params import Params
from .ledger import spent_by_key
from .limits import Budget, QueryLimiter, Rate
from .redis_state import SCHEMES as STATE_SCHEMES
from .redis_state import RedisState, replica_id

OUTPUT_MODES = ("probs", "top-k", "label", "rounded")


@dataclasses.dataclass(frozen=True)
class ServeConfig(Params):
    """Everything ``copycatch serve`` can be told, with its defaults."""

    kind = "serve option"

    output: str = "probs"  # probs | top-k | label | rounded
    top_k: int = 3  # k of the top-k output
    decimals: int = 2  # decimals of the rounded output
    max_batch: int = 256  # inputs per request
    max_body_bytes: int = 32 * 2**20
    # an image's header may claim at most this many pixels (16.8 MP, a phone photo): decoding is the costly part
    max_image_pixels: int = 2**24
    max_clip_seconds: float = 10.0  # longer clips are refused (413); shorter ones are padded or cut to the model's
    max_text_chars: int = 100_000  # per text; the vocabulary cuts the tokens anyway, but tokenising costs
    batch_wait_ms: float = 2.0  # how long a lone request waits for company before its forward pass
    forward_batch: int = 512  # inputs per forward pass (requests are never split)
    rate: str | None = None  # e.g. "100/s": inputs per key per period (token bucket)
    burst: int | None = None  # bucket size in inputs (default: the rate's amount)
    budget: str | None = None  # e.g. "20000" (lifetime) or "20000/day": inputs per key
    ledger: str | None = None  # JSON-lines file; None: no ledger
    ledger_max_bytes: int = 64 * 2**20
    ledger_keep: int | None = None  # rotated ledger files to keep (None: all)
    fsync: str = "interval"  # always | interval | never
    state: str | None = None  # where rate and budget counts live: None, this process; redis://HOST:PORT/DB, shared

    def validate(self) -> None:
        if self.output not in OUTPUT_MODES:
            raise InvalidArgument(f"output mode {self.output!r} is not one of {', '.join(OUTPUT_MODES)}")
        if self.top_k < 1:
            raise InvalidArgument(f"top_k must be >= 1, got {self.top_k}")
        if not 0 <= self.decimals <= 8:
            raise InvalidArgument(f"decimals must be in 0..8, got {self.decimals}")
        if self.max_batch < 1:
            raise InvalidArgument(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_body_bytes < 1024:
            raise InvalidArgument(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_image_pixels < 1:
            raise InvalidArgument(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")
        if not self.max_clip_seconds > 0:
            raise InvalidArgument(f"max_clip_seconds must be > 0, got {self.max_clip_seconds}")
        if self.max_text_chars < 1:
            raise InvalidArgument(f"max_text_chars must be >= 1, got {self.max_text_chars}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise InvalidArgument(f"batch_wait_ms must be in [0, 1000], got {self.batch_wait_ms}")
        if self.forward_batch < 1:
            raise InvalidArgument(f"forward_batch must be >= 1, got {self.forward_batch}")
        if self.fsync not in ("always", "interval", "never"):
            raise InvalidArgument(f"fsync must be always, interval or never, got {self.fsync!r}")
        if self.burst is not None and self.rate is None:
            raise InvalidArgument("burst needs a rate")
        if self.burst is not None and self.burst < 1:
            raise InvalidArgument(f"burst must be >= 1 input, got {self.burst}")
        if self.state is not None:
            if not self.state.startswith(STATE_SCHEMES):
                raise InvalidArgument("state must be a Redis URL: redis://HOST:PORT/DB, rediss://… or unix://…")
            if self.rate is None and self.budget is None:
                raise InvalidArgument("a shared state holds rate limits and budgets: give a rate or a budget too")
        self.parsed_rate()
        self.parsed_budget()

    def parsed_rate(self) -> Rate | None:
        return Rate.parse(self.rate) if self.rate else None

    def parsed_budget(self) -> Budget | None:
        return Budget.parse(self.budget) if self.budget else None

    @property
    def effective_burst(self) -> int | None:
        rate = self.parsed_rate()
        if rate is None:
            return None
        return self.burst if self.burst is not None else max(1, int(np.ceil(rate.amount)))

    @property
    def effective_max_batch(self) -> int:
        """A batch larger than the bucket could never be admitted: advertise and enforce the smaller limit."""
        burst = self.effective_burst
        return min(self.max_batch, burst) if burst is not None else self.max_batch

    def postprocess_spec(self) -> str | None:
        return {
            "probs": None,
            "top-k": f"top-k:k={self.top_k}",
            "label": "hard-label",
            "rounded": f"round:decimals={self.decimals}",
        }[self.output]


def limiter_for(config: ServeConfig, ledger: Path | None) -> QueryLimiter | None:
    """The limiter of a server with ``config``: none without a rate or a budget; counts in this process, or in
    Redis with ``config.state``; started from what ``ledger`` (when there is one) shows answered."""
    budget = config.parsed_budget()
    if not config.rate and budget is None:
        return None
    answered = (lambda since: spent_by_key(ledger, since=since)) if ledger is not None else None
    state = None
    if config.state:
        state = RedisState(config.state, replica=replica_id(ledger) if ledger is not None else None)
    return QueryLimiter(
        rate=config.parsed_rate(), burst=config.effective_burst, budget=budget, answered=answered, state=state
    )
