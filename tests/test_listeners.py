"""
Listeners on a MemoryChannel: the backend-agnostic contract (tests/_listeners.py), and
what only memory promises or only a Clock can show: Deferreds fired at once, the exact
round-robin and least-busy choices, ack deadlines, request timeouts, re-entrant dispatch
from a handler, isolation of a consumer that raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from tests._listeners import ChannelFactory, Inbox, ListenerContract, unique
from tests._log import LogCapture
from twisted_event_dispatcher.channels import MemoryChannel, get_channel, registry
from twisted_event_dispatcher.channels._listening import _CONTROL_TYPES
from twisted_event_dispatcher.channels.base import Channel
from twisted_event_dispatcher.errors import (
    MailboxFullError,
    RemoteActionError,
    RequestTimeoutError,
    UnknownListenerError,
)
from twisted_event_dispatcher.interfaces import IChannel
from twisted_event_dispatcher.listeners import (
    CONTROL_TYPES,
    Listener,
    Mail,
    Mailboxes,
    MemoryMailboxes,
)
from twisted_event_dispatcher.testing import (
    RecordingCarrier,
    assert_no_result,
    failure_result_of,
    success_result_of,
)


class TestMemoryListeners(ListenerContract):
    """The contract on MemoryChannel."""

    @pytest.fixture
    def make_channel(self) -> Iterator[ChannelFactory]:
        made: list[Channel] = []

        async def make(**options: Any) -> Channel:
            channel = MemoryChannel(unique(), **options)
            made.append(channel)
            return channel

        yield make
        for channel in made:  # ack deadlines of mail still held: cancelled
            channel.mailboxes.close()


@pytest.fixture
def channel(clock: Clock) -> MemoryChannel:
    return MemoryChannel(unique(), clock=clock)


def add(channel: Channel, listener_id: str | None = None, **options: Any) -> Listener:
    return success_result_of(channel.add_listener(listener_id, **options))


def consume(listener: Listener, inbox: Inbox | None = None, **options: Any) -> Inbox:
    inbox = inbox if inbox is not None else Inbox()
    success_result_of(listener.consume(inbox, **options))
    return inbox


# -- the channel and its backend ---------------------------------------------------------


def test_memory_operations_fire_at_once(channel: MemoryChannel) -> None:
    assert isinstance(channel.mailboxes, MemoryMailboxes)
    assert isinstance(channel.mailboxes, Mailboxes) and channel.mailboxes is channel.mailboxes
    verifyObject(IChannel, channel)
    listener = add(channel, "a")
    assert success_result_of(channel.dispatch("a", "e", 1)) == "1"
    assert success_result_of(listener.info()).queued == 1
    inbox = consume(listener)
    assert inbox.data == [1]  # delivered before consume's Deferred fired
    assert success_result_of(channel.listener_ids()) == ["a"]
    failure_result_of(channel.dispatch("b", "e"), UnknownListenerError)
    assert _CONTROL_TYPES == CONTROL_TYPES


def test_clock_defaults_to_the_reactor_and_registry_passes_it(clock: Clock) -> None:
    from twisted.internet import reactor

    assert MemoryChannel(unique()).clock is reactor
    name = unique()
    try:
        assert get_channel(name, clock=clock).clock is clock
    finally:
        registry.discard(name)


def test_base_channel_without_backend_says_so() -> None:
    class Bare(MemoryChannel):
        def _make_mailboxes(self) -> Mailboxes:
            return Channel._make_mailboxes(self)

    with pytest.raises(NotImplementedError, match="Bare has no listener backend"):
        Bare(unique()).add_listener("a")


def test_generated_ids_are_valid_names(channel: MemoryChannel) -> None:
    from twisted_event_dispatcher.channels.base import check_event_name

    ids = {add(channel).id for _ in range(5)}
    assert len(ids) == 5
    for listener_id in ids:
        check_event_name(listener_id, "listener id")


def test_handles_are_shared_while_in_use(channel: MemoryChannel) -> None:
    listener = add(channel, "a")
    listener.set_action("ping", lambda mail: "pong")
    assert channel.listener("a") is listener
    assert channel.listener("a").actions.keys() == {"ping"}
    assert listener.remove_action("ping") is True and listener.remove_action("ping") is False
    other = channel.listener("elsewhere")  # no check, no I/O
    assert other.group is None and channel.listener("elsewhere") is other
    failure_result_of(other.start(), UnknownListenerError)


# -- groups: the exact choices of memory --------------------------------------------------


def test_round_robin_rotates_over_members_with_a_free_slot(channel: MemoryChannel) -> None:
    members = [add(channel, f"w{n}", group="g") for n in range(3)]
    inboxes = [consume(m, Inbox(hold=True), max_in_flight=2) for m in members]
    for n in range(6):
        channel.dispatch_group("g", "job", n)
    assert [i.data for i in inboxes] == [[0, 3], [1, 4], [2, 5]]
    # Full members are skipped; the group's queue waits for a slot.
    success_result_of(channel.dispatch_group("g", "job", 6))
    assert sum(len(i.mails) for i in inboxes) == 6
    success_result_of(inboxes[1].mails[0].ack())
    assert inboxes[1].data == [1, 4, 6]
    info = success_result_of(members[1].info())
    assert (info.queued, info.in_flight) == (0, 2)  # group mail is in flight too


def test_least_busy_picks_the_member_with_fewest_in_flight(channel: MemoryChannel) -> None:
    members = [add(channel, f"w{n}", group="g") for n in range(3)]
    inboxes = [consume(m, Inbox(hold=True), max_in_flight=5) for m in members]
    for n in range(3):
        channel.dispatch_group("g", "job", n, policy="least-busy")
    assert [i.data for i in inboxes] == [[0], [1], [2]]
    for mail in inboxes[0].mails + inboxes[2].mails:
        success_result_of(mail.ack())
    channel.dispatch("w0", "own", "x")  # in flight: w0 1, w1 1 (job 1), w2 0
    channel.dispatch_group("g", "job", 3, policy="least-busy")  # w0 is next in turn
    assert inboxes[2].data == [2, 3]
    channel.dispatch_group("g", "job", 4, policy="least-busy")  # all 1: the next in turn
    assert inboxes[0].data == [0, "x", 4]
    channel.dispatch_group("g", "job", 5)  # round-robin: the next after w0, whatever load
    assert inboxes[1].data == [1, 5]


def test_group_full_queue_refuses(channel: MemoryChannel) -> None:
    member = add(channel, "w", group="g")
    success_result_of(member.stop())
    channel.mailboxes.group_size = 2
    channel.dispatch_group("g", "job", 1)
    channel.dispatch_group("g", "job", 2)
    error = failure_result_of(channel.dispatch_group("g", "job", 3), MailboxFullError).value
    assert isinstance(error, MailboxFullError)
    assert (error.target, error.limit, error.group) == ("g", 2, True)
    assert "group 'g'" in str(error)
    inbox = consume(member)
    success_result_of(member.start())
    assert inbox.data == [1, 2]


def test_group_queue_outlives_its_last_member(channel: MemoryChannel) -> None:
    first = add(channel, "first", group="g")
    success_result_of(first.stop())
    channel.dispatch_group("g", "job", 1)
    success_result_of(first.remove())
    failure_result_of(channel.dispatch_group("g", "job", 2))  # no member: refused
    late = add(channel, "late", group="g")
    assert consume(late).data == [1]  # nothing dropped


def test_own_mail_before_group_mail_and_each_exactly_once(channel: MemoryChannel) -> None:
    a, b = add(channel, "a", group="g"), add(channel, "b", group="g")
    success_result_of(a.stop())
    success_result_of(b.stop())
    channel.dispatch_group("g", "job", "g1")
    channel.dispatch("a", "own", "a1")
    channel.broadcast("all", "b1")
    ia = consume(a, Inbox(ack=True), auto_ack=False)
    ib = consume(b, Inbox(ack=True), auto_ack=False)
    success_result_of(a.start())
    success_result_of(b.start())
    assert ia.data == ["a1", "b1", "g1"]
    assert ib.data == ["b1"]


# -- ack deadlines (Clock) ---------------------------------------------------------------


def test_ack_deadline_gives_group_mail_to_another_member(
    channel: MemoryChannel, clock: Clock, log: LogCapture
) -> None:
    slow = add(channel, "slow", group="g", ack_timeout=5)
    fast = add(channel, "fast", group="g", ack_timeout=5)
    held = consume(slow, Inbox(hold=True))
    success_result_of(fast.stop())
    ok = consume(fast, Inbox(hold=True))
    channel.dispatch_group("g", "job", 1)
    (mail,) = held.mails
    success_result_of(fast.start())
    clock.advance(4.9)
    assert ok.mails == []
    clock.advance(0.2)
    (again,) = ok.mails
    assert (again.id, again.deliveries, again.listener) == (mail.id, 2, "fast")
    assert success_result_of(mail.ack()) is False  # late: it went to another member
    assert success_result_of(again.ack()) is True
    assert any("did not acknowledge" in str(e.get("log_format")) for e in log.events)
    assert clock.getDelayedCalls() == []  # acked mail has no timer left


def test_ack_deadline_redelivers_to_the_only_member(channel: MemoryChannel, clock: Clock) -> None:
    only = add(channel, "only", group="g", ack_timeout=1)
    inbox = consume(only, Inbox(hold=True), max_in_flight=2)
    channel.dispatch_group("g", "job", 1)
    clock.advance(1)
    assert [(m.data, m.deliveries) for m in inbox.mails] == [(1, 1), (1, 2)]
    success_result_of(inbox.mails[1].ack())
    clock.advance(10)
    assert len(inbox.mails) == 2


def test_own_mail_has_no_deadline(channel: MemoryChannel, clock: Clock) -> None:
    listener = add(channel, "a", ack_timeout=1)
    inbox = consume(listener, Inbox(hold=True))
    channel.dispatch("a", "e", 1)
    clock.advance(100)
    assert len(inbox.mails) == 1 and success_result_of(listener.info()).in_flight == 1


# -- requests (Clock) --------------------------------------------------------------------


def test_request_timeout_and_late_reply(channel: MemoryChannel, clock: Clock) -> None:
    service = add(channel, "svc")
    gate: Deferred[str] = Deferred()
    service.set_action("slow", lambda mail: gate)
    success_result_of(service.serve())
    answer = channel.request("svc", "slow", timeout=2)
    clock.advance(1.9)
    assert_no_result(answer)
    clock.advance(0.2)
    error = failure_result_of(answer, RequestTimeoutError).value
    assert isinstance(error, TimeoutError) and "'svc'" in str(error) and "'slow'" in str(error)
    gate.callback("late")  # the reply comes, and is ignored
    info = success_result_of(service.info())
    assert (info.queued, info.in_flight) == (0, 0)
    assert channel._requests is not None and len(channel._requests) == 0


def test_cancelled_request_is_forgotten(channel: MemoryChannel, clock: Clock) -> None:
    service = add(channel, "svc")
    gate: Deferred[int] = Deferred()
    service.set_action("slow", lambda mail: gate)
    success_result_of(service.serve())
    answer = channel.request("svc", "slow")
    assert channel._requests is not None and len(channel._requests) == 1
    answer.cancel()
    failure_result_of(answer, CancelledError)
    assert len(channel._requests) == 0 and clock.getDelayedCalls() == []
    gate.callback(1)


def test_request_to_stopped_listener_waits_then_times_out(
    channel: MemoryChannel, clock: Clock
) -> None:
    service = add(channel, "svc")
    service.set_action("ping", lambda mail: "pong")
    success_result_of(service.serve())
    success_result_of(service.stop())
    answer = channel.request("svc", "ping", timeout=1)
    success_result_of(service.start())
    assert success_result_of(answer) == "pong"
    success_result_of(service.stop())
    late = channel.request("svc", "ping", timeout=1)
    clock.advance(1)
    failure_result_of(late, RequestTimeoutError)
    success_result_of(service.start())  # answered late: ignored, acknowledged
    assert success_result_of(service.info()).queued == 0


def test_remote_error_reply_without_message(channel: MemoryChannel) -> None:
    service = add(channel, "svc")

    def broken(mail: Mail) -> None:
        raise KeyError

    service.set_action("x", broken)
    success_result_of(service.serve())
    error = failure_result_of(channel.request("svc", "x"), RemoteActionError).value
    assert isinstance(error, RemoteActionError)
    assert (error.remote_type, error.remote_message, str(error)) == ("KeyError", "", "KeyError")


def test_malformed_reply_is_an_error(channel: MemoryChannel) -> None:
    mailboxes = channel.mailboxes
    assert channel._requests is not None
    d = channel._requests.add("c1", "svc", "x", 5)
    mailboxes.reply(mailboxes.reply_address, "c1", True, "{not json")
    error = failure_result_of(d, RemoteActionError).value
    assert isinstance(error, RemoteActionError) and error.remote_type == "InvalidReply"
    d = channel._requests.add("c2", "svc", "x", 5)
    mailboxes.reply(mailboxes.reply_address, "c2", False, "[1]")
    error = failure_result_of(d, RemoteActionError).value
    assert isinstance(error, RemoteActionError) and error.remote_type == "Error"
    mailboxes.reply("memory:elsewhere", "c3", True, "1")  # not ours: ignored
    mailboxes.reply(mailboxes.reply_address, "unknown", True, "1")  # ignored


# -- ordering and isolation --------------------------------------------------------------


def test_handler_dispatching_from_inside_keeps_the_order(channel: MemoryChannel) -> None:
    a, b = add(channel, "a"), add(channel, "b")
    seen: list[tuple[str, str, Any]] = []

    def on_a(mail: Mail) -> None:
        seen.append(("a", mail.event, mail.data))
        if mail.event == "e" and mail.data < 3:
            channel.dispatch("a", "e", mail.data + 10)  # to itself: after what is queued
            channel.dispatch("b", "e", mail.data)

    def on_b(mail: Mail) -> None:
        seen.append(("b", mail.event, mail.data))
        if mail.event == "e":
            channel.broadcast("echo", mail.data)

    success_result_of(a.consume(on_a, max_in_flight=5))
    success_result_of(b.consume(on_b, max_in_flight=5))
    for n in range(3):
        channel.dispatch("a", "e", n)
    # Nothing is handed out from inside a handler: each dispatch waits for the loop, so
    # every mailbox is consumed in its own order.
    assert [(e, d) for who, e, d in seen if who == "a"] == [
        (e, d) for n in range(3) for e, d in (("e", n), ("e", n + 10), ("echo", n))
    ]
    assert [(e, d) for who, e, d in seen if who == "b"] == [
        (e, d) for n in range(3) for e, d in (("e", n), ("echo", n))
    ]
    info = success_result_of(a.info()), success_result_of(b.info())
    assert [(i.queued, i.in_flight) for i in info] == [(0, 0), (0, 0)]


def test_reentrant_dispatch_is_queued_in_order(channel: MemoryChannel) -> None:
    listener = add(channel, "a")
    seen: list[int] = []

    def handler(mail: Mail) -> None:
        seen.append(mail.data)
        if mail.data == 0:
            channel.dispatch("a", "e", 2)
            assert seen == [0]  # not delivered from inside: queued behind 1

    success_result_of(listener.consume(handler, max_in_flight=3))
    success_result_of(listener.stop())
    channel.dispatch("a", "e", 0)
    channel.dispatch("a", "e", 1)
    success_result_of(listener.start())
    assert seen == [0, 1, 2]


class _BrokenSink:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.mails: list[Mail] = []

    def mail(self, mail: Mail) -> None:
        self.mails.append(mail)
        raise RuntimeError("sink bug")

    def detached(self, reason: str) -> None:
        self.reasons.append(reason)
        raise RuntimeError("detached bug too")


def test_a_sink_that_raises_is_detached_and_others_go_on(
    channel: MemoryChannel, log: LogCapture
) -> None:
    bad, good = add(channel, "bad"), add(channel, "good")
    sink = _BrokenSink()
    success_result_of(channel.mailboxes.attach("bad", sink, 1))
    inbox = consume(good)
    message = success_result_of(channel.broadcast("news", 1))
    assert message.data == 1 and inbox.data == [1]
    assert len(sink.mails) == 1 and sink.reasons == ["failed"]
    info = success_result_of(bad.info())
    assert (info.attached, info.queued, info.in_flight) == (False, 1, 0)  # kept for later
    failures = log.failures()
    assert len(failures) == 2  # the mail, and the detached() call: once each
    channel.broadcast("news", 2)
    assert inbox.data == [1, 2] and len(sink.mails) == 1
    redelivered = consume(bad)
    assert [(m.data, m.deliveries) for m in redelivered.mails] == [(1, 2), (2, 1)]


def test_failing_handler_is_logged_once_per_delivery(
    channel: MemoryChannel, log: LogCapture
) -> None:
    listener = add(channel, "a")
    inbox = consume(listener, Inbox(error=ValueError("boom")), max_deliveries=2)
    channel.dispatch("a", "e", "x")
    assert [m.deliveries for m in inbox.mails] == [1, 2]
    failures = [e for e in log.failures() if "log_failure" in e]
    assert len(failures) == 2
    errors = [e for e in log.events if "dead letter" in str(e.get("log_format"))]
    assert len(errors) == 1 and errors[0]["mail_id"] == inbox.mails[0].id
    assert errors[0]["listener"] == "a" and errors[0]["event"] == "e"


def test_on_dead_letter_failure_is_logged_not_lost(
    channel: MemoryChannel, log: LogCapture
) -> None:
    listener = add(channel, "a")

    def on_dead_letter(mail: Mail, failure: object) -> None:
        raise RuntimeError("dead letter office closed")

    consumer = success_result_of(listener.consume(
        Inbox(error=ValueError("boom")), max_deliveries=1, on_dead_letter=on_dead_letter
    ))
    channel.dispatch("a", "e", "x")
    assert consumer.dead_letters == 1
    assert any("settling" in str(e.get("log_format")) for e in log.failures())
    assert success_result_of(listener.info()).queued == 0


def test_broadcast_copies_are_independent(channel: MemoryChannel) -> None:
    add(channel, "a")
    add(channel, "b")
    carrier = RecordingCarrier()
    channel.subscribe("*", carrier)

    def vandal(mail: Mail) -> None:
        mail.data["x"] = "changed"

    success_result_of(channel.listener("a").consume(vandal))
    other = consume(channel.listener("b"))
    channel.broadcast("e", {"x": 1})
    assert other.data == [{"x": 1}] and carrier.messages[0].data == {"x": 1}


def test_stop_holds_own_in_flight_mail(channel: MemoryChannel) -> None:
    listener = add(channel, "a")
    inbox = consume(listener, Inbox(hold=True))
    channel.dispatch("a", "e", 1)
    channel.dispatch("a", "e", 2)
    success_result_of(listener.stop())
    info = success_result_of(listener.info())
    assert (info.queued, info.in_flight) == (1, 1)
    assert success_result_of(inbox.mails[0].ack()) is True  # still this consumer's
    assert len(inbox.mails) == 1  # stopped: nothing more
    success_result_of(listener.start())
    assert inbox.data == [1, 2]


def test_release_gives_mail_back_at_once(channel: MemoryChannel) -> None:
    listener = add(channel, "a")
    stream = listener.messages(max_in_flight=2)
    channel.dispatch("a", "e", 1)
    channel.dispatch("a", "e", 2)
    first, second = stream._buffer
    assert success_result_of(Deferred.fromCoroutine(stream.release(first))) is True
    assert success_result_of(Deferred.fromCoroutine(stream.release(first))) is False
    # The stale copy left the buffer; the new delivery is behind what was there.
    assert [(m.data, m.deliveries) for m in stream._buffer] == [(2, 1), (1, 2)]


def test_close_detaches_every_consumer(channel: MemoryChannel) -> None:
    a, b = add(channel, "a"), add(channel, "b")
    ca = success_result_of(a.consume(Inbox()))
    cb = success_result_of(b.consume(Inbox()))
    success_result_of(channel.mailboxes.close())
    assert success_result_of(ca.done) == "closed" and success_result_of(cb.done) == "closed"
    assert not success_result_of(a.info()).attached
    success_result_of(ca.stop())  # ended already: nothing to do


def test_missed_notice_coalesces_at_the_tail_only(channel: MemoryChannel) -> None:
    listener = add(channel, "a", mailbox_size=2)
    for n in range(4):
        channel.broadcast("e", n)
    info = success_result_of(listener.info())
    assert info.queued == 3  # two broadcasts and one notice (the notice passes the bound)
    failure_result_of(channel.dispatch("a", "e", "x"), MailboxFullError)
    stream = listener.messages(max_in_flight=3)
    mails = list(stream._buffer)
    assert [m.event for m in mails] == ["e", "e", "_missed"] and mails[2].data["count"] == 2
    for mail in mails[:2]:
        success_result_of(mail.ack())
    channel.broadcast("e", 4)
    channel.broadcast("e", 5)
    channel.broadcast("e", 6)
    assert [m.event for m in stream._buffer][3:] == ["e", "_missed"]


def test_serve_acks_missed_notices_with_a_warning(channel: MemoryChannel, log: LogCapture) -> None:
    listener = add(channel, "a", mailbox_size=1)
    channel.broadcast("e", 1)
    channel.broadcast("e", 2)
    ran: list[Any] = []
    listener.set_action("e", lambda mail: ran.append(mail.data))
    success_result_of(listener.serve())
    assert ran == [1]
    assert any("missed" in str(e.get("log_format")) and e.get("count") == 1 for e in log.events)
    assert success_result_of(listener.info()).queued == 0


@pytest_twisted.ensureDeferred
async def test_stream_closed_before_attach_and_cancelled_wait(channel: MemoryChannel) -> None:
    listener = add(channel, "a")
    stream = listener.messages()
    waiting = Deferred.fromCoroutine(stream.__anext__())
    waiting.cancel()
    failure_result_of(waiting, CancelledError)
    channel.dispatch("a", "e", 1)  # goes to the buffer, not to the cancelled waiter
    assert (await stream.__anext__()).data == 1
    await stream.close()
    await stream.close()
    assert [m async for m in stream] == []


def test_late_failure_after_stop_is_not_a_dead_letter(channel: MemoryChannel) -> None:
    listener = add(channel, "a")
    dead: list[Mail] = []
    handler = Inbox(hold=True)
    consumer = success_result_of(listener.consume(
        handler, max_deliveries=1, on_dead_letter=lambda mail, failure: dead.append(mail)
    ))
    channel.dispatch("a", "e", 1)
    success_result_of(consumer.stop())
    handler.held[0].errback(ValueError("too late"))  # the mail went back meanwhile
    assert dead == [] and consumer.dead_letters == 0
    assert [(m.data, m.deliveries) for m in consume(listener).mails] == [(1, 2)]
