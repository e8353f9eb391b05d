"""Gather concurrent requests into one forward pass.

Requests put their (already validated) inputs on an asyncio queue. One task takes the first waiting
request, waits at most ``max_wait`` seconds for company when nobody else is queued, then takes every
queued request that still fits in ``max_batch`` inputs, answers them with one call in a single worker
thread (so the event loop keeps accepting and parsing requests meanwhile, and the model is never run by
two threads at once) and hands each request its own rows. Under load, requests that arrive during a
forward pass form the next batch without any waiting.

Answers are row-wise (post-processors and protections must be, see :mod:`copycatch.oracles.postprocess`), so a
request's answer does not depend on which other requests shared its batch, up to float rounding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

log = logging.getLogger("copycatch.serve")


class ShuttingDown(Exception):
    """The batcher stopped accepting work."""


class Batcher:
    def __init__(self, answer: Callable[[torch.Tensor], Any], *, max_batch: int = 512, max_wait: float = 0.002):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}")
        self.answer = answer
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future[Any]] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._carry: tuple[torch.Tensor, asyncio.Future[Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        # Statistics, for /healthz and the benchmark: forward passes run and inputs answered.
        self.batches = 0
        self.inputs = 0

    def _start(self) -> None:
        # Created on first use inside the running loop (the app may be built outside any loop, and a test client
        # may run each request in a loop of its own).
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._carry = None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copycatch-forward")
        self._task = self._loop.create_task(self._run(), name="copycatch-batcher")

    async def submit(self, x: torch.Tensor) -> Any:
        """Answer ``x`` (N×…) as part of a batch; returns this request's rows of the answer."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if len(x) > self.max_batch:
            raise ValueError(f"a request of {len(x)} inputs exceeds the batcher's max_batch={self.max_batch}")
        if self._task is None or self._task.done() or self._loop is not asyncio.get_running_loop():
            if self._task is not None and self._task.done():
                log.error("batcher task had stopped; restarting it")
            self._start()
        assert self._queue is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _next_batch(self) -> list[tuple[torch.Tensor, asyncio.Future[Any]]] | None:
        assert self._queue is not None
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        if first is None:
            return None
        items, total = [first], len(first[0])
        if self.max_wait > 0 and self._queue.empty() and total < self.max_batch:
            await asyncio.sleep(self.max_wait)
        while total < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is None:  # shutdown sentinel: answer what we hold, then stop
                self._queue.put_nowait(None)
                break
            if total + len(item[0]) > self.max_batch:
                self._carry = item
                break
            items.append(item)
            total += len(item[0])
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._next_batch()
            if items is None:
                return
            live = [(x, f) for x, f in items if not f.cancelled()]  # the client went away: do not compute
            if not live:
                continue
            x = torch.cat([x for x, _ in live]) if len(live) > 1 else live[0][0]
            try:
                out = await loop.run_in_executor(self._executor, self.answer, x)
            except Exception as exc:  # reported to every request of the batch; the batcher lives on
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.inputs += len(x)
            start = 0
            for xi, future in live:
                if not future.done():
                    future.set_result(out[start : start + len(xi)])
                start += len(xi)

    async def close(self) -> None:
        """Stop accepting work, answer everything already queued, then stop the worker thread."""
        self._closing = True
        if self._task is not None and self._queue is not None and not self._task.done():
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
