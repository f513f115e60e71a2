"""The control socket (``--control unix:...``) of the real hub: every verb, bad input, streams."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import strategies as st

from tests._control import LineClient, connect_control
from tests._fuzz import examples
from tests._hub import HubProcess, start_hub
from tests._redis import RedisServer


class ControlHub:
    """A hub process with a control socket in a private directory."""

    def __init__(self, process: HubProcess, directory: str) -> None:
        self.process = process
        self.directory = directory
        self.path = os.path.join(directory, "hub.sock")
        self.clients: list[LineClient] = []
        self._names = 0

    async def connect(self) -> LineClient:
        client = await connect_control(self.path)
        self.clients.append(client)
        return client

    def name(self, prefix: str = "ch") -> str:
        """A channel (or listener) name no other test of this hub uses."""
        self._names += 1
        return f"{prefix}{self._names}"

    async def stop(self) -> None:
        for client in self.clients:
            if client.transport is not None and not client.closed.called:
                client.close()
        await self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


async def control_hub(*options: str) -> ControlHub:
    directory = tempfile.mkdtemp(prefix="ted-ctl-")
    process = await start_hub(
        "--control", f"unix:{os.path.join(directory, 'hub.sock')}", *options
    )
    return ControlHub(process, directory)


@pytest_twisted.async_yield_fixture(scope="module")
async def hub() -> AsyncIterator[ControlHub]:
    """One hub for the tests of this module: each test uses channels of its own."""
    running = await control_hub("--history", "5")
    yield running
    await running.stop()


def no_traceback(hub: ControlHub) -> None:
    text = hub.process.text
    assert "Traceback" not in text and "Unhandled error" not in text, text[-3000:]


async def channel_with(hub: ControlHub, client: LineClient, *listeners: str) -> str:
    """A new channel with ``listeners`` registered (``id`` or ``id:group``)."""
    name = hub.name()
    assert await client.request({"v": "c", "c": name}) == {"c": name}
    for spec in listeners:
        listener, _, group = spec.partition(":")
        request: dict[str, Any] = {"v": "r", "c": name, "r": listener}
        if group:
            request["g"] = group
        assert await client.request(request) == {"r": listener, "c": name}
    return name


# -- one-shot verbs ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_one_shot_verb(hub: ControlHub) -> None:
    client = await hub.connect()
    created = await client.request({"v": "c", "i": 1})
    assert set(created) == {"c", "i"} and created["i"] == 1 and len(created["c"]) == 32
    name = await channel_with(hub, client)
    generated = await client.request({"v": "r", "c": name, "g": "workers", "size": 5,
                                      "ack_timeout": 2.5, "i": "reg"})
    assert generated["c"] == name and generated["i"] == "reg" and len(generated["r"]) == 32
    assert await client.request({"v": "r", "c": name, "r": "one"}) == {"r": "one", "c": name}
    sent = await client.request({"v": "d", "c": name, "r": "one", "t": "job", "p": [1, 2]})
    assert sent["ok"] is True and isinstance(sent["id"], str)
    assert await client.request({"v": "d", "c": name, "r": "one", "t": "stop"}) == {
        "ok": True, "id": None
    }
    assert await client.request({"v": "d", "c": name, "r": "one", "t": "start"}) == {
        "ok": True, "id": None
    }
    grouped = await client.request({"v": "g", "c": name, "g": "workers", "t": "job"})
    assert grouped["ok"] is True and grouped["id"].startswith("g:")  # a group mail's id
    assert not sent["id"].startswith("g:")
    first = await client.request({"v": "b", "c": name, "t": "news", "p": {"a": 1}})
    second = await client.request({"v": "b", "c": name, "t": "news"})
    assert first["ok"] is True and second["id"] == first["id"] + 1
    assert second["epoch"] == first["epoch"]
    # the hub's own channel is the default one
    default = await client.request({"v": "b", "t": "news", "i": "x"})
    assert default["ok"] is True and default["i"] == "x"
    assert await client.request({"v": "rl", "c": name, "r": "one"}) == {"ok": True}
    gone = await client.request({"v": "d", "c": name, "r": "one", "t": "job"})
    assert gone["code"] == "unknown_listener" and gone["v"] == "d"
    assert await client.request({"v": "rc", "c": name, "i": 7}) == {"ok": True, "i": 7}
    after = await client.request({"v": "b", "c": name, "t": "news"})
    assert after["code"] == "unknown_channel" and name in after["error"]
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_answers_are_written_in_completion_order_with_their_ref(hub: ControlHub) -> None:
    requester, worker = await hub.connect(), await hub.connect()
    name = await channel_with(hub, requester, "slow")
    # a request waits for its reply; a dispatch sent after it is answered first
    requester.send({"v": "q", "c": name, "r": "slow", "t": "work", "i": "q1"})
    requester.send({"v": "b", "c": name, "t": "news", "i": "b1"})
    assert (await requester.next())["i"] == "b1"
    assert (await worker.request({"v": "l", "c": name, "r": "slow"}))["ok"] is True
    mail = await worker.next()
    worker.send({"ack": mail["id"], "reply": "done"})
    assert await requester.next() == {"ok": True, "p": "done", "i": "q1"}


BAD_REQUESTS: list[tuple[dict[str, Any], str, str]] = [
    ({}, "bad_request", "missing 'v'"),
    ({"v": "zz"}, "bad_request", "unknown verb 'zz'"),
    ({"v": 3}, "bad_request", "unknown verb 3"),
    ({"v": "c", "x": 1}, "bad_request", "unknown key(s) 'x'"),
    ({"v": "c", "c": 5}, "bad_request", "'c': channel name must be a str"),
    ({"v": "c", "c": "_x"}, "bad_request", "reserved"),
    ({"v": "c", "c": "events"}, "exists", "'events'"),
    ({"v": "c", "i": True}, "bad_request", "'i' must be a string or an integer"),
    ({"v": "c", "i": "x" * 70}, "bad_request", "longer than 64"),
    ({"v": "r", "c": "nope"}, "unknown_channel", "'nope'"),
    ({"v": "r", "r": 1}, "bad_request", "'r': listener id must be a str"),
    ({"v": "r", "size": 0}, "bad_request", "'size' must be an integer from 1 to 100000"),
    ({"v": "r", "size": 100001}, "bad_request", "from 1 to 100000"),
    ({"v": "r", "size": True}, "bad_request", "'size'"),
    ({"v": "r", "ack_timeout": -1}, "bad_request", "'ack_timeout'"),
    ({"v": "r", "g": None}, "bad_request", "'g': group name must be a str"),
    ({"v": "d", "t": "x"}, "bad_request", "missing 'r'"),
    ({"v": "d", "r": "a"}, "bad_request", "missing 't'"),
    ({"v": "d", "r": "nobody", "t": "x"}, "unknown_listener", "'nobody'"),
    ({"v": "d", "r": "a", "t": "*"}, "bad_request", "'t'"),
    ({"v": "d", "r": "a", "t": "x", "a": True}, "bad_request", "unknown key(s) 'a'"),
    ({"v": "b"}, "bad_request", "missing 't'"),
    ({"v": "b", "t": "start"}, "reserved", "'start' is reserved"),
    ({"v": "b", "t": 1}, "bad_request", "'t'"),
    ({"v": "b", "t": "x", "c": "nope"}, "unknown_channel", "'nope'"),
    ({"v": "g", "t": "x"}, "bad_request", "missing 'g'"),
    ({"v": "g", "g": "nobody", "t": "x"}, "unknown_group", "'nobody'"),
    ({"v": "q", "t": "x"}, "bad_request", "exactly one target"),
    ({"v": "q", "t": "x", "r": "a", "g": "b"}, "bad_request", "exactly one target"),
    ({"v": "q", "t": "x", "r": "a", "timeout": 301}, "bad_request", "<= 300"),
    ({"v": "q", "t": "x", "r": "a", "timeout": 0}, "bad_request", "'timeout'"),
    ({"v": "q", "t": "x", "r": "nobody"}, "unknown_listener", "'nobody'"),
    ({"v": "q", "t": "x", "g": "nobody"}, "unknown_group", "'nobody'"),
    ({"v": "l"}, "bad_request", "missing 'r'"),
    ({"v": "l", "r": "nobody"}, "unknown_listener", "'nobody'"),
    ({"v": "l", "r": "a", "m": 1001}, "bad_request", "'m' must be an integer from 1 to 1000"),
    ({"v": "l", "r": "a", "a": 1}, "bad_request", "'a' (auto-ack) must be true or false"),
    ({"v": "w", "since": -1}, "bad_request", "'since'"),
    ({"v": "w", "since": 1.5}, "bad_request", "'since'"),
    ({"v": "w", "epoch": 3}, "bad_request", "'epoch'"),
    ({"v": "w", "c": "nope"}, "unknown_channel", "'nope'"),
    ({"v": "rl"}, "bad_request", "missing 'r'"),
    ({"v": "rl", "r": "nobody"}, "unknown_listener", "'nobody'"),
    ({"v": "rc"}, "default_channel", "'events'"),
    ({"v": "rc", "c": "nope"}, "unknown_channel", "'nope'"),
    ({"v": "rc", "c": "events", "t": "x"}, "bad_request", "unknown key(s) 't'"),
]


@pytest_twisted.ensureDeferred
async def test_bad_requests_get_a_specific_error_and_the_connection_stays_usable(
    hub: ControlHub,
) -> None:
    client = await hub.connect()
    for request in BAD_REQUESTS:
        body, code, fragment = request
        answer = await client.request({**body, "i": "ref"} if "i" not in body else body)
        assert answer["code"] == code, (body, answer)
        assert fragment in answer["error"], (body, answer)
        verb = body.get("v")
        assert answer["v"] == (verb if isinstance(verb, str) else None), (body, answer)
        if "i" not in body:
            assert answer["i"] == "ref"
        else:
            assert "i" not in answer  # an i that cannot be echoed is not
    assert await client.request({"v": "b", "t": "still-usable"}) != {}
    assert not client.closed.called
    no_traceback(hub)


def test_the_checker_names_fields_as_each_transport_does() -> None:
    from twisted_event_dispatcher.carriers._ws_control import request_names
    from twisted_event_dispatcher.hub._channel_resources import NAMES
    from twisted_event_dispatcher.hub._control_fields import ControlError, check_request

    ws = request_names()
    cases: list[tuple[dict[str, Any], Any, str]] = [
        # (request, names, the whole message)
        ({"type": "dispatch", "listener": "a", "event": "x", "c": "y", "v": "d"}, ws,
         "unknown field(s) 'c', 'v' for request 'dispatch'; it accepts channel, data, event, "
         "listener, ref, type"),
        ({"type": "dispatch"}, ws, "missing 'event', 'listener' for request 'dispatch'"),
        ({"type": "d", "r": "a", "t": "x"}, ws, "unknown request 'd'; expected one of "
         "create_channel register dispatch broadcast dispatch_group request listen watch "
         "remove_listener remove_channel"),
        ({"type": "request", "event": "x"}, ws, "request 'request' needs exactly one target: "
         "'listener' (a listener) or 'group' (a group)"),
        # a value the message quotes is the value as sent, whatever it looks like
        ({"type": "dispatch", "listener": "a", "event": "_('t') 'r'"}, ws,
         "'event': message type ('event') \"_('t') 'r'\" starts with '_', which is reserved"),
        ({"type": "listen", "listener": "a", "max_in_flight": 0, "ref": 1}, ws,
         "'max_in_flight' must be an integer from 1 to 1000, got 0"),
        ({"type": "watch", "ref": 1.5}, ws, "'ref' must be a string or an integer, got 1.5"),
        ({"v": "dispatch", "channel": "c", "listener": 5, "event": "x"}, NAMES,
         "'listener': listener id must be a str, got int"),
        ({"v": "dispatch_group", "channel": "c", "event": "x"}, NAMES,
         "missing 'group' for request 'dispatch_group'"),
        # the control socket's (the default): as before
        ({"v": "q", "t": "x"}, None,
         "verb 'q' needs exactly one target: 'r' (a listener) or 'g' (a group)"),
        ({"v": "d", "r": "a", "t": "*"}, None,
         "'t': message type ('t') '*' is only valid when subscribing"),
        ({"v": "c", "channel": "x"}, None,
         "unknown key(s) 'channel' for verb 'c'; it accepts c, i, v"),
    ]
    for request, names, message in cases:
        with pytest.raises(ControlError) as raised:
            if names is None:
                check_request(request)
            else:
                check_request(request, names)
        assert (raised.value.code, str(raised.value)) == ("bad_request", message), request
    # translated into the canonical request
    assert check_request({"type": "listen", "channel": "c", "listener": "a", "ref": "x",
                          "auto_ack": True}, ws) == {
        "v": "l", "c": "c", "r": "a", "a": True, "m": 100, "i": "x"
    }
    assert check_request({"v": "broadcast", "channel": "c", "event": "e", "data": [1]},
                         NAMES) == {"v": "b", "c": "c", "t": "e", "p": [1]}


@pytest_twisted.ensureDeferred
async def test_invalid_data_and_mailbox_full_and_limits(hub: ControlHub) -> None:
    client = await hub.connect()
    name = await channel_with(hub, client)
    assert (await client.request({"v": "r", "c": name, "r": "tiny", "size": 1}))["r"] == "tiny"
    assert (await client.request({"v": "d", "c": name, "r": "tiny", "t": "x"}))["ok"] is True
    full = await client.request({"v": "d", "c": name, "r": "tiny", "t": "x"})
    assert full["code"] == "mailbox_full" and "tiny" in full["error"]
    taken = await client.request({"v": "r", "c": name, "r": "tiny"})
    assert taken["code"] == "exists"
    data = await client.request({"v": "d", "c": name, "r": "tiny", "t": "stop", "p": 1})
    assert data["code"] == "reserved"


@pytest_twisted.ensureDeferred
async def test_malformed_lines(hub: ControlHub) -> None:
    client = await hub.connect()
    lines = [
        (b"not json", "malformed JSON"),
        (b'{"v": "b", "t": "x", "p": NaN}', "NaN is not valid JSON"),
        (b'{"v": "b", "t": "x", "p": Infinity}', "Infinity is not valid JSON"),
        (b'{"v": "b", "t": "x", "p": 1e999}', "out of range"),
        (b'{"v": "b", "t": "x", "p": ' + b"[" * 70 + b"]" * 70 + b"}", "deeper than 64"),
        (b"\xff\xfe{}", "valid UTF-8"),
        (b"[1, 2]", "a line must be a JSON object, got list"),
        (b'"v"', "got str"),
        (b"", "empty line"),
        (b"   \r", "empty line"),
        (b'{"v": "b", "t": "x", "p": "\\ud800"}', "lone surrogate"),
    ]
    for raw, fragment in lines:
        answer = await client.request(raw)
        assert answer["code"] in ("bad_request", "invalid_data"), (raw, answer)
        assert fragment in answer["error"], (raw, answer)
    assert (await client.request({"v": "b", "t": "fine"}))["ok"] is True
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_a_line_over_the_limit_closes_the_connection(hub: ControlHub) -> None:
    client = await hub.connect()
    assert (await client.request({"v": "b", "t": "x"}))["ok"] is True
    client.send(b'{"v": "b", "t": "x", "p": "' + b"a" * 70000 + b'"}')
    answer = await client.next()
    assert answer == {
        "error": "a line is longer than 65536 bytes; closing the connection",
        "v": None, "code": "too_large",
    }
    await client.wait_closed()
    # a line without its newline yet is refused as soon as it is too long
    other = await hub.connect()
    assert other.transport is not None
    other.transport.write(b"x" * 70000)
    assert (await other.next())["code"] == "too_large"
    await other.wait_closed()


# -- listen --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listen_with_manual_ack_and_redelivery_after_disconnect(hub: ControlHub) -> None:
    client = await hub.connect()
    name = await channel_with(hub, client, "w")
    ids = []
    for n in range(3):
        ids.append((await client.request({"v": "d", "c": name, "r": "w", "t": "job",
                                          "p": {"n": n}}))["id"])
    stream = await hub.connect()
    opened = await stream.request({"v": "l", "c": name, "r": "w", "m": 2, "i": "L"})
    assert opened == {"ok": True, "r": "w", "c": name, "i": "L"}
    first, second = await stream.next(), await stream.next()
    assert first == {"id": ids[0], "t": "job", "p": {"n": 0}, "n": 1, "s": "dispatch",
                     "r": "w", "c": name}
    assert second["id"] == ids[1]
    with pytest.raises(TimeoutError):  # m=2: the third waits for an ack
        await stream.next(timeout=0.3)
    stream.send({"ack": first["id"]})
    assert (await stream.next())["id"] == ids[2]
    # ack lines answer nothing; errors are lines, and the stream goes on
    assert (await stream.request({"ack": first["id"]}))["code"] == "unknown_mail"
    assert (await stream.request({"ack": 5}))["code"] == "bad_request"
    assert (await stream.request({"ack": ids[1], "x": 1}))["code"] == "bad_request"
    assert (await stream.request({"ack": ids[1], "reply": 1}))["code"] == "bad_request"
    verb = await stream.request({"v": "b", "t": "x", "i": 4})
    assert verb["code"] == "streaming" and verb["v"] == "b" and verb["i"] == 4
    stream.close()
    await stream.wait_closed()
    again = await hub.connect()
    assert (await again.request({"v": "l", "c": name, "r": "w"}))["ok"] is True
    redelivered = [await again.next(), await again.next()]
    assert [(m["id"], m["n"]) for m in redelivered] == [(ids[1], 2), (ids[2], 2)]
    again.send({"release": ids[1]})
    back = await again.next()
    assert (back["id"], back["n"]) == (ids[1], 3)
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_auto_ack(hub: ControlHub) -> None:
    client = await hub.connect()
    name = await channel_with(hub, client, "w")
    stream = await hub.connect()
    assert (await stream.request({"v": "l", "c": name, "r": "w", "a": True, "m": 1}))["ok"]
    for n in range(5):  # m=1: each mail comes only once the previous one was acked
        await client.request({"v": "d", "c": name, "r": "w", "t": "job", "p": n})
    assert [(await stream.next())["p"] for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    await stream.wait_closed()
    again = await hub.connect()
    assert (await again.request({"v": "l", "c": name, "r": "w"}))["ok"]
    with pytest.raises(TimeoutError):  # nothing is redelivered: all were acknowledged
        await again.next(timeout=0.3)


@pytest_twisted.ensureDeferred
async def test_stream_ends_when_the_listener_is_removed_or_replaced(hub: ControlHub) -> None:
    client = await hub.connect()
    name = await channel_with(hub, client, "a", "b")
    first = await hub.connect()
    assert (await first.request({"v": "l", "c": name, "r": "a"}))["ok"]
    second = await hub.connect()
    assert (await second.request({"v": "l", "c": name, "r": "a"}))["ok"]
    assert await first.next() == {"end": "replaced"}
    await first.wait_closed()
    assert await client.request({"v": "rl", "c": name, "r": "a"}) == {"ok": True}
    assert await second.next() == {"end": "removed"}
    await second.wait_closed()
    third = await hub.connect()
    assert (await third.request({"v": "l", "c": name, "r": "b"}))["ok"]
    assert await client.request({"v": "rc", "c": name}) == {"ok": True}
    assert await third.next() == {"end": "closed"}
    await third.wait_closed()


@pytest_twisted.ensureDeferred
async def test_request_reply_across_connections(hub: ControlHub) -> None:
    requester, worker = await hub.connect(), await hub.connect()
    name = await channel_with(hub, requester, "w:pool")
    assert (await worker.request({"v": "l", "c": name, "r": "w"}))["ok"]
    requester.send({"v": "q", "c": name, "r": "w", "t": "add", "p": [1, 2], "i": 1})
    mail = await worker.next()
    assert mail["q"] is True and mail["p"] == [1, 2] and mail["t"] == "add"
    worker.send({"ack": mail["id"], "reply": {"sum": 3}})
    assert await requester.next() == {"ok": True, "p": {"sum": 3}, "i": 1}
    # to the group; the action fails
    requester.send({"v": "q", "c": name, "g": "pool", "t": "add", "i": 2})
    mail = await worker.next()
    assert mail["s"] == "group" and mail["g"] == "pool" and mail["q"] is True
    assert mail["id"].startswith("g:")
    worker.send({"ack": mail["id"], "error": "cannot add"})
    failed = await requester.next()
    assert failed["code"] == "remote" and failed["remote_type"] == "ClientError"
    assert "cannot add" in failed["error"] and failed["v"] == "q" and failed["i"] == 2
    # no reply in time
    late = await requester.request({"v": "q", "c": name, "r": "w", "t": "slow",
                                    "timeout": 0.2, "i": 3})
    assert late["code"] == "timeout" and late["i"] == 3
    mail = await worker.next()
    worker.send({"ack": mail["id"], "reply": "too late"})  # ignored
    # a reply must be JSON the hub can pass on; a plain mail takes none
    requester.send({"v": "q", "c": name, "r": "w", "t": "again", "i": 4})
    mail = await worker.next()
    assert (await worker.request({"ack": mail["id"], "reply": "\ud800"}))["code"] in (
        "invalid_data", "bad_request"
    )
    worker.send({"ack": mail["id"], "reply": None})
    assert await requester.next() == {"ok": True, "p": None, "i": 4}
    await requester.request({"v": "d", "c": name, "r": "w", "t": "plain"})
    mail = await worker.next()
    refused = await worker.request({"ack": mail["id"], "reply": 1})
    assert refused["code"] == "bad_request" and "not a request" in refused["error"]
    no_traceback(hub)


# -- watch ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_watch_with_since_gap_and_removal(hub: ControlHub) -> None:
    client = await hub.connect()
    name = await channel_with(hub, client)
    sent = [await client.request({"v": "b", "c": name, "t": "news", "p": n}) for n in range(3)]
    epoch = sent[0]["epoch"]
    watcher = await hub.connect()
    answer = await watcher.request({"v": "w", "c": name, "since": sent[0]["id"],
                                    "epoch": epoch, "i": "W"})
    assert answer == {"ok": True, "c": name, "epoch": epoch, "last_id": sent[2]["id"],
                      "replayed": 2, "i": "W"}
    replayed = [await watcher.next(), await watcher.next()]
    assert replayed == [
        {"type": "event", "id": sent[n]["id"], "epoch": epoch, "channel": name,
         "event": "news", "data": n}
        for n in (1, 2)
    ]
    live = await client.request({"v": "b", "c": name, "t": "later", "p": {"x": 1}})
    assert (await watcher.next())["id"] == live["id"]
    streaming = await watcher.request({"v": "b", "t": "x"})
    assert streaming["code"] == "streaming"
    # a resume from another epoch: a gap line first
    stale = await hub.connect()
    answer = await stale.request({"v": "w", "c": name, "since": 1, "epoch": "other"})
    assert answer["replayed"] == 0
    gap = await stale.next()
    assert gap["type"] == "gap" and gap["reason"] == "epoch" and gap["channel"] == name
    # the channel is removed: a gap "removed", then the connection is closed
    assert await client.request({"v": "rc", "c": name}) == {"ok": True}
    removed = await watcher.next()
    assert removed["type"] == "gap" and removed["reason"] == "removed"
    await watcher.wait_closed()
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_watch_past_the_history_gets_an_expired_gap(hub: ControlHub) -> None:
    client = await hub.connect()
    name = await channel_with(hub, client)
    sent = [await client.request({"v": "b", "c": name, "t": "n", "p": n}) for n in range(8)]
    watcher = await hub.connect()
    answer = await watcher.request({"v": "w", "c": name, "since": sent[0]["id"],
                                    "epoch": sent[0]["epoch"]})
    assert answer["ok"] is True
    gap = await watcher.next()
    assert gap["type"] == "gap" and gap["reason"] == "expired"  # --history 5


# -- socket, options -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_socket_file_mode_and_connection_limit() -> None:
    default = await control_hub()
    try:
        assert stat.S_IMODE(os.stat(default.path).st_mode) == 0o600
        client = await default.connect()
        await client.request({"v": "r", "r": "w"})
        stream = await default.connect()
        assert (await stream.request({"v": "l", "r": "w"}))["ok"] is True
        await default.process.stop()  # (its clients still connected)
    finally:
        await default.stop()
    # stopping: a stream is told, every connection is closed, the socket file is removed
    assert await stream.next() == {"end": "stopping"}
    await stream.wait_closed()
    await client.wait_closed()
    assert not os.path.exists(default.path)
    no_traceback(default)
    wider = await control_hub("--control-mode", "660", "--max-control-connections", "2")
    try:
        assert stat.S_IMODE(os.stat(wider.path).st_mode) == 0o660
        one, two = await wider.connect(), await wider.connect()
        assert (await one.request({"v": "b", "t": "x"}))["ok"] is True
        three = await wider.connect()
        refused = await three.next()
        assert refused["code"] == "limit" and "at most 2" in refused["error"]
        await three.wait_closed()
        two.close()
        await two.wait_closed()
        four = await wider.connect()
        assert (await four.request({"v": "b", "t": "x"}))["ok"] is True
    finally:
        await wider.stop()


@pytest_twisted.ensureDeferred
async def test_control_options_are_checked() -> None:
    from twisted.python import usage

    from twisted_event_dispatcher.hub.options import HubOptions

    def parse(*args: str) -> HubOptions:
        options = HubOptions()
        options.parseOptions(list(args))  # type: ignore[no-untyped-call]
        return options

    assert parse()["control-mode"] == 0o600 and parse()["max-channels"] == 100
    assert parse()["max-listeners"] == 10000 and parse()["max-control-connections"] == 100
    assert parse("--control-mode", "640")["control-mode"] == 0o640
    assert parse("--control", "tcp:0:interface=127.0.0.1")["control"]
    for args, fragment in [
        (("--control-mode", "9"), "octal"),
        (("--control-mode", "1777"), "from 0 to 777"),
        (("--control", "tcp:0"), "refusing to serve the control socket on all interfaces"),
        (("--control", "tcp:0:interface=10.1.2.3"), "on 10.1.2.3"),
        (("--max-channels", "0"), "--max-channels must be at least 1"),
        (("--max-listeners", "0"), "--max-listeners"),
        (("--max-control-connections", "0"), "--max-control-connections"),
    ]:
        with pytest.raises(usage.UsageError, match=None) as raised:
            parse(*args)
        assert fragment in str(raised.value), (args, raised.value)


@pytest_twisted.ensureDeferred
async def test_max_channels_and_max_listeners() -> None:
    small = await control_hub("--max-channels", "2", "--max-listeners", "1")
    try:
        client = await small.connect()
        assert await client.request({"v": "c", "c": "one"}) == {"c": "one"}
        full = await client.request({"v": "c", "c": "two"})
        assert full["code"] == "limit" and "--max-channels" in full["error"]
        assert (await client.request({"v": "r", "c": "one", "r": "a"}))["r"] == "a"
        more = await client.request({"v": "r", "c": "one", "r": "b"})
        assert more["code"] == "limit" and "--max-listeners" in more["error"]
        assert await client.request({"v": "rc", "c": "one"}) == {"ok": True}
        assert await client.request({"v": "c", "c": "two"}) == {"c": "two"}
    finally:
        await small.stop()


# -- Redis ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_hubs_on_redis_dispatch_on_a_reaches_a_stream_on_b(redis: RedisServer) -> None:
    a = await control_hub("--channel", "redis", "--redis-url", redis.url)
    b = await control_hub("--channel", "redis", "--redis-url", redis.url)
    try:
        on_a, on_b = await a.connect(), await b.connect()
        assert await on_a.request({"v": "c", "c": "jobs"}) == {"c": "jobs"}
        assert await on_b.request({"v": "c", "c": "jobs"}) == {"c": "jobs"}
        assert await on_b.request({"v": "r", "c": "jobs", "r": "w", "g": "pool"}) == {
            "r": "w", "c": "jobs"
        }
        stream = await b.connect()
        assert (await stream.request({"v": "l", "c": "jobs", "r": "w"}))["ok"] is True
        sent = await on_a.request({"v": "d", "c": "jobs", "r": "w", "t": "job", "p": {"n": 1}})
        assert sent["ok"] is True
        mail = await stream.next(timeout=10)
        assert (mail["id"], mail["t"], mail["p"], mail["n"]) == (sent["id"], "job", {"n": 1}, 1)
        # a group mail's id is its queue's stream id with "g:" in front; an own mail's, not
        grouped = await on_a.request({"v": "g", "c": "jobs", "g": "pool", "t": "task"})
        pooled = await stream.next(timeout=10)
        assert (pooled["id"], pooled["s"], pooled["t"]) == (grouped["id"], "group", "task")
        assert pooled["id"].startswith("g:") and not mail["id"].startswith("g:")
        stream.send({"ack": pooled["id"]})
        # a request from hub A, answered on hub B's stream
        on_a.send({"v": "q", "c": "jobs", "r": "w", "t": "ask", "p": 2, "i": 9})
        asked = await stream.next(timeout=10)
        stream.send({"ack": mail["id"]})
        stream.send({"ack": asked["id"], "reply": 4})
        assert await on_a.next(timeout=10) == {"ok": True, "p": 4, "i": 9}
        no_traceback(a)
        no_traceback(b)
    finally:
        await a.stop()
        await b.stop()


class RecordingSink:
    """A listen sink that keeps the mail lines it is given."""

    writable = True

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.ends: list[str] = []

    def mail_line(self, mail: dict[str, Any]) -> None:
        self.lines.append(mail)

    def end(self, reason: str) -> None:
        self.ends.append(reason)


@pytest_twisted.ensureDeferred
async def test_own_and_group_mail_with_one_stream_id_are_settled_apart_on_redis(
    redis: RedisServer,
) -> None:
    # On Redis a listener's own mail and its group's mail are entries of two streams:
    # their ids can be equal. Set both streams' last id to the same (future) one, so the
    # next entry of each gets the same id, and check the stream tells them apart.
    import txredisapi

    from tests._redis import until
    from twisted_event_dispatcher.hub.app import Hub

    hub = Hub(redis_url=redis.url)
    await hub.start()
    raw = await txredisapi.Connection(
        "127.0.0.1", redis.port, reconnect=False, convertNumbers=False
    )
    session = None
    try:
        plane = hub.control
        assert await plane.execute({"v": "c", "c": "jobs"}) == {"c": "jobs"}
        await plane.execute({"v": "r", "c": "jobs", "r": "w", "g": "pool"})
        channel = hub.hub_channels.get("jobs")
        keys = channel.mailboxes.keys  # type: ignore[attr-defined]
        mailbox, queue = keys.mailbox("w"), keys.group("pool")
        future = "99999999999999-0"
        for key in (mailbox, queue):
            await raw.execute_command("XSETID", key, future)
        sink = RecordingSink()
        session = await plane.open_listen({"v": "l", "c": "jobs", "r": "w"}, sink)
        session.start()
        own = await plane.execute({"v": "d", "c": "jobs", "r": "w", "t": "own"})
        asked = plane.execute({"v": "q", "c": "jobs", "g": "pool", "t": "ask", "p": 1})
        await until(lambda: len(sink.lines) == 2)
        by_event = {line["t"]: line for line in sink.lines}
        own_id, group_id = by_event["own"]["id"], by_event["ask"]["id"]
        assert own_id == own["id"] == "99999999999999-1"  # the same stream id...
        assert group_id == "g:" + own_id  # ...shown apart
        assert by_event["ask"]["q"] is True and "q" not in by_event["own"]
        # each line settles exactly the mail it names: the own one is no request
        with pytest.raises(ValueError, match="not a request"):
            await session.client_line({"ack": own_id, "reply": "wrong one"})
        await session.client_line({"ack": group_id, "reply": "right one"})
        assert await asked == {"ok": True, "p": "right one"}

        async def pending(key: str) -> int:
            summary = await raw.execute_command("XPENDING", key, "g")
            return int(summary[0])

        assert (await pending(queue), await pending(mailbox)) == (0, 1)
        assert session.in_flight == 1
        await session.client_line({"ack": own_id})
        assert (await pending(queue), await pending(mailbox)) == (0, 0)
        assert session.in_flight == 0
        with pytest.raises(ValueError, match="not in flight"):
            await session.client_line({"ack": group_id})
    finally:
        if session is not None:
            await session.close()
        await raw.disconnect()
        await hub.stop()


# -- fuzz ----------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def _one_shot(request: dict[str, Any]) -> dict[str, Any]:
    """No stream (``l``, ``w``), and a request that may wait only briefly for a reply."""
    if request.get("v") in ("l", "w"):
        return {**request, "v": "x"}
    if request.get("v") == "q":
        return {**request, "timeout": 0.2}
    return request


_keys = st.sampled_from(["v", "c", "t", "p", "r", "g", "i", "size", "timeout", "m", "a",
                         "since", "epoch", "ack_timeout", "x"])
_requests = st.dictionaries(
    _keys,
    _json | st.sampled_from(["c", "r", "d", "b", "g", "q", "rl", "rc", "events", "x", "*"]),
    max_size=6,
).map(_one_shot)
_lines = st.one_of(
    _requests.map(lambda d: json.dumps(d).encode()),
    _json.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
)


@pytest_twisted.ensureDeferred
async def test_fuzz_every_line_gets_exactly_one_answer() -> None:
    hub = await control_hub()
    try:
        client = await hub.connect()
        lines = examples(_lines, 300)
        for line in lines:
            client.send(line)
        answers = [await client.next() for _ in lines]
        for line, answer in zip(lines, answers, strict=True):
            assert isinstance(answer, dict), (line, answer)
            assert answer.get("code") != "internal", (line, answer)
        assert (await client.request({"v": "b", "t": "after", "i": "end"}))["i"] == "end"
        with pytest.raises(TimeoutError):  # nothing more than one answer per line
            await client.next(timeout=0.2)
        assert not client.closed.called
        no_traceback(hub)
    finally:
        await hub.stop()


# -- flow control --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_at_most_1000_lines_of_a_connection_are_carried_out_at_once(
    hub: ControlHub,
) -> None:
    client = await hub.connect()
    name = await channel_with(hub, client)
    await client.request({"v": "r", "c": name, "r": "idle", "size": 2000})
    for n in range(1000):  # each waits for a reply that never comes (0.5 s)
        client.send({"v": "q", "c": name, "r": "idle", "t": "ask", "timeout": 0.5, "i": n})
    client.send({"v": "b", "c": name, "t": "news", "i": "last"})
    answers = [await client.next() for _ in range(1001)]
    # The broadcast was read only once a request was answered (not carried out at once,
    # as it would be if the hub read on): the 1000 requests were in progress.
    assert answers[0]["code"] == "timeout"
    last = next(a for a in answers if a["i"] == "last")
    assert last["ok"] is True
    requests = [a for a in answers if a is not last]
    assert sorted(a["i"] for a in requests) == list(range(1000))
    assert {a["code"] for a in requests} == {"timeout"}


class LocalControl:
    """A hub in this process with a control socket, to look at the server's side."""

    def __init__(self) -> None:
        from twisted.internet import reactor as default_reactor

        from twisted_event_dispatcher.hub._control_socket import ControlFactory
        from twisted_event_dispatcher.hub.app import Hub

        self.directory = tempfile.mkdtemp(prefix="ted-ctl-")
        self.path = os.path.join(self.directory, "hub.sock")
        self.hub = Hub()
        self.factory = ControlFactory(self.hub.control)
        reactor: Any = default_reactor
        self.port = reactor.listenUNIX(self.path, self.factory)

    def server(self) -> Any:
        (connection,) = self.factory.connections
        return connection

    async def stop(self) -> None:
        self.factory.close_all()
        await self.port.stopListening()
        shutil.rmtree(self.directory, ignore_errors=True)


async def settle(condition: Any, limit: float = 5.0) -> None:
    """Let the reactor run until ``condition()`` holds (bounded), then a little more."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(int(limit / 0.02)):
        if condition():
            break
        await deferLater(reactor, 0.02, lambda: None)
    else:
        raise AssertionError("condition never held")
    for _ in range(5):  # what was on its way has arrived
        await deferLater(reactor, 0.02, lambda: None)


def buffered(protocol: Any) -> int:
    """Bytes the server's transport holds, not yet written to the socket."""
    transport = protocol.transport
    held: int = len(transport.dataBuffer) + transport._tempDataLen - transport.offset
    return held


@pytest_twisted.ensureDeferred
async def test_a_stalled_auto_ack_stream_stops_getting_mail_once_m_are_in_flight() -> None:
    local = LocalControl()
    try:
        channel = local.hub.channel
        await channel.add_listener("w", mailbox_size=5000)
        client = await connect_control(local.path)
        assert (await client.request({"v": "l", "r": "w", "a": True, "m": 50}))["ok"] is True
        client.pause_reading()  # the client stops reading
        payload = "x" * 4000
        for n in range(3000):
            await channel.dispatch("w", "job", {"n": n, "pad": payload})
        server = local.server()
        await settle(lambda: server._write_paused)
        info = await channel.listener("w").info()
        assert info.in_flight <= 50  # unacknowledged: written while the transport was paused
        assert info.queued > 2000  # the rest waits in the mailbox, not in buffers
        assert buffered(server) < 65536 + 50 * 4200
        client.resume_reading()
        lines = [await client.next() for _ in range(3000)]
        assert [line["p"]["n"] for line in lines] == list(range(3000))
        assert {line["n"] for line in lines} == {1}
        await settle(lambda: server.session.in_flight == 0)
        info = await channel.listener("w").info()
        assert (info.queued, info.in_flight) == (0, 0)
    finally:
        await local.stop()


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_answers_is_not_read_either() -> None:
    local = LocalControl()
    try:
        client = await connect_control(local.path)
        assert (await client.request({"v": "b", "t": "first"}))["ok"] is True
        client.pause_reading()
        ref = "r" * 60
        count = 30000
        for _ in range(count):
            client.send({"v": "b", "t": "news", "i": ref})
        server = local.server()
        await settle(lambda: server._write_paused and server._read_paused)
        carried_out = local.hub.channel.last_id
        assert carried_out < count  # the hub stopped reading requests
        assert buffered(server) < 65536 + 200 * 1000
        client.resume_reading()
        answers = [await client.next(timeout=10) for _ in range(count)]
        assert [a["id"] for a in answers] == list(range(2, count + 2))
        assert local.hub.channel.last_id == count + 1
    finally:
        await local.stop()


@pytest_twisted.ensureDeferred
async def test_a_slow_watcher_is_told_what_it_missed() -> None:
    local = LocalControl()
    try:
        client = await connect_control(local.path)
        answer = await client.request({"v": "w"})
        assert answer["ok"] is True and answer["c"] == "events"
        client.pause_reading()
        count, payload = 3000, "x" * 4000
        for n in range(count):
            await local.hub.channel.publish("news", {"n": n, "pad": payload})
        server = local.server()
        await settle(lambda: server.carrier.queued >= 1000)
        assert buffered(server) < 65536 + 200 * 4200  # the rest was dropped from the queue
        client.resume_reading()
        lines: list[Any] = []
        while not lines or lines[-1].get("data", {}).get("n") != count - 1:
            lines.append(await client.next())
        dropped = [line for line in lines if line["type"] == "dropped"]
        events = [line for line in lines if line["type"] == "event"]
        assert len(dropped) == 1 and dropped[0]["count"] + len(events) == count
        assert [e["data"]["n"] for e in events] == sorted(e["data"]["n"] for e in events)
    finally:
        await local.stop()


@pytest_twisted.ensureDeferred
async def test_a_tcp_control_endpoint_must_be_on_loopback() -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from twisted_event_dispatcher.hub._control_socket import ControlFactory, listen_control
    from twisted_event_dispatcher.hub.app import Hub

    factory = ControlFactory(Hub().control)
    with pytest.raises(RuntimeError, match="refusing to serve the control socket on 0.0.0.0"):
        await listen_control(TCP4ServerEndpoint(reactor, 0, interface="0.0.0.0"), factory)
    port = await listen_control(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), factory)
    try:
        assert port.getHost().host == "127.0.0.1"  # type: ignore[attr-defined]
    finally:
        await maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_data_nested_max_depth_levels_travels_and_one_more_is_refused(
    hub: ControlHub,
) -> None:
    # The line's object is a level of its own: data of exactly MAX_DEPTH levels passes,
    # in the request and in the mail line that carries it (both were refused at 64).
    from twisted_event_dispatcher.channels.message import MAX_DEPTH

    def nested(depth: int) -> Any:
        value: Any = 0
        for _ in range(depth):
            value = [value]
        return value

    client, listener = await hub.connect(), await hub.connect()
    channel = hub.name("deep")
    assert await client.request({"v": "c", "c": channel}) == {"c": channel}
    assert (await client.request({"v": "r", "c": channel, "r": "w"}))["r"] == "w"
    opened = await listener.request({"v": "l", "c": channel, "r": "w", "a": True})
    assert opened["ok"] is True
    sent = await client.request({"v": "d", "c": channel, "r": "w", "t": "x",
                                 "p": nested(MAX_DEPTH)})
    assert sent["ok"] is True, sent
    mail = await listener.next()
    assert mail["id"] == sent["id"] and mail["p"] == nested(MAX_DEPTH)
    refused = await client.request({"v": "d", "c": channel, "r": "w", "t": "x",
                                    "p": nested(MAX_DEPTH + 1)})
    assert refused["code"] == "bad_request" and f"deeper than {MAX_DEPTH}" in refused["error"]
