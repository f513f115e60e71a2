"""
The serving side of ``bench_listeners``' Redis part, run as a separate process:

    python -m bench._listener_worker MODE URL NAME IN_FLIGHT

``ours`` registers listener ``echo`` on RedisStreamChannel ``NAME`` and serves the action
``echo`` (it returns the request's data) with ``IN_FLIGHT`` requests at most at once.
``raw`` does the same round trip by hand with txredisapi: ``XREADGROUP`` (``COUNT``
``IN_FLIGHT``) on the request stream ``NAME``; per request, ``XADD`` of the reply to the
stream the request names, ``XACK`` and ``XDEL``, sent on a second connection without
waiting (the requester bounds what is in flight); the next read at once.

Prints ``READY`` once serving, then, when its stdin closes (the benchmark is done), one
JSON line ``{"served": n}`` and exits; it gives up by itself after 300 s. With the
environment variable ``BENCH_PROFILE`` set to a path, it writes a cProfile of its run
there (see ``bench_listeners``).
"""

from __future__ import annotations

import cProfile
import json
import os
import sys
import time
from typing import Any

import txredisapi
from twisted.internet import fdesc, reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import react
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_event_dispatcher.channels.redis import RedisStreamChannel, parse_redis_url
from twisted_event_dispatcher.listeners.mail import Mail

#: Seconds after which the worker stops by itself (the benchmark died?).
LIFETIME = 300
#: Bound on a reply stream's length (as RedisMailboxes' reply streams).
REPLY_MAXLEN = "10000"


@implementer(IReadDescriptor)
class StdinWatch:
    """
    Fires ``closed`` when stdin closes: the benchmark is done with this worker. (Not
    StandardIO: its writer would make stdout, where the results go, non-blocking.)
    """

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "stdin"

    def doRead(self) -> Failure | None:
        # As Twisted's ProcessReader: what the benchmark writes is ignored; at the end of
        # the pipe this returns the reason, and the reactor calls connectionLost.
        reason: Failure | None = fdesc.readFromFD(0, lambda data: None)
        return reason

    def connectionLost(self, reason: Failure) -> None:
        if not self.closed.called:
            self.closed.callback(None)


def ready() -> None:
    sys.stdout.write("READY\n")
    sys.stdout.flush()


def echo(mail: Mail) -> Any:
    return mail.data


async def ours(url: str, name: str, in_flight: int, done: Deferred[None]) -> int:
    channel = RedisStreamChannel(name, url=url)
    await channel.connect()
    try:
        listener = await channel.add_listener("echo")
        listener.set_action("echo", echo)
        consumer = await listener.serve(max_in_flight=in_flight)
        ready()
        await done
        await consumer.stop()
        return consumer.processed
    finally:
        await channel.disconnect()


async def raw(url: str, stream: str, in_flight: int, done: Deferred[None]) -> int:
    parsed = parse_redis_url(url)
    reader = await txredisapi.Connection(parsed.host, parsed.port, convertNumbers=False)
    writer = await txredisapi.Connection(parsed.host, parsed.port, convertNumbers=False)
    served = 0
    # Writes in flight (at most 3 per request in flight: the requester bounds them), and
    # the first that failed.
    writing: set[Deferred[Any]] = set()
    failed: list[Failure] = []

    def written(result: object, d: Deferred[Any]) -> None:
        writing.discard(d)
        if isinstance(result, Failure) and not failed:
            failed.append(result)

    try:
        await writer.execute_command("XGROUP", "CREATE", stream, "g", "$", "MKSTREAM")
        ready()
        while not done.called and not failed:
            reply = await reader.execute_command(
                "XREADGROUP", "GROUP", "g", "worker", "COUNT", str(in_flight), "BLOCK", "200",
                "STREAMS", stream, ">",
            )
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    values = dict(zip(fields[::2], fields[1::2]))
                    value = json.dumps(json.loads(values["d"]), separators=(",", ":"))
                    for command in (
                        ("XADD", values["r"], "MAXLEN", "~", REPLY_MAXLEN, "*",
                         "c", values["c"], "v", value),
                        ("XACK", stream, "g", entry_id),
                        ("XDEL", stream, entry_id),
                    ):
                        d = writer.execute_command(*command)
                        writing.add(d)
                        d.addBoth(written, d)
                    served += 1
        if writing:
            await gatherResults(list(writing))
        if failed:
            failed[0].raiseException()
        return served
    finally:
        for connection in (reader, writer):
            await connection.disconnect()


def main() -> None:
    mode, url, name, in_flight = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    profile_path = os.environ.get("BENCH_PROFILE")
    profiler = cProfile.Profile(time.process_time) if profile_path else None

    async def run(_: Any) -> None:
        watch = StdinWatch()
        fdesc.setNonBlocking(0)
        reactor.addReader(watch)
        reactor.callLater(LIFETIME, reactor.stop)
        if profiler is not None:
            profiler.enable()
        try:
            served = await (ours if mode == "ours" else raw)(url, name, in_flight, watch.closed)
        finally:
            if profiler is not None and profile_path:
                profiler.disable()
                profiler.dump_stats(profile_path)
        sys.stdout.write(json.dumps({"served": served}) + "\n")
        sys.stdout.flush()

    react(lambda _: Deferred.fromCoroutine(run(_)))


if __name__ == "__main__":
    main()
