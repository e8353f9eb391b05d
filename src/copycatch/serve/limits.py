"""Per-key rate limiting (token bucket) and query budgets, counted in inputs, not requests.

A thief's cost is the number of inputs answered, so both limits charge a batch of N inputs N units:

* **rate** — a token bucket per API key: ``rate`` inputs per second refill it, up to ``burst`` inputs;
  a batch needing more tokens than the bucket holds is refused with ``Retry-After`` = the seconds until
  enough tokens have refilled.
* **budget** — at most ``queries`` inputs per key, either over the server's whole life (``"20000"``;
  counts carry over restarts through the ledger) or per fixed calendar window (``"20000/day"``; windows
  are aligned to the Unix epoch, UTC). ``Retry-After`` is the seconds to the next window; a lifetime
  budget never renews and answers :data:`NEVER_RETRY_AFTER` (one year) with a detail saying so.

Refused batches spend nothing. Written for copycatch rather than taken from slowapi/limits: the budget
is a domain object the ledger records anyway (libraries-and-style.md, A6).
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import time
from collections.abc import Callable, Mapping

from ..core.errors import InvalidArgument

NEVER_RETRY_AFTER = 365 * 24 * 3600
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
}
_PERIOD_NAMES = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day", 604800.0: "week"}
_SPEC = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?:/\s*([A-Za-z]+))?\s*$")


def _parse(text: str, what: str, *, default_period: str | None) -> tuple[float, float | None]:
    m = _SPEC.match(str(text))
    if not m:
        raise InvalidArgument(f"{what} {text!r} is not AMOUNT or AMOUNT/PERIOD (e.g. 100/s, 6000/min, 20000/day)")
    amount = float(m.group(1))
    unit = m.group(2) or default_period
    if unit is None:
        return amount, None
    unit = unit.lower()
    period = _PERIODS.get(unit, _PERIODS.get(unit.removesuffix("s")))  # "days", "mins" too
    if period is None:
        raise InvalidArgument(f"{what} {text!r}: unknown period {unit!r}; use s, min, h, day or week")
    return amount, period


@dataclasses.dataclass(frozen=True)
class Rate:
    """``amount`` inputs per ``period`` seconds."""

    amount: float
    period: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Rate:
        amount, period = _parse(text, "rate", default_period="s")
        if amount <= 0:
            raise InvalidArgument(f"rate {text!r} must be positive")
        return cls(amount, period or 1.0)

    @property
    def per_second(self) -> float:
        return self.amount / self.period


@dataclasses.dataclass(frozen=True)
class Budget:
    """At most ``queries`` inputs per key, per ``period`` seconds (``None``: over the server's life)."""

    queries: int
    period: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        amount, period = _parse(text, "budget", default_period=None)
        if amount < 0 or amount != int(amount):
            raise InvalidArgument(f"budget {text!r} must be a whole number of queries >= 0")
        return cls(int(amount), period)

    def window_start(self, wall: float) -> float | None:
        return None if self.period is None else math.floor(wall / self.period) * self.period

    def describe(self) -> str:
        if self.period is None:
            return f"{self.queries} queries in total"
        return f"{self.queries} queries per {_PERIOD_NAMES.get(self.period, f'{self.period:g} s')}"


class TokenBucket:
    """Classic token bucket; ``take`` is all-or-nothing."""

    def __init__(self, per_second: float, burst: float, now: float):
        self.per_second = per_second
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now

    def wait_for(self, n: float, now: float) -> float:
        """Seconds until ``n`` tokens are available (0 when they are now)."""
        self._refill(now)
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.per_second

    def take(self, n: float) -> None:
        self.tokens -= n

    def give(self, n: float) -> None:
        self.tokens = min(self.burst, self.tokens + n)


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0
    reason: str = ""
    budget_remaining: int | None = None
    kind: str = ""  # why refused: budget | rate | burst

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


class QueryLimiter:
    """Rate and budget per key. ``admit(key, n)`` charges on success; ``refund`` undoes a charge whose
    answer was never delivered (a server-side failure)."""

    def __init__(
        self,
        *,
        rate: Rate | None = None,
        burst: int | None = None,
        budget: Budget | None = None,
        spent: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        if burst is not None and burst < 1:
            raise InvalidArgument(f"burst must be >= 1 input, got {burst}")
        if burst is not None and rate is None:
            raise InvalidArgument("burst needs a rate (--rate)")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1.0, rate.per_second) if rate else 0.0)
        self.budget = budget
        self._clock, self._wall = clock, wall
        self._buckets: dict[str, TokenBucket] = {}
        self._window = budget.window_start(wall()) if budget else None
        self._spent: dict[str, int] = dict(spent or {})
        self._lock = threading.Lock()

    # -- budget ----------------------------------------------------------------------------------------------------
    def _roll_window(self) -> None:
        if self.budget is None or self.budget.period is None:
            return
        start = self.budget.window_start(self._wall())
        if start != self._window:
            self._window, self._spent = start, {}

    def spent(self, key: str) -> int:
        with self._lock:
            self._roll_window()
            return self._spent.get(key, 0)

    def remaining(self, key: str) -> int | None:
        if self.budget is None:
            return None
        return max(0, self.budget.queries - self.spent(key))

    def _budget_retry(self) -> float:
        assert self.budget is not None
        if self.budget.period is None:
            return float(NEVER_RETRY_AFTER)
        assert self._window is not None
        return max(1.0, self._window + self.budget.period - self._wall())

    # -- admission -------------------------------------------------------------------------------------------------
    def admit(self, key: str, n: int) -> Decision:
        with self._lock:
            self._roll_window()
            remaining = None
            if self.budget is not None:
                spent = self._spent.get(key, 0)
                remaining = self.budget.queries - spent
                if n > remaining:
                    renew = (
                        "it does not renew"
                        if self.budget.period is None
                        else f"it renews in {math.ceil(self._budget_retry())} s"
                    )
                    return Decision(
                        False,
                        self._budget_retry(),
                        f"query budget exhausted for key {key!r}: {self.budget.describe()}, "
                        f"{max(0, remaining)} left, this batch asks for {n}; {renew}",
                        max(0, remaining),
                        "budget",
                    )
            if self.rate is not None:
                now = self._clock()
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = self._buckets[key] = TokenBucket(self.rate.per_second, self.burst, now)
                if n > self.burst:
                    return Decision(
                        False,
                        1.0,
                        f"batch of {n} inputs exceeds the rate limit's burst of "
                        f"{int(self.burst)}; send smaller batches",
                        remaining,
                        "burst",
                    )
                wait = bucket.wait_for(n, now)
                if wait > 0:
                    return Decision(
                        False,
                        wait,
                        f"rate limit for key {key!r}: {self.rate.amount:g} inputs per "
                        f"{self.rate.period:g} s (burst {int(self.burst)}); retry in {wait:.2f} s",
                        remaining,
                        "rate",
                    )
                bucket.take(n)
            if self.budget is not None:
                self._spent[key] = self._spent.get(key, 0) + n
                remaining = self.budget.queries - self._spent[key]
            return Decision(True, 0.0, "", remaining)

    def quick_reject(self, key: str) -> Decision | None:
        """A refusal decidable before the body is read (spent budget, empty bucket), else ``None``: a flood of
        refused requests then costs no JSON parsing."""
        with self._lock:
            self._roll_window()
            if self.budget is not None and self._spent.get(key, 0) >= self.budget.queries:
                return Decision(
                    False,
                    self._budget_retry(),
                    f"query budget exhausted for key {key!r}: {self.budget.describe()}",
                    0,
                    "budget",
                )
            bucket = self._buckets.get(key)
            if self.rate is not None and bucket is not None:
                wait = bucket.wait_for(1, self._clock())
                if wait > 0:
                    return Decision(
                        False,
                        wait,
                        f"rate limit for key {key!r}: {self.rate.amount:g} inputs per "
                        f"{self.rate.period:g} s; retry in {wait:.2f} s",
                        kind="rate",
                    )
        return None

    def refund(self, key: str, n: int) -> None:
        with self._lock:
            if self.budget is not None:
                self._spent[key] = max(0, self._spent.get(key, 0) - n)
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.give(n)
