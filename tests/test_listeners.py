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
    UnknownGroupError,
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
    assert [m.event for m in stream._buffer][-2:] == ["e", "_missed"]


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


# -- found by attacking it (each failed on the first version) ------------------------------


@pytest_twisted.ensureDeferred
async def test_stream_next_calls_waiting_together_each_get_a_mail(
    channel: MemoryChannel,
) -> None:
    listener = add(channel, "a")
    stream = listener.messages(max_in_flight=2)
    first = Deferred.fromCoroutine(stream.__anext__())
    second = Deferred.fromCoroutine(stream.__anext__())
    third = Deferred.fromCoroutine(stream.__anext__())
    third.cancel()  # forgotten: never given a mail
    failure_result_of(third, CancelledError)
    channel.dispatch("a", "e", 1)
    channel.dispatch("a", "e", 2)
    assert success_result_of(first).data == 1  # (it waited forever)
    assert success_result_of(second).data == 2
    waiting = Deferred.fromCoroutine(stream.__anext__())
    waiting_too = Deferred.fromCoroutine(stream.__anext__())
    await stream.close()
    for ended in (waiting, waiting_too):  # the end reaches every waiting call
        failure_result_of(ended, StopAsyncIteration)


@pytest_twisted.ensureDeferred
async def test_stream_skips_group_mail_taken_back(channel: MemoryChannel, clock: Clock) -> None:
    stopping = add(channel, "stopping", group="g", ack_timeout=5)
    other = add(channel, "other", group="g", ack_timeout=5)
    stream = stopping.messages()
    inbox = consume(other, Inbox(hold=True))
    channel.dispatch_group("g", "job", 1)  # to "stopping", buffered in its stream
    channel.dispatch("stopping", "own", "x")
    success_result_of(stopping.stop())  # the group mail goes to the other member
    assert [(m.data, m.deliveries) for m in inbox.mails] == [(1, 2)]
    # A stopped listener receives nothing: the stream does not hand the mail out again.
    pending = Deferred.fromCoroutine(stream.__anext__())
    assert_no_result(pending)
    success_result_of(stopping.start())
    own = success_result_of(pending)
    assert own.data == "x"  # its own mail, kept for it
    # Group mail whose ack deadline passed while it sat in the stream is not handed out.
    success_result_of(own.ack())
    success_result_of(inbox.mails[0].ack())
    success_result_of(other.stop())
    channel.dispatch_group("g", "job", 2)
    success_result_of(other.start())
    clock.advance(5)  # "stopping" never took job 2 from its stream: back to the group
    assert [m.data for m in inbox.mails] == [1, 2]
    late = Deferred.fromCoroutine(stream.__anext__())
    assert_no_result(late)
    late.cancel()
    failure_result_of(late, CancelledError)
    await stream.close()


def test_consumer_attached_from_a_replaced_ones_done_leaves_one_attached(
    channel: MemoryChannel,
) -> None:
    listener = add(channel, "a")
    first = success_result_of(listener.consume(Inbox(hold=True)))
    channel.dispatch("a", "e", 1)
    reconnects = []

    def reconnect(reason: str) -> None:  # a client that attaches again when replaced
        reconnects.append(success_result_of(listener.consume(Inbox(hold=True))))

    first.done.addCallback(reconnect)
    newest = success_result_of(listener.consume(Inbox(hold=True)))
    (reconnected,) = reconnects
    # One consumer is attached; the other one's done says it was replaced (before: both
    # believed they were, and mail 1 was held by one the listener no longer knew).
    reasons = [c.done.called and c.done.result for c in (reconnected, newest)]
    assert sorted(reasons, key=str) == [False, "replaced"]
    attached = reconnected if reasons[0] is False else newest
    info = success_result_of(listener.info())
    assert (info.attached, info.queued, info.in_flight) == (True, 0, 1)
    success_result_of(attached.stop())
    assert [(m.data, m.deliveries) for m in consume(listener).mails] == [(1, 3)]


def test_removed_consumer_is_told_once_the_listener_is_gone(channel: MemoryChannel) -> None:
    listener = add(channel, "a", group="g")
    consumer = success_result_of(listener.consume(Inbox()))
    seen: list[Any] = []

    def look(reason: str) -> None:
        seen.append((reason, success_result_of(channel.listener_ids("g"))))
        seen.append(failure_result_of(channel.dispatch_group("g", "e")).type)

    consumer.done.addCallback(look)
    success_result_of(listener.remove())
    assert seen == [("removed", []), UnknownGroupError]


def test_close_tells_consumers_once_all_mail_is_back(channel: MemoryChannel) -> None:
    a, b = add(channel, "a"), add(channel, "b")
    ca = success_result_of(a.consume(Inbox()))
    held = consume(b, Inbox(hold=True))
    channel.dispatch("b", "e", 1)  # in flight
    channel.dispatch("b", "e", 2)  # queued
    again = Inbox()
    ca.done.addCallback(lambda _: b.consume(again))  # reconnects b when a is closed
    success_result_of(channel.mailboxes.close())
    assert held.data == [1]
    assert [(m.data, m.deliveries) for m in again.mails] == [(1, 2), (2, 1)]  # in order


def test_broadcast_from_a_carrier_keeps_the_offsets_order_in_mailboxes(
    channel: MemoryChannel,
) -> None:
    inbox = consume(add(channel, "a"))

    class Echo(RecordingCarrier):
        def deliver(self, message: Any) -> None:
            super().deliver(message)
            if message.data == 1:
                channel.broadcast("e", 2)  # from inside the fan-out of broadcast 1

    channel.subscribe("*", Echo())
    success_result_of(channel.broadcast("e", 1))
    assert [(m.data, m.offset) for m in inbox.mails] == [(1, 1), (2, 2)]


def test_names_of_str_subclasses_are_checked_by_their_characters(
    channel: MemoryChannel,
) -> None:
    class Sneaky(str):  # claims to be a fine name
        def isprintable(self) -> bool:
            return True

        def startswith(self, *args: Any) -> bool:
            return False

    add(channel, "a")
    carrier = RecordingCarrier()
    channel.subscribe("*", carrier)
    for call in (
        lambda: channel.add_listener(Sneaky("x\ny")),
        lambda: channel.add_listener(group=Sneaky("_g")),
        lambda: channel.dispatch("a", Sneaky("_missed")),
        lambda: channel.broadcast(Sneaky("e\ndata: injected")),
        lambda: channel.publish(Sneaky("_gap")),
        lambda: channel.request(Sneaky("a\r"), "e"),
        lambda: channel.listener("a").set_action(Sneaky("_x"), print),
    ):
        with pytest.raises(ValueError):
            call()
    assert carrier.messages == [] and success_result_of(channel.listener_ids()) == ["a"]
    fine = add(channel, Sneaky("fine"))
    assert type(fine.id) is str  # stored as a plain str
    success_result_of(channel.broadcast(Sneaky("ok"), 1))
    assert type(carrier.messages[0].event) is str


def test_handler_returning_a_generator_is_a_failure_not_a_success(
    channel: MemoryChannel, log: LogCapture
) -> None:
    listener = add(channel, "a")
    ran: list[Any] = []

    def forgot_inline_callbacks(mail: Mail) -> Any:
        ran.append(mail.data)
        yield None

    async def async_generator(mail: Mail) -> Any:
        yield None

    dead: list[Mail] = []
    consumer = success_result_of(listener.consume(
        lambda mail: forgot_inline_callbacks(mail) if mail.data == 1 else async_generator(mail),
        max_deliveries=1, on_dead_letter=lambda mail, failure: dead.append(mail),
    ))
    channel.dispatch("a", "e", 1)
    channel.dispatch("a", "e", 2)
    assert ran == [] and consumer.processed == 0  # (before: both acknowledged, unrun)
    assert [m.data for m in dead] == [1, 2]
    failures = [str(e["log_failure"].value) for e in log.failures() if "log_failure" in e]
    assert len(failures) == 2 and all("@inlineCallbacks" in f for f in failures)


def test_reply_nested_past_the_parser_is_an_error(
    channel: MemoryChannel, clock: Clock, log: LogCapture
) -> None:
    mailboxes = channel.mailboxes
    assert channel._requests is not None
    answer = channel._requests.add("c1", "svc", "x", 5)
    mailboxes.reply(mailboxes.reply_address, "c1", True, "[" * 100_000 + "]" * 100_000)
    error = failure_result_of(answer, RemoteActionError).value  # at once, not after 5 s
    assert isinstance(error, RemoteActionError) and error.remote_type == "InvalidReply"
    assert log.failures() == [] and clock.getDelayedCalls() == []


def test_actions_set_on_a_handle_nobody_keeps_are_not_lost(channel: MemoryChannel) -> None:
    # A listener registered elsewhere (another process, on Redis) or added later: the
    # handle is not kept by the caller. Before: the action went with it, NoActionError.
    channel.listener("calc").set_action("add", lambda mail: sum(mail.data))
    calc = add(channel, "calc")
    success_result_of(calc.serve())
    assert success_result_of(channel.request("calc", "add", [1, 2])) == 3
    success_result_of(calc.remove())
    assert "calc" not in channel._registered  # removed through the channel: let go


def test_stop_whose_handlers_remove_the_whole_group_does_not_raise(
    channel: MemoryChannel,
) -> None:
    a, b = add(channel, "a", group="g"), add(channel, "b", group="g")
    consume(a, Inbox(hold=True))
    success_result_of(b.stop())
    channel.dispatch_group("g", "job", 1)  # held by a
    success_result_of(b.start())

    def leave(mail: Mail) -> None:  # takes a's job when a stops, and everyone leaves
        success_result_of(mail.ack())
        success_result_of(a.remove())
        success_result_of(b.remove())

    success_result_of(b.consume(leave))
    success_result_of(a.stop())  # before: KeyError 'g' raised out of stop()
    assert success_result_of(channel.listener_ids()) == []
    failure_result_of(channel.dispatch_group("g", "job", 2), UnknownGroupError)
