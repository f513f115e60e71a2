"""
``--add-channel``: channels created at start, so that a worker's stream outlives a restart
of its hub (channels made at run time last as long as the hub's process).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python import usage

from tests._hub import start_hub
from tests._redis import RedisServer
from twisted_event_dispatcher.client import ClientMail, HubClient
from twisted_event_dispatcher.hub import Hub
from twisted_event_dispatcher.hub.options import HubOptions


def parse(*argv: str) -> HubOptions:
    options = HubOptions()
    options.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    return options


def test_add_channel_options_are_checked() -> None:
    assert parse("--add-channel", "jobs", "--add-channel", "mail")["add-channels"] == [
        "jobs", "mail",
    ]
    for argv, message in [
        (("--add-channel", "jobs", "--add-channel", "jobs"), "'jobs' is given twice"),
        (("--add-channel", "events"), "'events' is the hub's channel already"),
        (("--add-channel", "_x"), "starts with '_'"),
        (("--add-channel", ""), "must not be empty"),
        (("--max-channels", "2", "--add-channel", "a", "--add-channel", "b"),
         "3 channels at start is more than --max-channels (2)"),
    ]:
        with pytest.raises(usage.UsageError, match=message.replace("(", r"\(").replace(
            ")", r"\)")
        ):
            parse(*argv)


def test_hub_refuses_duplicate_or_too_many_channels_at_start() -> None:
    with pytest.raises(ValueError, match="'events' is given twice"):
        Hub(add_channels=("events",))
    with pytest.raises(ValueError, match="more than max_channels"):
        Hub(add_channels=("a", "b"), max_channels=2)


@pytest_twisted.ensureDeferred
async def test_added_channel_exists_at_start_and_counts_toward_max_channels() -> None:
    directory = tempfile.mkdtemp()
    control = f"unix:{os.path.join(directory, 'hub.sock')}"
    hub = await start_hub("--control", control, "--add-channel", "jobs", "--max-channels", "2")
    client = await HubClient.connect(control)
    try:
        assert await client.register("jobs", "w") == "w"
        with pytest.raises(Exception, match="limit") as refused:
            await client.create_channel("more")
        assert type(refused.value).__name__ == "ChannelLimitError"
    finally:
        await client.close()
        await hub.stop()
    assert "Traceback" not in hub.text


@pytest_twisted.ensureDeferred
async def test_a_stream_outlives_a_restart_of_its_redis_hub(redis: RedisServer) -> None:
    directory = tempfile.mkdtemp()
    control = f"unix:{os.path.join(directory, 'hub.sock')}"
    options = ("--channel", "redis", "--redis-url", redis.url, "--control", control,
               "--add-channel", "jobs")
    hub = await start_hub(*options)
    client = await HubClient.connect(control)
    await client.register("jobs", "worker")
    first = await client.dispatch("jobs", "worker", "render", 1)
    stream = client.stream("jobs", "worker")
    try:
        mail = await within(stream.next())
        assert isinstance(mail, ClientMail) and (mail.id, mail.deliveries) == (first, 1)
        await hub.stop()  # SIGTERM: the stream is told "stopping" and reconnects
        hub = await start_hub(*options)
        again = await within(stream.next())  # not acknowledged: delivered again
        assert isinstance(again, ClientMail)
        assert (again.id, again.data, again.deliveries) == (first, 1, 2)
        assert await within(again.ack()) is True
        other = await HubClient.connect(control)  # (the first one's connection is gone)
        second = await other.dispatch("jobs", "worker", "render", 2)
        await other.close()
        mail = await within(stream.next())
        assert isinstance(mail, ClientMail) and (mail.id, mail.data) == (second, 2)
        assert stream.reconnects >= 1
    finally:
        await stream.close()
        await client.close()
        await hub.stop()
    assert "Traceback" not in hub.text


def within(d: Deferred[Any], seconds: float = 20.0) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)
