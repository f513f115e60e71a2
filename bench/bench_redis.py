"""
RedisStreamChannel across processes, against a raw txredisapi ``XADD``/``XREAD`` loop, in
one run, on a private redis-server (no persistence) on 127.0.0.1.

The publisher is this process; the reader is another (``bench/_redis_reader.py``):

* **throughput**: events published with up to 200 in flight; events per second until the
  reader has them all;
* **paced latency**: one event every 2 ms; p50 and p99 of publish-to-deliver time.

Run with ``bash scripts/bench`` (``--quick`` for a smoke run). Every loop is bounded, and
the reader and redis-server processes are stopped at the end.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.task import deferLater

from tests._redis import RedisServer
from twisted_event_dispatcher.channels.redis import RedisStreamChannel

from ._processes import (
    BenchProcess,
    Row,
    keep_best,
    ours_vs_raw_table,
    react_main,
    spawn_ready,
)

WINDOW = 200
PACE = 0.002
#: Stream length bound for both: large enough that the reader never falls behind it.
HISTORY = 100_000


async def reader(mode: str, url: str, stream: str, count: int) -> BenchProcess:
    return await spawn_ready("bench._redis_reader", mode, url, stream, count)


class Publisher:
    def __init__(self, mode: str, url: str, stream: str) -> None:
        self.mode = mode
        self.url = url
        self.stream = stream
        self.seq = 0
        self.channel: RedisStreamChannel | None = None
        self.redis: Any = None

    async def open(self, port: int) -> None:
        if self.mode == "ours":
            self.channel = RedisStreamChannel(
                self.stream, HISTORY, url=self.url, prefix=""
            )
            await self.channel.connect()
        else:
            self.redis = await txredisapi.Connection("127.0.0.1", port, convertNumbers=False)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.disconnect()
        if self.redis is not None:
            await self.redis.disconnect()

    def publish(self, paced: bool) -> Deferred[Any]:
        self.seq += 1
        data = {"seq": self.seq, "t": time.time(), "paced": paced}
        if self.channel is not None:
            return self.channel.publish("tick", data)
        d: Deferred[Any] = self.redis.execute_command(
            "XADD", self.stream, "MAXLEN", "~", str(HISTORY), "*", "e", "tick", "d",
            json.dumps(data),
        )
        return d


async def measure(mode: str, redis: RedisServer, events: int, paced: int) -> dict[str, float]:
    stream = f"bench-{mode}-{time.monotonic_ns()}"
    publisher = Publisher(mode, redis.url, stream)
    await publisher.open(redis.port)
    try:
        process = await reader(mode, redis.url, stream, events)
        window = DeferredSemaphore(WINDOW)
        start = time.time()
        await gatherResults(
            [window.run(publisher.publish, False) for _ in range(events)], consumeErrors=True
        )
        result = await process.result
        throughput = events / (result["done_at"] - start)
        await process.ended

        process = await reader(mode, redis.url, stream, paced)
        for _ in range(paced):
            publisher.publish(True)
            await deferLater(reactor, PACE, lambda: None)
        latency = await process.result
        await process.ended
        return {
            "throughput": throughput, "p50": latency["p50"] * 1000, "p99": latency["p99"] * 1000
        }
    finally:
        await publisher.close()


async def run(argv: list[str]) -> None:
    quick = "--quick" in argv
    events, paced = (2_000, 100) if quick else (30_000, 1_000)
    redis = RedisServer(persistent=False)
    await redis.start()
    try:
        best: dict[str, dict[str, float]] = {}
        for _ in range(1 if quick else 2):
            for mode in ("raw", "ours"):
                result = await measure(mode, redis, events, paced)
                keep_best(best, mode, result)
    finally:
        await redis.stop()
    ours, raw = best["ours"], best["raw"]
    heading = (
        f"### Redis Streams channel\n\nPython {sys.version.split()[0]}; reader in a separate "
        f"process; {events:,} events for throughput, {paced:,} paced"
    )
    throughput_checks = [
        (">= 20,000/s", ours["throughput"] >= 20_000),
        (">= 0.8x raw", ours["throughput"] >= 0.8 * raw["throughput"]),
    ]
    rows: list[Row] = [
        ("events/s", "throughput", "{:,.0f}", throughput_checks),
        ("paced p50 ms", "p50", "{:.2f}", [("<= 2 ms", ours["p50"] <= 2.0)]),
        ("paced p99 ms", "p99", "{:.2f}", []),
    ]
    ours_vs_raw_table(heading, ours, raw, rows)


if __name__ == "__main__":
    react_main(run)
