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

The policy (:class:`QueryLimiter`: what is refused and what the refusal says) is kept apart from where the
counts live (a :class:`LimitState`): :class:`LocalState`, this process's memory (the default), or
:class:`~copycatch.serve.redis_state.RedisState`, one Redis database shared by every replica of the server, so
that N replicas never grant more than one budget. A state that cannot be reached makes the limiter refuse
(kind ``"unavailable"``, answered 503) rather than answer queries nobody counted.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping

from ..core.errors import CopycatchError, InvalidArgument

log = logging.getLogger("copycatch.serve")

NEVER_RETRY_AFTER = 365 * 24 * 3600
UNAVAILABLE_RETRY_AFTER = 1.0  # seconds a client waits when the shared state is unreachable
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
    kind: str = ""  # why refused: budget | rate | burst | unavailable (the shared state cannot be reached)

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


# ---------------------------------------------------------------------------------------------------------------------
# where the counts live
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a :class:`QueryLimiter` enforces, as its state needs it."""

    per_second: float | None  # token bucket refill in inputs per second (None: no rate limit)
    burst: float  # bucket size in inputs
    budget: Budget | None


@dataclasses.dataclass(frozen=True)
class Charge:
    """A state's answer about one key: whether the inputs were charged, and the counts a refusal is explained with."""

    allowed: bool
    kind: str = ""  # why refused: budget | rate
    spent: int = 0  # inputs charged to the key in the current budget window, this charge included
    wait: float = 0.0  # a rate refusal: seconds until enough tokens have refilled
    renews_in: float | None = None  # seconds until the budget window renews (None: a lifetime budget, or none)


class StateUnavailable(CopycatchError):
    """The shared state of the limits cannot be reached: nothing can be charged, so nothing may be answered."""


Answered = Callable[[float | None], Mapping[str, int]]
"""Inputs already answered per key since a Unix time (``None``: ever): the ledger's counts, which seed a state."""


class LimitState(abc.ABC):
    """Where a :class:`QueryLimiter`'s counts live: spent inputs per key and budget window, a token bucket per key.

    Each of ``admit``, ``peek`` and ``refund`` is one atomic step on one key; a state that cannot reach its store
    raises :class:`StateUnavailable`.
    """

    limits: Limits

    @abc.abstractmethod
    def start(self, limits: Limits, answered: Answered | None) -> None:
        """Take the limits to enforce and the ledger's counts to start from (budgets survive a restart)."""

    @abc.abstractmethod
    def admit(self, key: str, n: int) -> Charge:
        """Check the budget, then the token bucket, and charge ``n`` inputs to both only if both allow them."""

    @abc.abstractmethod
    def peek(self, key: str) -> Charge:
        """The key's spent inputs, charging nothing; ``allowed`` says whether one more input would pass."""

    @abc.abstractmethod
    def refund(self, key: str, n: int) -> None:
        """Give back ``n`` inputs charged for an answer that was never delivered."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the state holds open."""


class LocalState(LimitState):
    """The counts in this process's memory, the default: budget windows follow ``wall``, buckets refill by
    ``clock``. Replicas with a local state each grant the whole budget."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self._clock, self._wall = clock, wall
        self._buckets: dict[str, TokenBucket] = {}
        self._window: float | None = None
        self._spent: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, limits: Limits, answered: Answered | None) -> None:
        self.limits = limits
        with self._lock:
            self._window = limits.budget.window_start(self._wall()) if limits.budget else None
            if answered is not None and limits.budget is not None:
                self._spent = dict(answered(self._window))

    def _roll_window(self) -> None:
        budget = self.limits.budget
        if budget is None or budget.period is None:
            return
        start = budget.window_start(self._wall())
        if start != self._window:
            self._window, self._spent = start, {}

    def _renews_in(self) -> float | None:
        budget = self.limits.budget
        if budget is None or budget.period is None or self._window is None:
            return None
        return self._window + budget.period - self._wall()

    def admit(self, key: str, n: int) -> Charge:
        budget, per_second = self.limits.budget, self.limits.per_second
        with self._lock:
            self._roll_window()
            spent = self._spent.get(key, 0)
            if budget is not None and spent + n > budget.queries:
                return Charge(False, "budget", spent, renews_in=self._renews_in())
            if per_second is not None:
                now = self._clock()
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = self._buckets[key] = TokenBucket(per_second, self.limits.burst, now)
                wait = bucket.wait_for(n, now)
                if wait > 0:
                    return Charge(False, "rate", spent, wait, self._renews_in())
                bucket.take(n)
            if budget is not None:
                spent = self._spent[key] = spent + n
            return Charge(True, "", spent, renews_in=self._renews_in())

    def peek(self, key: str) -> Charge:
        budget = self.limits.budget
        with self._lock:
            self._roll_window()
            spent = self._spent.get(key, 0)
            if budget is not None and spent >= budget.queries:
                return Charge(False, "budget", spent, renews_in=self._renews_in())
            bucket = self._buckets.get(key)
            if bucket is not None:
                wait = bucket.wait_for(1, self._clock())
                if wait > 0:
                    return Charge(False, "rate", spent, wait, self._renews_in())
            return Charge(True, "", spent, renews_in=self._renews_in())

    def refund(self, key: str, n: int) -> None:
        with self._lock:
            if self.limits.budget is not None:
                self._spent[key] = max(0, self._spent.get(key, 0) - n)
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.give(n)

    def close(self) -> None:
        """Nothing to release: the counts end with the process."""


# ---------------------------------------------------------------------------------------------------------------------
# the policy
# ---------------------------------------------------------------------------------------------------------------------


class QueryLimiter:
    """Rate and budget per key. ``admit(key, n)`` charges on success; ``refund`` undoes a charge whose
    answer was never delivered (a server-side failure).

    The counts live in ``state`` (default: a :class:`LocalState` on ``clock`` and ``wall``), which starts from
    ``answered`` (the ledger's counts). When the state cannot be reached every query is refused with kind
    ``"unavailable"``; the state reconnects on a later call.
    """

    def __init__(
        self,
        *,
        rate: Rate | None = None,
        burst: int | None = None,
        budget: Budget | None = None,
        answered: Answered | None = None,
        state: LimitState | None = None,
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
        self.state = state if state is not None else LocalState(clock=clock, wall=wall)
        self.state.start(Limits(rate.per_second if rate else None, self.burst, budget), answered)

    def spent(self, key: str) -> int:
        """Inputs charged to ``key`` in the current budget window; raises :class:`StateUnavailable`."""
        return self.state.peek(key).spent

    def remaining(self, key: str) -> int | None:
        if self.budget is None:
            return None
        return max(0, self.budget.queries - self.spent(key))

    @staticmethod
    def _budget_retry(charge: Charge) -> float:
        return float(NEVER_RETRY_AFTER) if charge.renews_in is None else max(1.0, charge.renews_in)

    @staticmethod
    def _unavailable() -> Decision:
        return Decision(
            False,
            UNAVAILABLE_RETRY_AFTER,
            "the server cannot reach the shared store of its rate limits and budgets, and answers no query it "
            "cannot count; retry shortly",
            kind="unavailable",
        )

    def admit(self, key: str, n: int) -> Decision:
        if self.rate is not None and n > self.burst:  # can never pass, whatever the counts say
            return Decision(
                False,
                1.0,
                f"batch of {n} inputs exceeds the rate limit's burst of {int(self.burst)}; send smaller batches",
                kind="burst",
            )
        try:
            charge = self.state.admit(key, n)
        except StateUnavailable:
            return self._unavailable()
        remaining = None if self.budget is None else max(0, self.budget.queries - charge.spent)
        if charge.allowed:
            return Decision(True, 0.0, "", remaining)
        if charge.kind == "budget":
            assert self.budget is not None
            retry = self._budget_retry(charge)
            renew = "it does not renew" if charge.renews_in is None else f"it renews in {math.ceil(retry)} s"
            return Decision(
                False,
                retry,
                f"query budget exhausted for key {key!r}: {self.budget.describe()}, "
                f"{remaining} left, this batch asks for {n}; {renew}",
                remaining,
                "budget",
            )
        assert self.rate is not None
        return Decision(
            False,
            charge.wait,
            f"rate limit for key {key!r}: {self.rate.amount:g} inputs per "
            f"{self.rate.period:g} s (burst {int(self.burst)}); retry in {charge.wait:.2f} s",
            remaining,
            "rate",
        )

    def quick_reject(self, key: str) -> Decision | None:
        """A refusal decidable before the body is read (spent budget, empty bucket, unreachable state), else
        ``None``: a flood of refused requests then costs no JSON parsing."""
        try:
            charge = self.state.peek(key)
        except StateUnavailable:
            return self._unavailable()
        if charge.allowed:
            return None
        if charge.kind == "budget":
            assert self.budget is not None
            return Decision(
                False,
                self._budget_retry(charge),
                f"query budget exhausted for key {key!r}: {self.budget.describe()}",
                0,
                "budget",
            )
        assert self.rate is not None
        return Decision(
            False,
            charge.wait,
            f"rate limit for key {key!r}: {self.rate.amount:g} inputs per "
            f"{self.rate.period:g} s; retry in {charge.wait:.2f} s",
            kind="rate",
        )

    def refund(self, key: str, n: int) -> None:
        try:
            self.state.refund(key, n)
        except StateUnavailable:  # the key stays charged: an over-count never grants a query
            log.warning("cannot refund %d inputs to key %r: the shared limits state is unreachable", n, key)

    def close(self) -> None:
        self.state.close()
