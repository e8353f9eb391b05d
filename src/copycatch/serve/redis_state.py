"""Rate limits and budgets shared by every replica of a server, in one Redis database (``serve --state redis://``).

Each admission is one Lua script run inside Redis, so it is atomic across replicas: it reads the key's spent inputs
and its token bucket, refuses if either would be overdrawn, and otherwise charges N inputs to both. Refunds and
reads are scripts too. Time comes from Redis (``TIME``), so replicas whose clocks differ still share one bucket and
one budget window. Per API key the database holds two hashes, ``copycatch:budget:<key>`` (``w``: the budget window's
index, ``n``: inputs spent in it) and ``copycatch:bucket:<key>`` (``k``: tokens, ``s``: when they were counted);
windowed budgets and full buckets expire on their own. Give each served model its own database (``/DB``).

Redis is the source of truth; the ledgers are each replica's audit log. They meet only in seeding: each replica
adds what its own ledger shows answered (in the current budget window) to Redis once per Redis data set, then
records its id (kept beside its ledger, ``<ledger>.replica``) in the set ``copycatch:replicas``. So a replica that
restarts adds nothing (Redis already counted its answers), a replica that used to run alone brings its history
in, and when Redis comes back empty (restarted without persistence), every replica re-adds its ledger on its next
request; until then the total lacks the answers of the replicas that have not sent one. Run Redis with persistence
(``appendonly yes``) where lifetime budgets matter, and give every replica the same ``--rate`` and ``--budget``.

If Redis cannot be reached (or answers with an error: loading, read-only, out of memory),
:class:`~copycatch.serve.limits.StateUnavailable` is raised: the server refuses (503,
``Retry-After``) instead of answering queries it could not count. For a second after a failure calls fail at once
(a Redis host that drops packets would otherwise hold every request for the connection timeout); the next call
after that reconnects. An operation that timed out may have been charged in Redis: it is refused all the same, so
an outage can only over-count.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from ..core.errors import CopycatchError, InvalidArgument
from .limits import UNAVAILABLE_RETRY_AFTER, Answered, Charge, Limits, LimitState, StateUnavailable

log = logging.getLogger("copycatch.serve")

SCHEMES = ("redis://", "rediss://", "unix://")
EXTRA_HINT = "pip install 'copycatch[redis]'"
PREFIX = "copycatch:"

# Functions every script starts with. Fractional numbers are returned as strings: Redis would truncate a Lua
# number to an integer.
_FUNCTIONS = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function window(t, period)
  if period > 0 then return math.floor(t / period) end
  return 0
end
local function spent(key, w)
  local s = redis.call('HMGET', key, 'w', 'n')
  if tonumber(s[1]) == w then return tonumber(s[2]) end
  return 0
end
local function store_spent(key, w, n, t, period)
  redis.call('HSET', key, 'w', w, 'n', n)
  if period > 0 then redis.call('PEXPIRE', key, math.ceil(((w + 1) * period - t) * 1000) + 60000) end
end
local function tokens(key, t, rate, burst)
  local b = redis.call('HMGET', key, 'k', 's')
  local k, s = tonumber(b[1]), tonumber(b[2])
  if k == nil then return burst end
  if t > s then k = math.min(burst, k + (t - s) * rate) end
  return k
end
local function store_tokens(key, k, t, rate, burst)
  redis.call('HSET', key, 'k', string.format('%.9f', k), 's', string.format('%.6f', t))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
local function renews(w, t, period)
  if period > 0 then return string.format('%.3f', (w + 1) * period - t) end
  return ''
end
"""

# What admit, peek and refund are given. KEYS: the budget hash, the bucket hash, the set of seeded replicas. ARGV:
# n, budget (-1: none), period in seconds (0: lifetime), rate per second (0: none), burst, replica id ('': nothing
# to seed), and for admit whether to charge ('1') or only to answer as a charge would ('0': peek).
_PRELUDE = (
    _FUNCTIONS
    + """
local n, budget, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rate, burst, replica = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
"""
)

# Replies {status, kind, spent, wait, renews_in}; status 1 charged (or, peeking, would be), 0 refused, -1 this
# replica has not seeded this data set yet.
_ADMIT = (
    _PRELUDE
    + """
local charge = ARGV[7] == '1'
if replica ~= '' and redis.call('SISMEMBER', KEYS[3], replica) == 0 then return {-1} end
local t = clock()
local w = window(t, period)
local used = 0
if budget >= 0 then
  used = spent(KEYS[1], w)
  if used + n > budget then return {0, 'budget', used, '0', renews(w, t, period)} end
end
if rate > 0 then
  local k = tokens(KEYS[2], t, rate, burst)
  if k < n then return {0, 'rate', used, string.format('%.6f', (n - k) / rate), renews(w, t, period)} end
  if charge then store_tokens(KEYS[2], k - n, t, rate, burst) end
end
if charge and budget >= 0 then
  used = used + n
  store_spent(KEYS[1], w, used, t, period)
end
return {1, '', used, '0', renews(w, t, period)}
"""
)

# A charge made before Redis lost its data is not refunded into the new data set (which has not counted it).
_REFUND = (
    _PRELUDE
    + """
if replica ~= '' and redis.call('SISMEMBER', KEYS[3], replica) == 0 then return 0 end
local t = clock()
if budget >= 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  local w = window(t, period)
  store_spent(KEYS[1], w, math.max(0, spent(KEYS[1], w) - n), t, period)
end
if rate > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  store_tokens(KEYS[2], math.min(burst, tokens(KEYS[2], t, rate, burst) + n), t, rate, burst)
end
return 1
"""
)

# KEYS[1]: the set of seeded replicas, KEYS[2..]: budget hashes; ARGV: replica id, period, the window index the
# counts belong to, then one count per budget hash. Replies 1 when the replica is seeded (now or before), 0 when
# the window changed while the ledger was read (read it again).
_SEED = (
    _FUNCTIONS
    + """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
local period, w = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = clock()
if window(t, period) ~= w then return 0 end
for i = 2, #KEYS do
  store_spent(KEYS[i], w, spent(KEYS[i], w) + tonumber(ARGV[i + 2]), t, period)
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""
)


def replica_id(ledger: Path) -> str:
    """This replica's name in the shared state: a random id kept beside its ledger (``<ledger>.replica``), so that
    a restarted replica is known again and its ledger is never added twice. The ledger's lock keeps one server per
    ledger, hence per id."""
    path = ledger.with_name(ledger.name + ".replica")
    text = path.read_text().strip() if path.is_file() else ""
    if not text:
        text = uuid.uuid4().hex
        path.write_text(text + "\n")
    return text


def redacted(url: str) -> str:
    """``url`` without its password, fit for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisState(LimitState):
    """The counts of :class:`~copycatch.serve.limits.QueryLimiter` in the Redis database at ``url``
    (``redis://[:PASSWORD@]HOST:PORT/DB``, ``rediss://`` for TLS, ``unix:///PATH?db=DB``), shared by every replica
    pointed at it. ``replica`` is this replica's id (:func:`replica_id`); without one (no ledger) there is
    nothing to seed. ``connect_timeout`` and ``timeout`` (seconds) bound a call to a Redis that does not answer;
    settings in the URL's query (``?socket_timeout=2``) win over them. After a failure, calls fail at once for
    ``hold`` seconds (the ``Retry-After`` clients are given)."""

    def __init__(
        self,
        url: str,
        *,
        replica: str | None = None,
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
        hold: float = UNAVAILABLE_RETRY_AFTER,
    ):
        if not url.startswith(SCHEMES):
            raise InvalidArgument(f"shared state {redacted(url)!r} is not a Redis URL ({', '.join(SCHEMES)})")
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise CopycatchError(f"a Redis state needs the redis client: {EXTRA_HINT}") from None
        self.where = redacted(url)
        self.replica = replica or ""
        self.hold = hold
        # Any Redis failure (unreachable, loading, read-only replica, out of memory, wrong password) refuses.
        self._errors = redis.RedisError
        # One immediate retry: a pooled connection left over from before a Redis restart fails once, then the
        # retry reconnects; more retries (redis-py's default backs off for seconds) would stall the event loop.
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self._admit, self._refund, self._seed = (self._client.register_script(s) for s in (_ADMIT, _REFUND, _SEED))
        self._down_until = 0.0
        self._down = False

    # -- connection ------------------------------------------------------------------------------------------------
    def _guarded(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``, with any Redis failure raised as :class:`StateUnavailable`; for ``hold`` seconds
        after one, calls fail without trying."""
        if time.monotonic() < self._down_until:
            raise StateUnavailable(f"shared state {self.where} is unavailable")
        try:
            result = call(*args, **kwargs)
        except self._errors as exc:
            self._down_until = time.monotonic() + self.hold
            if not self._down:  # once per outage, not once per refused request
                log.error("shared state %s is unavailable (%s): refusing queries until it answers", self.where, exc)
            self._down = True
            raise StateUnavailable(f"shared state {self.where} is unavailable: {exc}") from None
        if self._down:
            log.warning("shared state %s is back: answering queries again", self.where)
            self._down = False
        return result

    def start(self, limits: Limits, answered: Answered | None) -> None:
        self.limits = limits
        self.answered = answered
        try:  # not _guarded: a server that cannot start has no outage to log
            version = str(self._client.info("server").get("redis_version", "0"))
        except self._errors as exc:
            raise StateUnavailable(f"cannot reach the shared state {self.where}: {exc}") from None
        if int(version.split(".")[0]) < 5:  # TIME inside a script that writes needs Redis 5's effect replication
            raise CopycatchError(f"shared state {self.where} runs Redis {version}; copycatch needs Redis 5 or later")
        if limits.budget is None:
            self.replica = ""  # nothing to seed: there are only token buckets

    # -- keys and arguments ----------------------------------------------------------------------------------------
    def _keys(self, key: str) -> list[str]:
        return [f"{PREFIX}budget:{key}", f"{PREFIX}bucket:{key}", f"{PREFIX}replicas"]

    def _args(self, n: int, *, charge: bool = True) -> list[Any]:
        budget = self.limits.budget
        return [
            n,
            budget.queries if budget is not None else -1,
            (budget.period or 0) if budget is not None else 0,
            self.limits.per_second or 0,
            self.limits.burst,
            self.replica,
            "1" if charge else "0",
        ]

    def _run(self, key: str, n: int, *, charge: bool) -> Any:
        """Run the admit script for ``key``; a replica that has not seeded this data set seeds it and runs it
        again."""
        reply = self._guarded(self._admit, keys=self._keys(key), args=self._args(n, charge=charge))
        if reply[0] == -1:
            self._guarded(self._seed_counts)
            reply = self._guarded(self._admit, keys=self._keys(key), args=self._args(n, charge=charge))
            if reply[0] == -1:
                raise StateUnavailable(f"shared state {self.where} lost its data again while being seeded")
        return reply

    def _seed_counts(self) -> None:
        """Add this replica's ledger counts for the current budget window to Redis, once per Redis data set."""
        budget = self.limits.budget
        assert budget is not None
        period = budget.period or 0
        for _ in range(3):  # a window that turns while the ledger is read: read it again for the new window
            seconds, micros = self._client.time()
            now = seconds + micros / 1e6
            index = math.floor(now / period) if period else 0
            counts = dict(self.answered(budget.window_start(now))) if self.answered is not None else {}
            keys = [f"{PREFIX}replicas"] + [f"{PREFIX}budget:{k}" for k in counts]
            if self._seed(keys=keys, args=[self.replica, period, index, *counts.values()]) == 1:
                log.info("shared state %s: added this replica's ledger (%d keys)", self.where, len(counts))
                return
        raise StateUnavailable(f"shared state {self.where}: the budget window kept turning while seeding")

    @staticmethod
    def _charge(reply: list[Any]) -> Charge:
        status, kind, spent, wait, renews = reply
        return Charge(status == 1, kind, int(spent), float(wait), float(renews) if renews else None)

    # -- the state -------------------------------------------------------------------------------------------------
    def admit(self, key: str, n: int) -> Charge:
        return self._charge(self._run(key, n, charge=True))

    def peek(self, key: str) -> Charge:
        """What admitting one more input would answer, charging nothing."""
        return self._charge(self._run(key, 1, charge=False))

    def refund(self, key: str, n: int) -> None:
        self._guarded(self._refund, keys=self._keys(key), args=self._args(n))

    def close(self) -> None:
        self._client.close()
