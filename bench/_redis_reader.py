"""
The reading side of ``bench_redis``, run as a separate process:

    python -m bench._redis_reader MODE URL STREAM COUNT

``ours`` subscribes a RedisStreamChannel to ``*``; ``raw`` runs a bare txredisapi
``XREAD`` loop. Both decode each event's JSON to take the ``t`` the publisher put in it.
Prints ``READY``, then one JSON line once ``COUNT`` events arrived; stops after 120 s.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from zope.interface import implementer

from twisted_event_dispatcher.channels.redis import RedisStreamChannel, parse_redis_url
from twisted_event_dispatcher.interfaces import ICarrier


class Stats:
    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.latencies: list[float] = []
        self.first: float | None = None
        self.done: Deferred[None] = Deferred()

    def got(self, data: dict[str, Any]) -> None:
        now = time.time()
        if self.first is None:
            self.first = now
        self.seen += 1
        if data.get("paced"):
            self.latencies.append(now - data["t"])
        if self.seen == self.count:
            self.done.callback(None)

    def report(self) -> str:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

        return json.dumps({"done_at": time.time(), "p50": pct(0.5), "p99": pct(0.99)})


@implementer(ICarrier)
class Counter:
    closed = False

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def deliver(self, message: Any) -> None:
        self.stats.got(message.data)

    def notify_gap(self, channel: str, event: str, gap: Any) -> None:
        raise AssertionError(f"the benchmark's reader missed messages: {gap}")

    def on_close(self, callback: Any) -> None:
        pass


async def ours(url: str, stream: str, stats: Stats) -> None:
    channel = RedisStreamChannel(stream, url=url, prefix="")
    await channel.connect()
    await channel.subscribe("*", Counter(stats))
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    await stats.done
    await channel.disconnect()


async def raw(url: str, stream: str, stats: Stats) -> None:
    parsed = parse_redis_url(url)
    redis = await txredisapi.Connection(parsed.host, parsed.port, convertNumbers=False)
    last = await redis.execute_command("XREVRANGE", stream, "+", "-", "COUNT", "1")
    position = last[0][0] if last else "0-0"
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    while not stats.done.called:
        reply = await redis.execute_command(
            "XREAD", "COUNT", "1000", "BLOCK", "1000", "STREAMS", stream, position
        )
        for _, entries in reply or ():
            for entry_id, fields in entries:
                position = entry_id
                values = dict(zip(fields[::2], fields[1::2]))
                stats.got(json.loads(values["d"]))
    await redis.disconnect()


def main() -> None:
    mode, url, stream, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stats = Stats(count)

    async def run(_: Any) -> None:
        reactor.callLater(120, reactor.stop)
        await (ours if mode == "ours" else raw)(url, stream, stats)
        sys.stdout.write(stats.report() + "\n")
        sys.stdout.flush()

    react(lambda r: Deferred.fromCoroutine(run(r)))


if __name__ == "__main__":
    main()
