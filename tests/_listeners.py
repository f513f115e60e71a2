"""
The listener contract, as scenarios every backend must pass (memory here; Redis reuses it).

A backend's test module subclasses :class:`ListenerContract` (its name starts with ``Test``)
and gives it a ``make_channel`` fixture: an async factory ``await make_channel(**options)``
returning a fresh, connected channel with its listeners on that backend, cleaned up by
the fixture. The scenarios only ``await``: none of them relies on memory firing its
Deferreds at once, on a Clock, or on a delivery order between group members that Redis
does not promise (those are memory-only tests in tests/test_listeners.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any, Protocol

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from tests._redis import until
from twisted_event_dispatcher.channels.base import Channel
from twisted_event_dispatcher.errors import (
    InvalidDataError,
    ListenerExistsError,
    MailboxFullError,
    RemoteActionError,
    ReservedTypeError,
    UnknownGroupError,
    UnknownListenerError,
)
from twisted_event_dispatcher.listeners import Consumer, Listener, Mail
from twisted_event_dispatcher.testing import RecordingCarrier

__all__ = ["WAIT", "ChannelFactory", "Inbox", "ListenerContract", "unique"]

#: Bound on every wait for a delivery (never reached when all is well).
WAIT = 10.0

_names = count(1)


def unique(prefix: str = "listeners") -> str:
    """A channel name no other test uses (Redis keeps streams between tests)."""
    return f"{prefix}-{next(_names)}"


class ChannelFactory(Protocol):
    def __call__(self, **options: Any) -> Awaitable[Channel]: ...


class Inbox:
    """
    A consume handler that records its mails (``mails``, in order) and lets a test wait
    for a count of them. ``ack``: the handler acknowledges each mail itself (its Deferreds
    in ``acks``); ``hold``: it returns a Deferred that never fires (the mail stays in
    flight); ``error``: it raises. Waiters fire on the reactor's next turn, after the
    handler (and an automatic ack) finished.
    """

    def __init__(
        self, *, ack: bool = False, hold: bool = False, error: Exception | None = None
    ) -> None:
        self.ack = ack
        self.hold = hold
        self.error = error
        self.mails: list[Mail] = []
        self.acks: list[Deferred[bool]] = []
        self.held: list[Deferred[None]] = []
        self._waiters: list[tuple[int, Deferred[list[Mail]]]] = []

    def __call__(self, mail: Mail) -> Any:
        self.mails.append(mail)
        for waiter in [w for w in self._waiters if w[0] <= len(self.mails)]:
            self._waiters.remove(waiter)
            reactor.callLater(0, waiter[1].callback, list(self.mails))
        if self.ack:
            self.acks.append(mail.ack())
        if self.error is not None:
            raise self.error
        if self.hold:
            held: Deferred[None] = Deferred()
            self.held.append(held)
            return held
        return None

    @property
    def events(self) -> list[str]:
        return [m.event for m in self.mails]

    @property
    def data(self) -> list[Any]:
        return [m.data for m in self.mails]

    def wait(self, n: int) -> Deferred[list[Mail]]:
        """Fires with the mails once there are ``n`` (fails after :data:`WAIT` seconds)."""
        waiter: Deferred[list[Mail]] = Deferred()
        if len(self.mails) >= n:
            reactor.callLater(0, waiter.callback, list(self.mails))
        else:
            self._waiters.append((n, waiter))
        return waiter.addTimeout(WAIT, reactor)


async def _fails(d: Deferred[Any], *types: type[BaseException]) -> BaseException:
    """Await ``d``, which must fail with one of ``types``; the exception."""
    try:
        result = await d
    except types as e:
        return e
    raise AssertionError(f"expected {types}, got the result {result!r}")


class ListenerContract:
    """The backend-agnostic scenarios; subclasses provide the ``make_channel`` fixture."""

    @pytest.fixture
    def make_channel(self) -> ChannelFactory:
        raise NotImplementedError("a backend's test class provides make_channel")

    # -- registering ---------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_register_list_remove(self, make_channel: ChannelFactory) -> None:
        channel = await make_channel()
        first = await channel.add_listener("first")
        generated = await channel.add_listener(group="workers")
        third = await channel.add_listener("third", group="workers")
        assert isinstance(first, Listener) and first.id == "first" and first.channel is channel
        assert generated.group == "workers" and generated.id not in ("first", "third")
        assert await channel.listener_ids() == ["first", generated.id, "third"]
        assert await channel.listener_ids("workers") == [generated.id, "third"]
        assert await channel.listener_ids("nobody") == []
        info = await third.info()
        assert (info.id, info.group, info.running, info.queued, info.in_flight) == (
            "third", "workers", True, 0, 0,
        )
        assert (info.mailbox_size, info.ack_timeout, info.attached) == (1000, 30.0, False)
        assert channel.listener("third") is third  # one handle per id while in use

        error = await _fails(channel.add_listener("first"), ListenerExistsError)
        assert "first" in str(error)
        await channel.remove_listener(generated.id)
        await third.remove()
        assert await channel.listener_ids() == ["first"]
        assert await channel.listener_ids("workers") == []
        error = await _fails(channel.remove_listener("third"), UnknownListenerError)
        assert "'third'" in str(error) and channel.name in str(error)
        await _fails(third.info(), UnknownListenerError)
        await _fails(channel.listener("ghost").is_running(), UnknownListenerError)
        # The id is free again, with a fresh state.
        again = await channel.add_listener("third", mailbox_size=5, ack_timeout=2.5)
        info = await again.info()
        assert (info.group, info.mailbox_size, info.ack_timeout) == (None, 5, 2.5)

    @pytest_twisted.ensureDeferred
    async def test_start_stop_keep_the_mailbox(self, make_channel: ChannelFactory) -> None:
        channel = await make_channel()
        listener = await channel.add_listener("a")
        inbox = Inbox()
        await listener.consume(inbox)
        assert await listener.is_running()
        assert await channel.dispatch("a", "stop") is None
        assert not await listener.is_running()
        for n in range(3):
            await channel.dispatch("a", "e", n)
        info = await listener.info()
        assert (info.queued, info.running, info.attached) == (3, False, True)
        assert inbox.mails == []
        await listener.start()
        await listener.start()  # idempotent
        assert await listener.is_running()
        await inbox.wait(3)
        assert inbox.data == [0, 1, 2]
        await listener.stop()
        await channel.dispatch("a", "e", 3)
        assert (await listener.info()).queued == 1
        assert await channel.dispatch("a", "start") is None
        await inbox.wait(4)
        assert inbox.data == [0, 1, 2, 3]
        await _fails(channel.dispatch("ghost", "start"), UnknownListenerError)

    # -- dispatching ---------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_dispatch_in_order_with_ids(self, make_channel: ChannelFactory) -> None:
        channel = await make_channel()
        listener = await channel.add_listener("a")
        other = await channel.add_listener("b")
        ids = [await channel.dispatch("a", "e", {"n": n}) for n in range(5)]
        assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 5
        assert (await listener.info()).queued == 5
        inbox, others = Inbox(ack=True), Inbox()
        await listener.consume(inbox, auto_ack=False)
        await other.consume(others)
        mails = await inbox.wait(5)
        assert [m.id for m in mails] == ids
        first = mails[0]
        assert (first.listener, first.channel, first.event, first.data) == (
            "a", channel.name, "e", {"n": 0},
        )
        assert first.data_json == '{"n":0}' and first.deliveries == 1
        assert (first.source, first.group, first.offset, first.is_request) == (
            "dispatch", None, None, False,
        )
        assert await gatherResults(inbox.acks) == [True] * 5
        assert others.mails == []
        info = await listener.info()
        assert (info.queued, info.in_flight) == (0, 0)
        assert await mails[0].ack() is False  # acknowledged already

    @pytest_twisted.ensureDeferred
    async def test_broadcast_reaches_mailboxes_and_subscribers(
        self, make_channel: ChannelFactory
    ) -> None:
        channel = await make_channel()
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        listeners = [await channel.add_listener(name) for name in ("a", "b", "c")]
        await listeners[2].stop()
        messages = [await channel.broadcast("news", n) for n in range(3)]
        await channel.dispatch("a", "direct", "x")
        inboxes = [Inbox(), Inbox(), Inbox()]
        for listener, inbox in zip(listeners, inboxes):
            await listener.consume(inbox)
        a = await inboxes[0].wait(4)
        b = await inboxes[1].wait(3)
        assert [(m.event, m.data) for m in a] == [
            ("news", 0), ("news", 1), ("news", 2), ("direct", "x"),
        ]
        assert [m.offset for m in b] == [m.id for m in messages]
        assert {m.source for m in b} == {"broadcast"}
        assert inboxes[2].mails == [] and (await listeners[2].info()).queued == 3
        await _await_carrier(carrier, 3)
        assert [m.data for m in carrier.messages] == [0, 1, 2]
        # A broadcast is a publication: a listener's copy does not reach the carriers twice.
        await listeners[2].start()
        await inboxes[2].wait(3)
        assert len(carrier.messages) == 3

    @pytest_twisted.ensureDeferred
    async def test_group_gives_each_mail_to_one_running_member(
        self, make_channel: ChannelFactory
    ) -> None:
        channel = await make_channel()
        members = [await channel.add_listener(f"w{n}", group="workers") for n in range(3)]
        await channel.add_listener("outsider")
        await members[2].stop()
        inboxes = [Inbox(ack=True) for _ in members]
        for member, inbox in zip(members, inboxes):
            await member.consume(inbox, auto_ack=False)
        ids = [await channel.dispatch_group("workers", "job", n) for n in range(20)]
        assert len(set(ids)) == 20
        await _until_total(inboxes, 20)
        got = [m for inbox in inboxes for m in inbox.mails]
        assert sorted(m.id for m in got) == sorted(ids)  # each once
        assert sorted(m.data for m in got) == list(range(20))
        assert inboxes[2].mails == []
        for inbox in inboxes[:2]:  # each member sees the group's order
            data = [m.data for m in inbox.mails]
            assert data == sorted(data)
        assert {(m.source, m.group) for m in got} == {("group", "workers")}
        await gatherResults([a for inbox in inboxes for a in inbox.acks])
        # least-busy is accepted by every backend
        await channel.dispatch_group("workers", "job", 20, policy="least-busy")
        await _until_total(inboxes, 21)
        error = await _fails(channel.dispatch_group("nobody", "job"), UnknownGroupError)
        assert "nobody" in str(error)
        for member in members:
            await member.remove()
        await _fails(channel.dispatch_group("workers", "job"), UnknownGroupError)

    # -- redelivery ----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_own_mail_redelivered_to_next_consumer_before_newer(
        self, make_channel: ChannelFactory
    ) -> None:
        channel = await make_channel()
        listener = await channel.add_listener("a")
        first = Inbox(hold=True)
        consumer = await listener.consume(first, max_in_flight=2)
        for n in range(3):
            await channel.dispatch("a", "e", n)
        held = await first.wait(2)
        assert (await listener.info()).in_flight == 2
        await consumer.stop()
        assert await consumer.done == "stopped"
        assert await held[0].ack() is False  # no longer this consumer's
        await channel.dispatch("a", "e", 3)
        second = Inbox(ack=True)
        await listener.consume(second, auto_ack=False)
        mails = await second.wait(4)
        assert [(m.data, m.deliveries) for m in mails] == [(0, 2), (1, 2), (2, 1), (3, 1)]
        assert [m.id for m in mails[:2]] == [m.id for m in held]
        assert first.mails == held  # nothing more reached the stopped consumer

    @pytest_twisted.ensureDeferred
    async def test_group_mail_goes_to_another_member_when_its_member_leaves(
        self, make_channel: ChannelFactory
    ) -> None:
        channel = await make_channel()
        one = await channel.add_listener("one", group="g")
        two = await channel.add_listener("two", group="g")
        await two.stop()
        holding = Inbox(hold=True)
        await one.consume(holding)
        taker = Inbox(ack=True)
        await two.consume(taker, auto_ack=False)
        await channel.dispatch_group("g", "job", "stop")
        (mail,) = await holding.wait(1)
        await two.start()
        await one.stop()  # stopping gives its group mail back
        (again,) = await taker.wait(1)
        assert (again.id, again.data, again.deliveries) == (mail.id, "stop", 2)
        assert await mail.ack() is False

        await one.start()
        await two.stop()
        await channel.dispatch_group("g", "job", "remove")
        (_, mail) = await holding.wait(2)
        await two.start()
        await one.remove()
        (_, again) = await taker.wait(2)
        assert (again.data, again.deliveries) == ("remove", 2)

    @pytest_twisted.ensureDeferred
    async def test_group_mail_back_on_detach(self, make_channel: ChannelFactory) -> None:
        channel = await make_channel()
        one = await channel.add_listener("one", group="g")
        two = await channel.add_listener("two", group="g")
        await two.stop()
        holding = Inbox(hold=True)
        consumer = await one.consume(holding)
        await channel.dispatch_group("g", "job", 1)
        await holding.wait(1)
        taker = Inbox()
        await two.consume(taker)
        await two.start()
        await consumer.stop()
        (mail,) = await taker.wait(1)
        assert (mail.data, mail.deliveries, mail.listener) == (1, 2, "two")

    # -- bounds --------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_full_mailbox_refuses_dispatch(self, make_channel: ChannelFactory) -> None:
        channel = await make_channel()
        listener = await channel.add_listener("small", mailbox_size=2)
        await channel.dispatch("small", "e", 1)
        await channel.dispatch("small", "e", 2)
        error = await _fails(channel.dispatch("small", "e", 3), MailboxFullError)
        assert isinstance(error, MailboxFullError)
        assert (error.target, error.limit, error.group) == ("small", 2, False)
        assert "'small'" in str(error) and "not stored" in str(error)
        await _fails(
            channel.request("small", "e", 3, timeout=WAIT), MailboxFullError
        )
        assert (await listener.info()).queued == 2
        # In flight counts too, until acknowledged.
        inbox = Inbox(hold=True)
        await listener.consume(inbox, max_in_flight=2)
        await inbox.wait(2)
        await _fails(channel.dispatch("small", "e", 3), MailboxFullError)
        assert [m.data for m in inbox.mails] == [1, 2]
        await inbox.mails[0].ack()
        await channel.dispatch("small", "e", 3)

    @pytest_twisted.ensureDeferred
    async def test_full_mailbox_gets_one_missed_notice_for_broadcasts(
        self, make_channel: ChannelFactory
    ) -> None:
        channel = await make_channel()
        small = await channel.add_listener("small", mailbox_size=2)
        roomy = await channel.add_listener("roomy")
        for n in range(5):
            await channel.broadcast("news", n)
        inbox, everything = Inbox(ack=True), Inbox()
        await small.consume(inbox, auto_ack=False)
        await roomy.consume(everything)
        mails = await inbox.wait(3)
        assert [(m.event, m.data) for m in mails] == [
            ("news", 0), ("news", 1), ("_missed", {"count": 3, "reason": "mailbox full"}),
        ]
        assert mails[2].source == "missed"
        assert [m.data for m in await everything.wait(5)] == [0, 1, 2, 3, 4]
        await gatherResults(inbox.acks)
        await channel.broadcast("news", 5)  # room again
        assert [m.data for m in await inbox.wait(4)][3] == 5

    # -- consuming -----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_consume_async_handler_auto_acks(self, make_channel: ChannelFactory) -> None:
        channel = await make_channel()
        listener = await channel.add_listener("a")
        seen: list[Any] = []
        gate: Deferred[None] = Deferred()

        async def handler(mail: Mail) -> None:
            seen.append(mail.data)
            if mail.data == 0:
                await gate

        consumer = await listener.consume(handler)  # max_in_flight=1
        await channel.dispatch("a", "e", 0)
        await channel.dispatch("a", "e", 1)
        await until(lambda: seen == [0])
        info = await listener.info()
        assert (info.queued, info.in_flight) == (1, 1)  # the second waits for the first
        gate.callback(None)
        await until(lambda: seen == [0, 1])
        await until(lambda: consumer.processed == 2)
        await consumer.stop()
        info = await listener.info()
        assert (info.queued, info.in_flight, info.attached) == (0, 0, False)

    @pytest_twisted.ensureDeferred
    async def test_failed_handler_releases_then_dead_letters(
        self, make_channel: ChannelFactory
    ) -> None:
        channel = await make_channel()
        listener = await channel.add_listener("a")
        dead: list[tuple[Mail, Failure]] = []
        attempts: list[int] = []
        done: Deferred[None] = Deferred()

        def handler(mail: Mail) -> None:
            attempts.append(mail.deliveries)
            if mail.data == "poison":
                raise ValueError("cannot digest")

        def on_dead_letter(mail: Mail, failure: Failure) -> None:
            dead.append((mail, failure))
            done.callback(None)

        consumer = await listener.consume(
            handler, max_deliveries=3, on_dead_letter=on_dead_letter
        )
        await channel.dispatch("a", "e", "poison")
        await channel.dispatch("a", "e", "fine")
        await done.addTimeout(WAIT, reactor)
        await until(lambda: consumer.processed == 1)
        assert attempts == [1, 2, 3, 1]  # redelivered before newer mail, then given up
        ((mail, failure),) = dead
        assert (mail.data, mail.deliveries) == ("poison", 3)
        assert failure.check(ValueError) and consumer.dead_letters == 1
        info = await listener.info()
        assert (info.queued, info.in_flight) == (0, 0)

    @pytest_twisted.ensureDeferred
    async def test_messages_async_iteration(self, make_channel: ChannelFactory) -> None:
        channel = await make_channel()
        listener = await channel.add_listener("a")
        for n in range(3):
            await channel.dispatch("a", "e", n)
        stream = listener.messages(max_in_flight=2)
        got: list[Any] = []
        async for mail in stream:
            got.append(mail.data)
            if mail.data == 1:
                assert await stream.release(mail) is True
                break
            assert await mail.ack() is True
        await stream.close()
        assert stream.reason == "stopped"
        async with listener.messages() as again:
            async for mail in again:
                got.append((mail.data, mail.deliveries))
                await mail.ack()
                if mail.data == 2:
                    break
        # 1 was given back (and maybe handed to the first stream again before it closed):
        # the next stream gets it first, then 2; both delivered before.
        assert got[:2] == [0, 1] and [g[0] for g in got[2:]] == [1, 2]
        assert got[2][1] >= 2 and got[3][1] >= 1
        info = await listener.info()
        assert (info.queued, info.in_flight, info.attached) == (0, 0, False)
        ghost = channel.listener("ghost").messages()
        with pytest.raises(UnknownListenerError):
            async for _ in ghost:
                pass

    @pytest_twisted.ensureDeferred
    async def test_removed_listener_ends_its_consumer(self, make_channel: ChannelFactory) -> None:
        channel = await make_channel()
        listener = await channel.add_listener("a")
        consumer = await listener.consume(Inbox())
        stream_listener = await channel.add_listener("b")
        stream = stream_listener.messages()
        await listener.remove()
        assert await consumer.done.addTimeout(WAIT, reactor) == "removed"
        await stream_listener.remove()
        assert [m async for m in stream] == []
        assert stream.reason == "removed"
        # A second consumer replaces the first.
        c = await channel.add_listener("c")
        first = await c.consume(Inbox())
        second = await c.consume(Inbox())
        assert await first.done.addTimeout(WAIT, reactor) == "replaced"
        assert isinstance(second, Consumer) and not second.done.called

    # -- requests ------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_request_reply(self, make_channel: ChannelFactory) -> None:
        channel = await make_channel()
        service = await channel.add_listener("calc", group="calculators")
        service.set_action("add", lambda mail: sum(mail.data))

        async def slow_double(mail: Mail) -> int:
            return int(mail.data) * 2

        def broken(mail: Mail) -> None:
            raise LookupError("no such thing")

        service.set_action("double", slow_double)
        service.set_action("broken", broken)
        service.set_action("bad", lambda mail: {1, 2})
        await service.serve()
        assert await channel.request("calc", "add", [1, 2, 3], timeout=WAIT) == 6
        assert await channel.request("calc", "double", 21, timeout=WAIT) == 42
        assert await channel.request("calculators", "add", [2, 2], group=True) == 4
        error = await _fails(channel.request("calc", "broken", timeout=WAIT), RemoteActionError)
        assert isinstance(error, RemoteActionError)
        assert (error.remote_type, error.remote_message) == ("LookupError", "no such thing")
        error = await _fails(channel.request("calc", "nope", timeout=WAIT), RemoteActionError)
        assert isinstance(error, RemoteActionError)
        assert error.remote_type == "NoActionError" and "'nope'" in error.remote_message
        error = await _fails(channel.request("calc", "bad", timeout=WAIT), RemoteActionError)
        assert isinstance(error, RemoteActionError) and error.remote_type == "InvalidDataError"
        await _fails(channel.request("ghost", "add", timeout=WAIT), UnknownListenerError)
        await _fails(channel.request("ghosts", "add", group=True), UnknownGroupError)
        info = await service.info()  # every request answered once and acknowledged
        assert (info.queued, info.in_flight) == (0, 0)

    @pytest_twisted.ensureDeferred
    async def test_request_answered_once_when_the_error_or_result_misbehaves(
        self, make_channel: ChannelFactory
    ) -> None:
        # Before: no reply, the action ran max_deliveries times, the requester timed out.
        channel = await make_channel()
        service = await channel.add_listener("svc")
        runs: list[str] = []

        class Unprintable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no message either")

        class Unlistable(dict[str, int]):
            def items(self) -> Any:
                raise RuntimeError("items broke")

        def raises(mail: Mail) -> None:
            runs.append(mail.event)
            raise Unprintable()

        def returns(mail: Mail) -> Unlistable:
            runs.append(mail.event)
            return Unlistable(a=1)

        service.set_action("raises", raises)
        service.set_action("returns", returns)
        await service.serve()
        error = await _fails(channel.request("svc", "raises", timeout=WAIT), RemoteActionError)
        assert isinstance(error, RemoteActionError) and error.remote_type == "Unprintable"
        assert "RuntimeError: no message either" in error.remote_message
        error = await _fails(channel.request("svc", "returns", timeout=WAIT), RemoteActionError)
        assert isinstance(error, RemoteActionError) and error.remote_type == "InvalidDataError"
        assert "RuntimeError: items broke" in error.remote_message
        assert runs == ["raises", "returns"]
        await _until_info(service, queued=0, in_flight=0)

    @pytest_twisted.ensureDeferred
    async def test_actions_dispatch_to_other_listeners(
        self, make_channel: ChannelFactory
    ) -> None:
        channel = await make_channel()
        front = await channel.add_listener("front")
        back = await channel.add_listener("back")
        audit = await channel.add_listener("audit")

        async def order(mail: Mail) -> str:
            await front.dispatch_to("audit", "ordered", mail.data)
            result: str = await channel.request("back", "make", mail.data, timeout=WAIT)
            return f"served {result}"

        front.set_action("order", order)
        back.set_action("make", lambda mail: mail.data.upper())
        await front.serve()
        await back.serve()
        assert await channel.request("front", "order", "tea", timeout=WAIT) == "served TEA"
        inbox = Inbox()
        await audit.consume(inbox)
        (mail,) = await inbox.wait(1)
        assert (mail.event, mail.data) == ("ordered", "tea")
        # Notifications (not requests) run their action and are acknowledged.
        made: list[str] = []
        back.set_action("note", lambda mail: made.append(mail.data))
        await channel.dispatch("back", "note", "x")
        await channel.dispatch("back", "unknown", "y")  # a warning, acknowledged
        await until(lambda: made == ["x"])
        await _until_info(back, queued=0, in_flight=0)

    # -- bad input -----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_bad_input_raises_at_once_and_changes_nothing(
        self, make_channel: ChannelFactory
    ) -> None:
        channel = await make_channel()
        listener = await channel.add_listener("a", group="g")
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        calls: list[Callable[[], object]] = [
            lambda: channel.add_listener(""),
            lambda: channel.add_listener(5),  # type: ignore[arg-type]
            lambda: channel.add_listener("x", group="_g"),
            lambda: channel.add_listener("x", mailbox_size=0),
            lambda: channel.add_listener("x", mailbox_size=True),
            lambda: channel.add_listener("x", mailbox_size=2.0),  # type: ignore[arg-type]
            lambda: channel.add_listener("x", ack_timeout=0),
            lambda: channel.add_listener("x", ack_timeout=float("nan")),
            lambda: channel.add_listener("x", ack_timeout="1"),  # type: ignore[arg-type]
            lambda: channel.listener("*"),
            lambda: channel.remove_listener(None),  # type: ignore[arg-type]
            lambda: channel.listener_ids("_private"),
            lambda: channel.dispatch("a", "_missed"),
            lambda: channel.dispatch("a", "e", float("inf")),
            lambda: channel.dispatch("a", "e", object()),
            lambda: channel.dispatch("a", "e", "x" * (channel.max_data_size + 1)),
            lambda: channel.dispatch("a\n", "e"),
            lambda: channel.dispatch_group("g", "e", policy="random"),
            lambda: channel.dispatch_group("g", "e", policy=None),  # type: ignore[arg-type]
            lambda: channel.broadcast("*"),
            lambda: channel.broadcast("e", {"deep": [[[float("nan")]]]}),
            lambda: channel.request("a", "e", timeout=0),
            lambda: channel.request("a", "e", timeout=-1),
            lambda: channel.request("a", "e", group="yes"),  # type: ignore[arg-type]
            lambda: channel.request("a", "e", {1}),
            lambda: listener.consume("not callable"),  # type: ignore[arg-type]
            lambda: listener.consume(Inbox(), max_in_flight=0),
            lambda: listener.consume(Inbox(), max_deliveries=-1),
            lambda: listener.consume(Inbox(), auto_ack=1),  # type: ignore[arg-type]
            lambda: listener.consume(Inbox(), on_dead_letter=3),  # type: ignore[arg-type]
            lambda: listener.messages(max_in_flight="2"),  # type: ignore[arg-type]
            lambda: listener.serve(max_in_flight=0),
            lambda: listener.set_action("e", None),  # type: ignore[arg-type]
            lambda: listener.set_action("_e", print),
        ]
        for call in calls:
            with pytest.raises((TypeError, ValueError)):
                call()
        reserved: list[Callable[[], object]] = [
            lambda: channel.dispatch("a", "start", {"now": True}),
            lambda: channel.dispatch("a", "stop", 0),
            lambda: channel.broadcast("start"),
            lambda: channel.dispatch_group("g", "stop"),
            lambda: channel.request("a", "start"),
            lambda: channel.request("g", "stop", group=True),
            lambda: listener.set_action("start", print),
            lambda: listener.set_action("stop", print),
        ]
        for call in reserved:
            with pytest.raises(ReservedTypeError):
                call()
        with pytest.raises(InvalidDataError):
            channel.dispatch("a", "e", float("nan"))
        assert await channel.listener_ids() == ["a"]
        info = await listener.info()
        assert (info.queued, info.running, info.attached) == (0, True, False)
        assert carrier.messages == [] and listener.actions == {}


async def _until_total(inboxes: list[Inbox], n: int) -> None:
    await until(lambda: sum(len(i.mails) for i in inboxes) >= n)


async def _until_info(listener: Listener, **expected: object) -> None:
    """Wait until ``listener.info()`` shows ``expected`` (acks may be on their way)."""
    info: dict[str, object] = {}
    for _ in range(int(WAIT / 0.01)):
        info = (await listener.info())._asdict()
        if all(info[k] == v for k, v in expected.items()):
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{listener!r}: {info} never showed {expected}")


async def _await_carrier(carrier: RecordingCarrier, n: int) -> None:
    await until(lambda: len(carrier.messages) >= n)
