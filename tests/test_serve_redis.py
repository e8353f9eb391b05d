"""Rate limits and budgets shared by replicas through a real Redis (`copycatch serve --state redis://...`).

Each test module run starts its own `redis-server` on a free port, without persistence, so stopping it loses every
count: the outage test checks that the replicas put their ledgers back when it returns. Skipped where Debian's
`redis-server` is not installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import copycatch as cc
from copycatch.cli.main import main
from copycatch.serve import ServeConfig, create_app, new_key, read_ledger
from copycatch.serve.limits import Budget, LimitState, LocalState, QueryLimiter, Rate, StateUnavailable

redis = pytest.importorskip("redis", reason="the redis client is missing: pip install 'copycatch[redis]'")
from copycatch.serve.redis_state import RedisState  # noqa: E402  (needs the client checked above)

BUDGET = 1000
CLIENTS = 40
TINY_MODEL = """
import numpy as np

def predict(batch):
    scores = batch.reshape(len(batch), -1)[:, :4].astype(np.float64) + 1e-3
    return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throw-away `redis-server` in ``folder``, on one port across restarts, keeping nothing on disk."""

    def __init__(self, binary: str, folder: Path):
        self.binary, self.folder, self.port = binary, folder, _free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = open(self.folder / "redis.log", "a")  # noqa: SIM115  (the server process owns it)
        self.proc = subprocess.Popen([*command, "--dir", str(self.folder)], stdout=log, stderr=log)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    text = (self.folder / "redis.log").read_text()
                    raise AssertionError(f"redis-server did not start:\n{text}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    if server.proc.poll() is None:
        server.stop()


# ---------------------------------------------------------------------------------------------------------------------
# the state itself
# ---------------------------------------------------------------------------------------------------------------------


def test_redis_state_charges_refunds_and_seeds_from_the_ledger_once(redis_server):
    ledger_counts = {"alice": 30}
    limiter = QueryLimiter(
        budget=Budget.parse("100"),
        answered=lambda since: ledger_counts,
        state=RedisState(redis_server.url(1), replica="replica-a"),
    )
    assert limiter.spent("alice") == 30  # this replica's ledger, added on first use
    assert limiter.admit("alice", 60).budget_remaining == 10
    refused = limiter.admit("alice", 11)
    assert not refused.allowed and refused.kind == "budget" and refused.budget_remaining == 10
    assert "does not renew" in refused.reason and refused.retry_after_header == "31536000"
    limiter.refund("alice", 60)
    assert limiter.remaining("alice") == 70
    # a restarted replica (same id) is already counted; another replica adds its own ledger once
    again = QueryLimiter(
        budget=Budget.parse("100"),
        answered=lambda since: {"alice": 90},
        state=RedisState(redis_server.url(1), replica="replica-a"),
    )
    assert again.spent("alice") == 30
    other = QueryLimiter(
        budget=Budget.parse("100"),
        answered=lambda since: {"alice": 5},
        state=RedisState(redis_server.url(1), replica="replica-b"),
    )
    assert other.spent("alice") == 35 and limiter.spent("alice") == 35
    # Redis loses its data: each replica puts its ledger back on its next call
    redis.Redis(port=redis_server.port, db=1).flushdb()
    assert limiter.spent("alice") == 30 and other.spent("alice") == 35
    windowed = QueryLimiter(budget=Budget.parse("50/day"), state=RedisState(redis_server.url(1)))
    assert windowed.admit("bob", 50).allowed
    daily = windowed.admit("bob", 1)
    assert daily.kind == "budget" and 0 < daily.retry_after <= 86400 and "renews in" in daily.reason


def test_replicas_share_one_token_bucket(redis_server):
    """Two limiters on one Redis database draw from one bucket: at most burst + rate × elapsed inputs pass, where
    two in-process limiters pass twice that."""

    def granted(first: QueryLimiter, second: QueryLimiter) -> tuple[int, float]:
        count, started = 0, time.monotonic()
        while time.monotonic() - started < 0.6:
            count += first.admit("k", 1).allowed + second.admit("k", 1).allowed
        return count, time.monotonic() - started

    def limiter(state: LimitState) -> QueryLimiter:
        return QueryLimiter(rate=Rate.parse("50/s"), burst=20, state=state)

    shared, elapsed = granted(limiter(RedisState(redis_server.url(2))), limiter(RedisState(redis_server.url(2))))
    assert 20 <= shared <= 20 + 50 * elapsed + 1
    local, _ = granted(limiter(LocalState()), limiter(LocalState()))
    assert local >= 2 * (20 + 50 * 0.6) - 2 and local > shared + 20


def test_an_unreachable_redis_stops_the_server_from_starting():
    closed = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    model = cc.create_model("mlp", (1, 4, 4), 4, seed=0)
    with pytest.raises(StateUnavailable, match="cannot reach the shared state") as refused:
        create_app(model, ServeConfig(budget="5", state=closed))
    assert "hunter2" not in str(refused.value) and ":***@" in str(refused.value)


# ---------------------------------------------------------------------------------------------------------------------
# two `copycatch serve` processes behind one budget
# ---------------------------------------------------------------------------------------------------------------------


class Cluster:
    """Two `copycatch serve` replicas of one tiny model, sharing a lifetime budget of BUDGET inputs per key in
    Redis, each with its own ledger."""

    def __init__(self, folder: Path, redis_server: RedisServer):
        self.folder, self.redis = folder, redis_server
        (folder / "tinymodel.py").write_text(TINY_MODEL)
        keys = folder / "keys.txt"
        self.secrets = {who: new_key(keys, who) for who in ("thief", "mallory")}
        self.ledgers = [folder / f"replica-{i}" / "ledger.jsonl" for i in range(2)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}
        self.procs = []
        for i, ledger in enumerate(self.ledgers):
            out = open(folder / f"replica-{i}.out", "w")  # noqa: SIM115  (the server process owns it)
            command = [sys.executable, "-m", "copycatch.cli.main", "serve", "tinymodel:predict"]
            command += ["--input-shape", "1,4,4", "--num-classes", "4", "--api-keys", str(keys)]
            command += ["--budget", str(BUDGET), "--state", redis_server.url(0), "--ledger", str(ledger)]
            command += ["--batch-wait-ms", "0", "--port", "0", "--log-level", "warning", "--no-access-log"]
            self.procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder))
        self.urls = [self._url(i) for i in range(2)]

    def _url(self, i: int) -> str:
        deadline = time.monotonic() + 90
        path = self.folder / f"replica-{i}.out"
        while time.monotonic() < deadline and self.procs[i].poll() is None:
            for line in path.read_text().splitlines():
                if line.startswith("serving on "):
                    return line.split()[2]
            time.sleep(0.1)
        self.close()
        raise AssertionError(f"replica {i} did not start:\n{path.read_text()}")

    def answered(self, key: str) -> list[int]:
        """Inputs each replica's ledger shows answered to ``key``."""
        return [
            sum(e["n"] for e in read_ledger(ledger).entries if e["status"] == 200 and e["key"] == key)
            for ledger in self.ledgers
        ]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory) -> Iterator[Cluster]:
    replicas = Cluster(tmp_path_factory.mktemp("cluster"), redis_server)
    yield replicas
    replicas.close()


Reply = tuple[float, int, int, httpx.Headers, str]  # when it arrived, status, inputs, headers, detail


async def _flood(urls: list[str], secret: str, on_reply: Callable[[Reply], None] | None = None) -> list[Reply]:
    """CLIENTS concurrent clients, alternating between the replicas, each sending batches of 1-8 inputs until its
    key's budget is spent (a 429 that says so); a 503 is retried 50 ms later."""
    inputs = [[[[0.5] * 4] * 4]]
    replies: list[Reply] = []

    async def client(i: int, http: httpx.AsyncClient) -> None:
        url, n = urls[i % len(urls)] + "/v1/predict", 1 + i % 8
        while True:
            r = await http.post(url, json={"inputs": inputs * n}, headers={"X-API-Key": secret})
            detail = r.json().get("detail", "") if r.status_code != 200 else ""
            reply = (time.monotonic(), r.status_code, n, r.headers, detail)
            replies.append(reply)
            if on_reply is not None:
                on_reply(reply)
            if r.status_code == 503:
                await asyncio.sleep(0.05)
            elif r.status_code != 200:
                return

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(CLIENTS)))
    return replies


def test_two_serve_processes_grant_one_budget_between_them(cluster, capsys):
    replies = asyncio.run(_flood(cluster.urls, cluster.secrets["thief"]))
    answered = sum(n for _, status, n, _, _ in replies if status == 200)
    refusals = [(status, detail) for _, status, _, _, detail in replies if status != 200]
    assert answered == BUDGET  # one budget, not one per replica (the 1-input clients use up the last inputs)
    assert len(refusals) == CLIENTS and all(s == 429 and "budget exhausted" in d for s, d in refusals)
    per_replica = cluster.answered("thief")
    assert sum(per_replica) == BUDGET and min(per_replica) > 0  # both replicas answered; their ledgers agree
    assert main(["ledger", *map(str, cluster.ledgers), "--key", "thief"]) == 0
    out = capsys.readouterr().out
    assert "2 ledgers merged in time order" in out
    assert next(line for line in out.splitlines() if line.startswith("thief")).split()[3] == str(BUDGET)


def test_redis_stopped_mid_run_refuses_then_resumes_within_the_budget(cluster):
    """Redis stops after 300 inputs: the replicas answer 503, never a free answer; it comes back empty, and the
    replicas put their ledgers back, so the key still gets one budget in all."""
    answered, outage = [0], {}
    mallory = {"X-API-Key": cluster.secrets["mallory"]}

    def on_reply(reply: Reply) -> None:
        if reply[1] == 200:
            answered[0] += reply[2]
        if answered[0] >= 300 and "stopped" not in outage:
            outage["stopped"] = None  # claimed: the controller stops Redis

    async def run() -> list[Reply]:
        async def controller() -> None:
            while "stopped" not in outage:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(cluster.redis.stop)
            outage["stopped"] = time.monotonic()
            async with httpx.AsyncClient(timeout=30) as http:
                outage["usage"] = await http.get(cluster.urls[1] + "/v1/usage", headers=mallory)
            await asyncio.sleep(1.5)
            outage["restarting"] = time.monotonic()
            await asyncio.to_thread(cluster.redis.start)

        flood = asyncio.create_task(_flood(cluster.urls, cluster.secrets["mallory"], on_reply))
        await controller()
        return await flood

    replies = asyncio.run(run())
    statuses = {status for _, status, _, _, _ in replies}
    assert statuses == {200, 429, 503}
    down = [r for r in replies if outage["stopped"] + 0.2 < r[0] < outage["restarting"]]
    assert down and all(status == 503 for _, status, _, _, _ in down)  # no answer while nothing could count it
    _, _, _, headers, detail = down[0]
    assert int(headers["Retry-After"]) >= 1 and "shared store" in detail
    assert outage["usage"].status_code == 503 and outage["usage"].headers["Retry-After"] == "1"
    assert any(status == 200 for when, status, *_ in replies if when > outage["restarting"])  # resumed
    assert sum(cluster.answered("mallory")) == sum(n for _, status, n, _, _ in replies if status == 200) == BUDGET
    usage = httpx.get(cluster.urls[0] + "/v1/usage", headers=mallory).json()
    assert usage["queries"] == BUDGET and usage["remaining"] == 0
