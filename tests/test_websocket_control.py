"""
The control requests over the hub's WebSocket (``/ws``) of the real hub process: every
type, bad input per type, listen/ack/redelivery, auto-ack, request/reply between two
connections, watch with since, channel removal, token and origin, and a fuzz test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from hypothesis import strategies as st

from tests._clients import WSClient, connect_raw_ws, connect_ws
from tests._fuzz import examples
from tests._hub import HubProcess, start_hub
from twisted_event_dispatcher.carriers._ws_control import TYPES

ANSWERS = ("result", "error")


class Client:
    """A WebSocket of the hub: :meth:`call` sends a request and returns its answer frame."""

    def __init__(self, ws: WSClient) -> None:
        self.ws = ws
        self._refs = 0

    def send(self, frame: dict[str, Any]) -> None:
        self.ws.send_json(frame)

    async def call(self, frame: dict[str, Any], timeout: float = 5) -> dict[str, Any]:
        """Send ``frame`` with a fresh ``ref`` (unless it has one); its answer frame."""
        if "ref" not in frame:
            self._refs += 1
            frame = {**frame, "ref": f"r{self._refs}"}
        ref = frame["ref"]
        start = len(self.ws.inbox.frames)
        self.send(frame)
        answer: dict[str, Any] = await self.ws.wait(
            lambda f: f.get("type") in ANSWERS and f.get("ref") == ref, timeout, start
        )
        return answer

    async def ok(self, frame: dict[str, Any]) -> dict[str, Any]:
        answer = await self.call(frame)
        assert answer["type"] == "result", (frame, answer)
        return answer

    async def next(self, kind: str, start: int = 0, timeout: float = 5) -> dict[str, Any]:
        frame: dict[str, Any] = await self.ws.wait_type(kind, timeout, start)
        return frame

    def frames(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.ws.inbox.frames if f.get("type") == kind]

    async def close(self) -> None:
        if not self.ws.closed.called:
            self.ws.sendClose()
            await self.ws.closed


class WSHub:
    """A hub process and the WebSocket clients of a test."""

    def __init__(self, process: HubProcess) -> None:
        self.process = process
        self.clients: list[Client] = []
        self._names = 0

    async def connect(self, path: str = "/ws", **options: Any) -> Client:
        client = Client(await connect_ws(self.process.port, path=path, **options))
        self.clients.append(client)
        return client

    def name(self, prefix: str = "ws") -> str:
        """A name no other test of this hub uses."""
        self._names += 1
        return f"{prefix}{self._names}"

    async def channel_with(self, client: Client, *listeners: str) -> str:
        """A new channel with ``listeners`` registered (``id`` or ``id:group``)."""
        name = self.name()
        created = await client.ok({"type": "create_channel", "channel": name})
        assert created["channel"] == name
        for spec in listeners:
            listener, _, group = spec.partition(":")
            frame: dict[str, Any] = {"type": "register", "channel": name, "listener": listener}
            if group:
                frame["group"] = group
            answer = await client.ok(frame)
            assert (answer["listener"], answer["channel"]) == (listener, name)
        return name

    def no_traceback(self) -> None:
        text = self.process.text
        assert "Traceback" not in text and "Unhandled" not in text, text[-3000:]

    async def stop(self) -> None:
        for client in self.clients:
            if not client.ws.closed.called:
                client.ws.dropConnection()
        await self.process.stop()


@pytest_twisted.async_yield_fixture(scope="module")
async def hub() -> AsyncIterator[WSHub]:
    """One hub for the tests of this module: each test uses channels of its own."""
    running = WSHub(await start_hub("--history", "5"))
    yield running
    await running.stop()


async def listen(client: Client, channel: str, listener: str, **fields: Any) -> None:
    answer = await client.call(
        {"type": "listen", "channel": channel, "listener": listener, **fields}
    )
    assert answer == {
        "type": "result", "request": "listen", "ok": True, "listener": listener,
        "channel": channel, "ref": answer["ref"],
    }


async def until(client: Client, predicate: Callable[[], bool], timeout: float = 5) -> None:
    """Wait until ``predicate()`` holds, checking it as each frame arrives."""
    if not predicate():
        await client.ws.wait(lambda _: predicate(), timeout, start=len(client.ws.inbox.frames))


async def mail(client: Client, count: int, start: int = 0) -> list[dict[str, Any]]:
    """The first ``count`` mail frames from index ``start`` of the inbox."""
    frames = client.ws.inbox.frames

    def mails() -> list[dict[str, Any]]:
        return [f for f in frames[start:] if f.get("type") == "mail"]

    await until(client, lambda: len(mails()) >= count)
    return mails()[:count]


def answers(client: Client) -> list[dict[str, Any]]:
    return [f for f in client.ws.inbox.frames if f.get("type") in ANSWERS]


async def wait_answers(client: Client, count: int, timeout: float = 5) -> None:
    await until(client, lambda: len(answers(client)) >= count, timeout)


# -- one-shot requests -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_one_shot_request(hub: WSHub) -> None:
    client = await hub.connect()
    created = await client.call({"type": "create_channel", "ref": 1})
    assert set(created) == {"type", "request", "channel", "ref"} and created["ref"] == 1
    assert created["request"] == "create_channel" and len(created["channel"]) == 32
    name = await hub.channel_with(client)
    registered = await client.call({"type": "register", "channel": name, "group": "workers",
                                    "mailbox_size": 5, "ack_timeout": 2.5, "ref": "reg"})
    assert registered["type"] == "result" and registered["request"] == "register"
    assert registered["channel"] == name and len(registered["listener"]) == 32
    assert await client.call({"type": "register", "channel": name, "listener": "one",
                              "ref": "x"}) == {
        "type": "result", "request": "register", "listener": "one", "channel": name, "ref": "x",
    }
    sent = await client.call({"type": "dispatch", "channel": name, "listener": "one",
                              "event": "job", "data": [1, 2]})
    assert sent["ok"] is True and isinstance(sent["id"], str) and sent["request"] == "dispatch"
    for control in ("stop", "start"):
        answer = await client.call({"type": "dispatch", "channel": name, "listener": "one",
                                    "event": control, "ref": control})
        assert answer == {"type": "result", "request": "dispatch", "ok": True, "id": None,
                          "ref": control}
    grouped = await client.ok({"type": "dispatch_group", "channel": name, "group": "workers",
                               "event": "job"})
    assert grouped["ok"] is True and grouped["id"].startswith("g:")  # a group mail's id
    assert not sent["id"].startswith("g:")
    first = await client.ok({"type": "broadcast", "channel": name, "event": "news",
                             "data": {"a": 1}})
    second = await client.ok({"type": "broadcast", "channel": name, "event": "news"})
    assert second["id"] == first["id"] + 1 and second["epoch"] == first["epoch"]
    assert (await client.ok({"type": "broadcast", "event": "news"}))["ok"] is True  # "events"
    assert await client.call({"type": "remove_listener", "channel": name, "listener": "one",
                              "ref": 2}) == {
        "type": "result", "request": "remove_listener", "ok": True, "ref": 2,
    }
    gone = await client.call({"type": "dispatch", "channel": name, "listener": "one",
                              "event": "job"})
    assert gone["type"] == "error" and gone["code"] == "unknown_listener"
    assert gone["request"] == "dispatch" and "'one'" in gone["reason"]
    assert await client.call({"type": "remove_channel", "channel": name, "ref": 3}) == {
        "type": "result", "request": "remove_channel", "ok": True, "ref": 3,
    }
    after = await client.call({"type": "broadcast", "channel": name, "event": "news"})
    assert after["code"] == "unknown_channel" and name in after["reason"]
    # the old requests' errors have a code too (and echo a ref, if they have one)
    start = len(client.ws.inbox.frames)
    client.send({"type": "subscribe", "event": "x", "channel": "nope"})
    refused = await client.next("error", start)
    assert refused == {"type": "error", "reason": "unknown channel 'nope'",
                       "request": "subscribe", "code": "unknown_channel"}
    hub.no_traceback()


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"type": "create_channel", "channel": 5}, "bad_request",
     "'channel': channel name must be a str"),
    ({"type": "create_channel", "channel": "_x"}, "bad_request", "reserved"),
    ({"type": "create_channel", "channel": "_('t')"}, "bad_request",  # the value as sent
     "'channel': channel name \"_('t')\" starts with '_'"),
    ({"type": "create_channel", "channel": "events"}, "exists", "'events'"),
    ({"type": "create_channel", "c": "x"}, "bad_request", "unknown field(s) 'c'"),
    ({"type": "create_channel", "bogus": 1}, "bad_request",
     "unknown field(s) 'bogus' for request 'create_channel'; it accepts channel, ref, type"),
    ({"type": "create_channel", "ref": True}, "bad_request", "'ref' must be a string or an"),
    ({"type": "create_channel", "ref": "x" * 70}, "bad_request", "longer than 64"),
    ({"type": "register", "channel": "nope"}, "unknown_channel", "'nope'"),
    ({"type": "register", "listener": 1}, "bad_request", "'listener': listener id must be"),
    ({"type": "register", "mailbox_size": 0}, "bad_request",
     "'mailbox_size' must be an integer from 1 to 100000"),
    ({"type": "register", "mailbox_size": True}, "bad_request", "'mailbox_size'"),
    ({"type": "register", "ack_timeout": -1}, "bad_request", "'ack_timeout'"),
    ({"type": "register", "group": None}, "bad_request", "'group': group name must be a str"),
    ({"type": "register", "deliveries": 1}, "bad_request", "unknown field(s) 'deliveries'"),
    ({"type": "dispatch", "event": "x"}, "bad_request",
     "missing 'listener' for request 'dispatch'"),
    ({"type": "dispatch", "listener": "a"}, "bad_request", "missing 'event'"),
    ({"type": "dispatch"}, "bad_request", "missing 'event', 'listener'"),
    ({"type": "dispatch", "listener": "nobody", "event": "x"}, "unknown_listener", "'nobody'"),
    ({"type": "dispatch", "listener": "a", "event": "*"}, "bad_request",
     "'event': message type ('event')"),
    ({"type": "dispatch", "listener": "a", "event": "x", "auto_ack": True}, "bad_request",
     "unknown field(s) 'auto_ack'"),
    ({"type": "broadcast"}, "bad_request", "missing 'event'"),
    ({"type": "broadcast", "event": "start"}, "reserved", "'start' is reserved"),
    ({"type": "broadcast", "event": 1}, "bad_request", "'event'"),
    ({"type": "broadcast", "event": "x", "channel": "nope"}, "unknown_channel", "'nope'"),
    ({"type": "dispatch_group", "event": "x"}, "bad_request", "missing 'group'"),
    ({"type": "dispatch_group", "group": "nobody", "event": "x"}, "unknown_group", "'nobody'"),
    ({"type": "request", "event": "x"}, "bad_request",
     "request 'request' needs exactly one target: 'listener' (a listener) or 'group'"),
    ({"type": "request", "event": "x", "listener": "a", "group": "b"}, "bad_request",
     "exactly one target"),
    ({"type": "request", "event": "x", "listener": "a", "timeout": 301}, "bad_request",
     "'timeout' must be a number of seconds > 0 and <= 300"),
    ({"type": "request", "event": "x", "listener": "a", "timeout": 0}, "bad_request",
     "'timeout'"),
    ({"type": "request", "event": "x", "listener": "nobody"}, "unknown_listener", "'nobody'"),
    ({"type": "request", "event": "x", "group": "nobody"}, "unknown_group", "'nobody'"),
    ({"type": "listen"}, "bad_request", "missing 'listener' for request 'listen'"),
    ({"type": "listen", "listener": "nobody"}, "unknown_listener", "'nobody'"),
    ({"type": "listen", "listener": "a", "max_in_flight": 1001}, "bad_request",
     "'max_in_flight' must be an integer from 1 to 1000"),
    ({"type": "listen", "listener": "a", "auto_ack": 1}, "bad_request",
     "'auto_ack' (auto-ack) must be true or false"),
    ({"type": "watch", "since": -1}, "bad_request", "'since'"),
    ({"type": "watch", "since": 1.5}, "bad_request", "'since'"),
    ({"type": "watch", "epoch": 3}, "bad_request", "'epoch'"),
    ({"type": "watch", "channel": "nope"}, "unknown_channel", "'nope'"),
    ({"type": "watch", "event": "x"}, "bad_request", "unknown field(s) 'event'"),
    ({"type": "unwatch"}, "bad_request", "not watching channel 'events'"),
    ({"type": "unwatch", "channel": 3}, "bad_request", "channel name must be a str"),
    ({"type": "unlisten"}, "bad_request", "missing 'listener' for request 'unlisten'"),
    ({"type": "unlisten", "listener": "a"}, "bad_request", "not listening to 'a'"),
    ({"type": "ack", "listener": "a"}, "bad_request", "missing 'id' for request 'ack'"),
    ({"type": "ack", "listener": "a", "id": "1"}, "bad_request", "not listening to 'a'"),
    ({"type": "ack", "listener": "a", "id": "1", "x": 1}, "bad_request",
     "unknown field(s) 'x' for request 'ack'"),
    ({"type": "release", "listener": "a", "id": "1", "reply": 1}, "bad_request",
     "unknown field(s) 'reply'"),
    ({"type": "release", "listener": ["a"], "id": "1"}, "bad_request",
     "listener id must be a str"),
    ({"type": "remove_listener"}, "bad_request", "missing 'listener'"),
    ({"type": "remove_listener", "listener": "nobody"}, "unknown_listener", "'nobody'"),
    ({"type": "remove_channel"}, "default_channel", "'events'"),
    ({"type": "remove_channel", "channel": "nope"}, "unknown_channel", "'nope'"),
]


@pytest_twisted.ensureDeferred
async def test_bad_requests_get_an_error_with_a_code_and_the_connection_stays_open(
    hub: WSHub,
) -> None:
    client = await hub.connect()
    await client.ok({"type": "register", "listener": "a"})  # (on the hub's channel)
    try:
        for frame, code, fragment in BAD:
            if "ref" in frame:  # one that cannot be echoed: the next error is its answer
                start = len(client.ws.inbox.frames)
                client.send(frame)
                answer = await client.next("error", start)
                assert "ref" not in answer
            else:
                answer = await client.call({**frame, "ref": "bad"})
            assert answer["type"] == "error", (frame, answer)
            assert answer["code"] == code, (frame, answer)
            assert fragment in answer["reason"], (frame, answer)
            assert answer["request"] == frame["type"], (frame, answer)
            assert "verb" not in answer["reason"], (frame, answer)
        assert len(answers(client)) == len(BAD) + 1, "exactly one answer each"
    finally:
        await client.ok({"type": "remove_listener", "listener": "a"})
    client.send({"type": "frobnicate"})
    unknown = await client.next("error", start=len(client.ws.inbox.frames))
    assert "'create_channel'" in unknown["reason"] and "'unwatch'" in unknown["reason"]
    assert unknown["code"] == "bad_request", "every error frame has a code"
    client.send({"type": "ping", "id": "still open"})
    assert (await client.next("pong"))["id"] == "still open"
    hub.no_traceback()


# -- listen ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listen_ack_release_and_redelivery_after_reconnect(hub: WSHub) -> None:
    sender = await hub.connect()
    name = await hub.channel_with(sender, "w")
    for n in range(3):
        await sender.ok({"type": "dispatch", "channel": name, "listener": "w", "event": "job",
                         "data": {"n": n}})
    worker = await hub.connect()
    await listen(worker, name, "w", max_in_flight=10)
    got = await mail(worker, 3)
    assert got[0] == {
        "type": "mail", "id": got[0]["id"], "event": "job", "data": {"n": 0},
        "deliveries": 1, "source": "dispatch", "listener": "w", "channel": name,
    }
    assert [m["data"]["n"] for m in got] == [0, 1, 2]
    acked = await worker.call({"type": "ack", "channel": name, "listener": "w",
                               "id": got[0]["id"]})
    assert acked == {"type": "result", "request": "ack", "ok": True, "id": got[0]["id"],
                     "ref": acked["ref"]}
    again = await worker.call({"type": "ack", "channel": name, "listener": "w",
                               "id": got[0]["id"]})
    assert again["code"] == "unknown_mail", again
    start = len(worker.ws.inbox.frames)
    released = await worker.call({"type": "release", "channel": name, "listener": "w",
                                  "id": got[1]["id"]})
    assert released["type"] == "result" and released["request"] == "release"
    back = (await mail(worker, 1, start))[0]
    assert back["data"] == {"n": 1} and back["deliveries"] == 2
    # the worker goes away without acknowledging 1 and 2: the next stream gets them again
    await worker.close()
    successor = await hub.connect()
    await listen(successor, name, "w")
    redelivered = await mail(successor, 2)
    assert sorted(m["data"]["n"] for m in redelivered) == [1, 2]
    assert {m["data"]["n"]: m["deliveries"] for m in redelivered} == {1: 3, 2: 2}
    # several listens on one connection, and other requests meanwhile
    await successor.ok({"type": "register", "channel": name, "listener": "v"})
    await listen(successor, name, "v")
    twice = await successor.call({"type": "listen", "channel": name, "listener": "v"})
    assert twice["code"] == "bad_request" and "already" in twice["reason"]
    await successor.ok({"type": "dispatch", "channel": name, "listener": "v", "event": "e"})
    assert [m["listener"] for m in await mail(successor, 3)][-1] == "v"
    unlistened = await successor.call({"type": "unlisten", "channel": name, "listener": "v"})
    assert unlistened == {"type": "result", "request": "unlisten", "ok": True,
                          "channel": name, "listener": "v", "ref": unlistened["ref"]}
    hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_auto_ack_acknowledges_what_is_written(hub: WSHub) -> None:
    sender = await hub.connect()
    name = await hub.channel_with(sender, "auto")
    worker = await hub.connect()
    await listen(worker, name, "auto", auto_ack=True)
    for n in range(3):
        await sender.ok({"type": "dispatch", "channel": name, "listener": "auto",
                         "event": "job", "data": n})
    got = await mail(worker, 3)
    assert [m["data"] for m in got] == [0, 1, 2]
    late = await worker.call({"type": "ack", "channel": name, "listener": "auto",
                              "id": got[0]["id"]})
    assert late["code"] == "unknown_mail", "acknowledged already"
    await worker.close()
    await sender.ok({"type": "dispatch", "channel": name, "listener": "auto", "event": "job",
                     "data": "after"})
    successor = await hub.connect()
    await listen(successor, name, "auto")
    assert [m["data"] for m in await mail(successor, 1)] == ["after"], "nothing redelivered"
    hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_auto_ack_stops_at_max_in_flight_while_the_client_is_not_reading() -> None:
    # A queue of 8 frames: had the queued mail been acknowledged, the hub would go on
    # handing mail to the stalled connection until the queue overflowed and closed it.
    slow_hub = WSHub(await start_hub("--max-queue", "8"))
    try:
        admin = await slow_hub.connect()
        name = await slow_hub.channel_with(admin, "slow")
        raw = await connect_raw_ws(slow_hub.process.port, "/ws", receive_buffer=4096)
        raw.send_json({"type": "listen", "channel": name, "listener": "slow",
                       "auto_ack": True, "max_in_flight": 4})
        assert (await raw.wait_json(lambda f: True))["type"] == "result"
        raw.stop_reading()
        senders = [await slow_hub.connect() for _ in range(3)]
        blob = "x" * 50_000
        total = 240
        for n in range(total):
            senders[n % 3].send({"type": "dispatch", "channel": name, "listener": "slow",
                                 "event": "big", "data": [n, blob], "ref": n})
        for sender in senders:
            await wait_answers(sender, total // 3)
            assert {f["type"] for f in answers(sender)} == {"result"}
        assert not raw.lost.called, "the stalled connection stays open"
        raw.resume_reading()
        for n in range(total):
            await raw.wait_json(lambda f: f.get("type") == "mail", timeout=20, start=n + 1)
        got = [f for f in raw.texts() if f["type"] == "mail"]
        assert sorted(m["data"][0] for m in got) == list(range(total))
        for first in range(3):  # each sender's in its order
            mine = [m["data"][0] for m in got if m["data"][0] % 3 == first]
            assert mine == sorted(mine)
        assert {m["deliveries"] for m in got} == {1}
        assert raw.transport is not None
        raw.transport.loseConnection()
        await raw.lost
        # all of it was acknowledged once written: nothing comes again
        await admin.ok({"type": "dispatch", "channel": name, "listener": "slow",
                        "event": "marker"})
        await listen(admin, name, "slow")
        assert [m["event"] for m in await mail(admin, 1)] == ["marker"]
    finally:
        await slow_hub.stop()
    slow_hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_request_and_reply_between_two_connections(hub: WSHub) -> None:
    requester = await hub.connect()
    name = await hub.channel_with(requester, "svc", "pool:g")
    worker = await hub.connect()
    await listen(worker, name, "svc")
    requester.send({"type": "request", "channel": name, "listener": "svc", "event": "add",
                    "data": [2, 3], "ref": "q1"})
    asked = (await mail(worker, 1))[0]
    assert asked["request"] is True and asked["event"] == "add" and asked["data"] == [2, 3]
    replied = await worker.call({"type": "ack", "channel": name, "listener": "svc",
                                 "id": asked["id"], "reply": {"sum": 5}})
    assert replied["type"] == "result"
    answer = await requester.ws.wait(lambda f: f.get("ref") == "q1")
    assert answer == {"type": "result", "request": "request", "ok": True, "data": {"sum": 5},
                      "ref": "q1"}
    # a failure reported by the client goes back as a remote error
    requester.send({"type": "request", "channel": name, "listener": "svc", "event": "div",
                    "ref": "q2"})
    asked = (await mail(worker, 2))[1]
    await worker.ok({"type": "ack", "channel": name, "listener": "svc", "id": asked["id"],
                     "error": "division by zero"})
    failed = await requester.ws.wait(lambda f: f.get("ref") == "q2")
    assert failed["type"] == "error" and failed["code"] == "remote"
    assert failed["remote_type"] == "ClientError" and "division by zero" in failed["reason"]
    # a plain mail takes no reply; a request to a group; no reply in time
    await requester.ok({"type": "dispatch", "channel": name, "listener": "svc",
                        "event": "plain"})
    plain = (await mail(worker, 3))[2]
    refused = await worker.call({"type": "ack", "channel": name, "listener": "svc",
                                 "id": plain["id"], "reply": 1})
    assert refused["code"] == "bad_request" and "not a request" in refused["reason"]
    await listen(worker, name, "pool")
    requester.send({"type": "request", "channel": name, "group": "g", "event": "ping",
                    "ref": "q3"})
    pooled = (await mail(worker, 4))[3]
    assert pooled["source"] == "group" and pooled["group"] == "g" and pooled["request"]
    assert pooled["id"].startswith("g:") and not plain["id"].startswith("g:")
    await worker.ok({"type": "ack", "channel": name, "listener": "pool", "id": pooled["id"],
                     "reply": "pong"})
    assert (await requester.ws.wait(lambda f: f.get("ref") == "q3"))["data"] == "pong"
    # the id dispatch_group answers is the id the listener sees and acks
    grouped = await requester.ok({"type": "dispatch_group", "channel": name, "group": "g",
                                  "event": "job"})
    handed = (await mail(worker, 5))[4]
    assert (handed["id"], handed["source"]) == (grouped["id"], "group")
    await worker.ok({"type": "ack", "channel": name, "listener": "pool", "id": grouped["id"]})
    timed_out = await requester.call({"type": "request", "channel": name, "listener": "svc",
                                      "event": "slow", "timeout": 0.2})
    assert timed_out["code"] == "timeout"
    hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_listen_end_when_removed_replaced_or_the_channel_goes(hub: WSHub) -> None:
    admin = await hub.connect()
    name = await hub.channel_with(admin, "a", "b")
    first = await hub.connect()
    await listen(first, name, "a")
    await listen(first, name, "b")
    await admin.ok({"type": "remove_listener", "channel": name, "listener": "a"})
    assert await first.next("listen_end") == {
        "type": "listen_end", "channel": name, "listener": "a", "reason": "removed",
    }
    second = await hub.connect()
    await listen(second, name, "b")
    replaced = await first.ws.wait(lambda f: f.get("type") == "listen_end"
                                   and f["listener"] == "b")
    assert replaced["reason"] == "replaced"
    # the listens and the watch of a removed channel are forgotten
    watched = await second.ok({"type": "watch", "channel": name})
    assert watched["channel"] == name
    second.send({"type": "subscribe", "channel": name, "event": "x"})
    await second.next("subscribed")
    await admin.ok({"type": "remove_channel", "channel": name})
    gap = await second.next("gap")
    assert gap["channel"] == name and gap["reason"] == "removed"
    ended = await second.next("listen_end")
    assert ended == {"type": "listen_end", "channel": name, "listener": "b", "reason": "closed"}
    await admin.ok({"type": "create_channel", "channel": name})
    again = await second.call({"type": "watch", "channel": name})
    assert again["type"] == "result", "watching the new channel of that name"
    start = len(second.ws.inbox.frames)
    second.send({"type": "subscribe", "channel": name, "event": "x"})
    assert (await second.ws.wait(lambda f: f.get("type") in ("subscribed", "error"),
                                 start=start))["type"] == "subscribed"
    await admin.ok({"type": "register", "channel": name, "listener": "b"})
    await listen(second, name, "b")
    hub.no_traceback()


# -- watch -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_watch_with_since_and_unwatch(hub: WSHub) -> None:
    admin = await hub.connect()
    name = await hub.channel_with(admin)
    ids = [
        (await admin.ok({"type": "broadcast", "channel": name, "event": "e", "data": n}))["id"]
        for n in range(3)
    ]
    watcher = await hub.connect()
    answer = await watcher.call({"type": "watch", "channel": name, "since": ids[0],
                                 "ref": "w"})
    assert answer == {
        "type": "result", "request": "watch", "ok": True, "channel": name,
        "epoch": answer["epoch"], "last_id": ids[2], "replayed": 2, "ref": "w",
    }
    frames = watcher.ws.inbox.frames
    assert frames.index(answer) == 0, "the answer comes before the replay"
    await admin.ok({"type": "broadcast", "channel": name, "event": "live", "data": 3})
    await watcher.ws.wait(lambda f: f.get("data") == 3)
    events = watcher.frames("event")
    assert [e["data"] for e in events] == [1, 2, 3] and events[0]["id"] == ids[1]
    twice = await watcher.call({"type": "watch", "channel": name})
    assert twice["code"] == "bad_request" and "already subscribed" in twice["reason"]
    unwatched = await watcher.call({"type": "unwatch", "channel": name, "ref": 9})
    assert unwatched == {"type": "result", "request": "unwatch", "ok": True,
                         "channel": name, "ref": 9}
    await admin.ok({"type": "broadcast", "channel": name, "event": "e", "data": 4})
    await watcher.call({"type": "create_channel", "channel": "_x"})  # a round trip
    assert [e["data"] for e in watcher.frames("event")] == [1, 2, 3]
    # the history keeps 5: resuming from before it gets a gap instead
    for n in range(5, 10):
        await admin.ok({"type": "broadcast", "channel": name, "event": "e", "data": n})
    late = await hub.connect()
    resumed = await late.ok({"type": "watch", "channel": name, "since": ids[0],
                             "epoch": answer["epoch"]})
    assert resumed["replayed"] == 0
    gap = await late.next("gap")
    assert gap["channel"] == name and gap["event"] == "*" and gap["since"] == ids[0]
    assert gap["reason"] == "expired" and late.ws.inbox.frames.index(gap) == 1
    hub.no_traceback()


# -- access ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_token_is_required_and_origins_are_checked(hub: WSHub) -> None:
    with pytest.raises(ConnectionError, match="origin"):
        await hub.connect(origin="https://evil.example")
    page = await hub.connect(origin=f"http://127.0.0.1:{hub.process.port}")
    assert (await page.ok({"type": "create_channel"}))["request"] == "create_channel"
    tokened = WSHub(await start_hub("--token", "s3cret"))
    try:
        with pytest.raises(ConnectionError, match="401"):
            await tokened.connect()
        with pytest.raises(ConnectionError, match="401"):
            await tokened.connect(path="/ws?token=wrong")
        client = await tokened.connect(path="/ws?token=s3cret")
        name = await tokened.channel_with(client, "l")
        sent = await client.ok({"type": "dispatch", "channel": name, "listener": "l",
                                "event": "x"})
        assert sent["ok"] is True
        headers = {"Authorization": "Bearer s3cret"}
        other = await tokened.connect(headers=headers)
        await listen(other, name, "l")
        assert (await mail(other, 1))[0]["id"] == sent["id"]
    finally:
        await tokened.stop()
    tokened.no_traceback()


@pytest_twisted.ensureDeferred
async def test_without_a_control_plane_the_new_types_are_unsupported() -> None:
    from tests.test_websocket import start_server, stop_server

    server = await start_server()
    try:
        ws = await server.client()
        client = Client(ws)
        for kind in sorted(TYPES):
            answer = await client.call({"type": kind, "ref": kind})
            assert answer["type"] == "error" and answer["code"] == "unsupported", answer
            assert answer["request"] == kind
        ws.send_json({"type": "ping", "id": 1})
        assert (await ws.wait_type("pong"))["id"] == 1
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_requests_past_the_rate_are_answered_with_their_ref() -> None:
    from twisted.internet.task import Clock

    from tests.test_websocket import start_server, stop_server

    server = await start_server(max_request_rate=2, clock=Clock())
    try:
        ws = await server.client()
        for n in range(3):
            ws.send_json({"type": "create_channel", "ref": n})
        refused = await ws.wait(lambda f: f.get("ref") == 2)
        assert refused["code"] == "limit" and "at most 2 a second" in refused["reason"]
        assert [f["code"] for f in ws.inbox.frames] == ["unsupported"] * 2 + ["limit"]
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_requests_awaiting_their_answer_are_bounded_per_connection() -> None:
    from twisted.internet import reactor

    from tests._local_hub import start_local_hub
    from twisted_event_dispatcher.carriers._ws_control import MAX_PENDING
    from twisted_event_dispatcher.carriers.websocket import EventWebSocketFactory

    local = await start_local_hub()
    hub = local.hub
    # the hub's own factory allows 100 requests a second: this one has no rate
    factory = EventWebSocketFactory(channels=hub.channels, control=hub.control,
                                    max_request_rate=0, max_listens=1)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address: Any = port.getHost()
    client: Client | None = None
    try:
        client = Client(await connect_ws(address.port))
        await client.ok({"type": "register", "listener": "busy", "mailbox_size": 5000})
        for n in range(MAX_PENDING):  # nobody answers these for 4 s (however slow the machine)
            client.send({"type": "request", "listener": "busy", "event": "x", "timeout": 4,
                         "ref": n})
        refused = await client.call({"type": "broadcast", "event": "x", "ref": "over"})
        assert refused["code"] == "limit" and "awaiting their answer" in refused["reason"]
        stream = await client.call({"type": "ack", "listener": "busy", "id": "1"})
        assert "not listening" in stream["reason"], "acks are never held up"
        await wait_answers(client, MAX_PENDING + 3, timeout=20)
        assert [f.get("code") for f in answers(client)[3:]] == ["timeout"] * MAX_PENDING
        assert (await client.ok({"type": "broadcast", "event": "x"}))["ok"] is True
        # and listens: at most max_listens
        await client.ok({"type": "register", "listener": "other"})
        await listen(client, "events", "busy", max_in_flight=1)
        over = await client.call({"type": "listen", "listener": "other"})
        assert over["code"] == "limit" and "listen limit reached (1" in over["reason"]
    finally:
        if client is not None:
            await client.close()
        stopped: Any = port.stopListening()
        await stopped
        await local.stop()
    assert local.problems() == []


# -- fuzz --------------------------------------------------------------------------------

_text = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=8)
_scalars = (
    st.none() | st.booleans() | st.integers(-2, 2000) | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | _text
)
_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=5,
)
_NAMES = ["fz", "fz2", "nope", "", "*", "_x", " ", "l1", "l2", "g1", "events"]
_names = st.sampled_from(_NAMES) | _text | _values


def _frames(channel_names: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.sampled_from(sorted(TYPES))},
        optional={
            "channel": channel_names,
            "listener": _names,
            "group": _names,
            "event": st.sampled_from(["job", "start", "stop", "_x", "*"]) | _names,
            "data": _values,
            "auto_ack": st.booleans() | _values,
            "max_in_flight": st.integers(-1, 3) | _values,
            "mailbox_size": st.integers(-1, 3) | _values,
            "ack_timeout": st.floats(0.01, 5) | _values,
            # a valid long timeout would make the test wait that long
            "timeout": st.sampled_from([0.05, 0.1, -1, 0, 301, "1", True, None, [1]]),
            "since": st.integers(-2, 5) | _values,
            "epoch": _text | _values,
            "id": st.sampled_from(["0-1", "1", ""]) | _values,
            "reply": _values,
            "error": _text | _values,
            "ref": st.integers(-3, 3) | _text | _values,
            "c": _values,
            "deliveries": _values,
        },
    )


#: Mostly valid values of each field, to get past the checks to the plane and the streams.
_LIKELY: dict[str, st.SearchStrategy[Any]] = {
    "channel": st.sampled_from(["fz", "fz2", "fz", "nope", "events"]),
    "listener": st.sampled_from(["l1", "l2", "l1", "nobody"]),
    "group": st.sampled_from(["g1", "g1", "nobody"]),
    "event": st.sampled_from(["job", "job", "start", "stop"]),
    "data": _values,
    "auto_ack": st.booleans(),
    "max_in_flight": st.integers(1, 3),
    "mailbox_size": st.integers(1, 3),
    "ack_timeout": st.floats(0.01, 5),
    "timeout": st.sampled_from([0.05, 0.1]),
    "since": st.integers(0, 5),
    "id": st.sampled_from(["0-1", "1", "2", "1-0"]),
    "reply": _values,
    "error": _text,
    "ref": st.integers(0, 3) | st.text(max_size=3),
}
#: The fields each type needs, and those it may have.
_FIELDS_OF: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "create_channel": ((), ("channel",)),
    "register": ((), ("channel", "listener", "group", "mailbox_size", "ack_timeout")),
    "dispatch": (("listener", "event"), ("channel", "data")),
    "dispatch_group": (("group", "event"), ("channel", "data")),
    "broadcast": (("event",), ("channel", "data")),
    "request": (("event", "listener"), ("channel", "data", "timeout")),
    "listen": (("listener",), ("channel", "auto_ack", "max_in_flight")),
    "watch": ((), ("channel", "since")),
    "unwatch": ((), ("channel",)),
    "unlisten": (("listener",), ("channel",)),
    "ack": (("listener", "id"), ("channel", "reply", "error")),
    "release": (("listener", "id"), ("channel",)),
    "remove_listener": (("listener",), ("channel",)),
    "remove_channel": ((), ("channel",)),
}
_likely_frames = st.one_of(*(
    st.fixed_dictionaries(
        {"type": st.just(kind), **{name: _LIKELY[name] for name in required}},
        optional={name: _LIKELY[name] for name in (*optional, "ref")},
    )
    for kind, (required, optional) in sorted(_FIELDS_OF.items())
))


@pytest_twisted.ensureDeferred
async def test_fuzz_every_control_frame_gets_exactly_one_answer() -> None:
    fuzz = WSHub(await start_hub("--history", "5", "--max-channels", "20"))
    try:
        admin = await fuzz.connect()
        for channel in ("fz", "fz2"):
            await admin.ok({"type": "create_channel", "channel": channel})
            for listener in ("l1", "l2:g1"):
                name, _, group = listener.partition(":")
                await admin.ok({"type": "register", "channel": channel, "listener": name,
                                **({"group": group} if group else {})})
        channel_names = st.sampled_from(["fz", "fz2"]) | _names
        sent: dict[Client, int] = {}
        client = admin
        frames = examples(_frames(channel_names)) + examples(_likely_frames)
        codes: Counter[str | None] = Counter()
        for n, frame in enumerate(frames):
            if n % 40 == 0:  # (a fresh connection now and then: the request rate)
                client = await fuzz.connect()
                sent[client] = 0
            if frame["type"] == "request":
                frame.setdefault("timeout", 0.05)  # (the default would wait 10 s)
            client.send(frame)
            sent[client] += 1
            expected = sent[client]
            await wait_answers(client, expected)
            got = answers(client)
            assert len(got) == expected, (frame, got[-2:])
            last = got[-1]
            codes[last.get("code")] += 1
            if last["type"] == "error":
                assert isinstance(last["reason"], str) and last["reason"], (frame, last)
                assert last.get("code") not in (None, "internal"), (frame, last)
                assert last["request"] == frame["type"], (frame, last)
        for client, count in sent.items():  # nothing more came: one more round trip each
            client.send({"type": "ping", "id": "end"})
            await client.ws.wait(lambda f: f.get("id") == "end")
            assert len(answers(client)) == count
        assert codes[None] >= 10 and len(codes) >= 6, codes  # results, and errors of all kinds
    finally:
        await fuzz.stop()
    fuzz.no_traceback()
