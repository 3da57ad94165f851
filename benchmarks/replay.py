"""A :class:`dask_kaas.sim.Workload` replayed on a live cluster by an asynchronous client, as the
simulator replays it: open-loop calls submitted at their times, each closed-loop client keeping its
own calls in flight (the next call sent as each result arrives), policy switches at their times;
every result checked against its expected value."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np


class LiveRun:
    """One replay of a workload on the live cluster: per call its submission time and latency."""

    def __init__(self, workload, requests: list, xs: list, expected: list, switches: list, set_policy_at):
        self.workload, self.requests, self.xs, self.expected = workload, requests, xs, expected
        self.switches, self.set_policy_at = switches, set_policy_at
        n = len(workload)
        self.latency = np.full(n, np.nan)
        self.submitted = np.zeros(n)
        self.errors: list = []

    async def run(self, address: str) -> float:
        from distributed import Client

        async with Client(address, asynchronous=True) as client:
            self.client = client
            self.start = time.perf_counter()
            open_calls, loops = self.workload.plan()
            jobs = [self._open(open_calls)]
            for calls, window in loops:
                queue = deque(int(i) for i in calls)
                jobs += [self._loop(queue) for _ in range(window)]
            jobs += [self._switch(when, config) for when, config in self.switches]
            await asyncio.gather(*jobs)
            return time.perf_counter() - self.start

    async def _call(self, i: int) -> None:
        t0 = time.perf_counter()
        self.submitted[i] = t0 - self.start
        try:
            result = await self.client.submit(self.requests[i], pure=False, x=self.xs[i])
        except Exception as e:  # reported, and fails the run
            self.errors.append((i, repr(e)))
            return
        self.latency[i] = time.perf_counter() - t0
        y = result["y"]
        if y.shape != self.expected[i].shape or not np.allclose(y, self.expected[i], rtol=1e-3, atol=1e-3):
            self.errors.append((i, "wrong result"))

    async def _loop(self, queue: deque) -> None:
        while queue:
            await self._call(queue.popleft())

    async def _open(self, calls) -> None:
        pending = []
        times = self.workload.times
        for i in calls:
            delay = times[i] - (time.perf_counter() - self.start)
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.ensure_future(self._call(int(i))))
        await asyncio.gather(*pending)

    async def _switch(self, when: float, config: str) -> None:
        await asyncio.sleep(max(0.0, when - (time.perf_counter() - self.start)))
        await asyncio.to_thread(self.set_policy_at, config)
