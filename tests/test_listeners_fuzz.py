"""
Property-based fuzzing of the listeners' Python API on a MemoryChannel (its operations
fire at once, so Hypothesis drives them directly): arbitrary names, data and options
either work or raise the documented exception, and never change anything when they
raise; random sequences of operations keep the mailboxes' invariants (bounds, exactly
one holder per mail, own mail in order, nothing lost).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests._listeners import unique
from twisted_event_dispatcher.channels import MemoryChannel
from twisted_event_dispatcher.channels.message import encode_json
from twisted_event_dispatcher.errors import (
    InvalidDataError,
    ListenerExistsError,
    MailboxFullError,
    RemoteActionError,
    RequestTimeoutError,
    ReservedTypeError,
    UnknownGroupError,
    UnknownListenerError,
)
from twisted_event_dispatcher.listeners import Mail
from twisted_event_dispatcher.listeners.memory import MemoryMailboxes
from twisted_event_dispatcher.testing import failure_result_of

#: What a Deferred of the API may fail with (the rest raise at once).
DEFERRED_ERRORS = (
    UnknownListenerError, UnknownGroupError, ListenerExistsError, MailboxFullError,
    RemoteActionError,
)

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.binary(max_size=10), st.lists(st.integers(), max_size=3),
    st.sampled_from(["start", "stop", "closed", "_missed", "*", "a", "g", "e", "", " "]),
)
names = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["a", "g", "e", "start", "stop", "_x", "*", "a\n", "x" * 201, "\ud800"]),
    anything,
)
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.binary(max_size=5), st.sets(st.integers(), max_size=2),
)
data_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.dictionaries(st.integers(), inner, max_size=2),
    ),
    max_leaves=20,
)


def outcome(d: Deferred[Any]) -> Any:
    """The result or Failure of a memory operation (they fire at once)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, f"{d!r} did not fire at once"
    return box[0]


def snapshot(channel: MemoryChannel) -> Any:
    """Everything observable about the channel's listeners."""
    mailboxes = channel.mailboxes
    assert isinstance(mailboxes, MemoryMailboxes)
    ids = outcome(mailboxes.listener_ids())
    return [tuple(outcome(mailboxes.info(i))) for i in ids], {
        name: len(group.queue) for name, group in mailboxes._groups.items()
    }, channel.last_id


def fresh() -> MemoryChannel:
    channel = MemoryChannel(unique("fuzz"), clock=Clock())
    outcome(channel.add_listener("a", group="g", mailbox_size=3))
    outcome(channel.add_listener("b"))
    return channel


@settings(max_examples=200)
@given(operation=st.integers(0, 11), name=names, event=names, data=anything)
def test_names_work_or_raise_and_change_nothing(
    operation: int, name: Any, event: Any, data: Any
) -> None:
    channel = fresh()
    listener = channel.listener("a")
    calls: list[Callable[[], object]] = [
        lambda: channel.add_listener(name),
        lambda: channel.add_listener("new", group=name),
        lambda: channel.remove_listener(name),
        lambda: channel.listener_ids(name),
        lambda: channel.dispatch(name, event, data),
        lambda: channel.dispatch_group(name, event, data),
        lambda: channel.broadcast(event, data),
        lambda: channel.request(name, event, data, timeout=1),
        lambda: channel.request(name, event, data, group=True, timeout=1),
        lambda: channel.listener(name).info(),
        lambda: listener.set_action(event, print),
        lambda: listener.dispatch_to(name, event, data),
    ]
    before = snapshot(channel)
    try:
        result = calls[operation]()
    except ReservedTypeError:
        assert event in ("start", "stop")
    except (TypeError, ValueError):
        pass
    else:
        if isinstance(result, Deferred) and not result.called:  # a request, sent
            channel.clock.advance(1)  # type: ignore[attr-defined]
            failure_result_of(result, RequestTimeoutError)
            return
        got = outcome(result) if isinstance(result, Deferred) else result
        if not isinstance(got, Failure):
            return  # it worked (a request waits for its reply or its timeout)
        assert got.check(*DEFERRED_ERRORS), got.getTraceback()
    # Refused: nothing changed, no timer left behind.
    assert snapshot(channel) == before
    assert listener.actions == {}
    assert channel.clock.getDelayedCalls() == []


@settings(max_examples=200)
@given(data=data_values)
def test_data_is_stored_as_json_or_refused(data: Any) -> None:
    channel = fresh()
    before = snapshot(channel)
    try:
        expected = encode_json(data)
    except InvalidDataError:
        for call in (
            lambda: channel.dispatch("a", "e", data),
            lambda: channel.dispatch_group("g", "e", data),
            lambda: channel.broadcast("e", data),
            lambda: channel.request("a", "e", data),
        ):
            try:
                call()
            except InvalidDataError:
                continue
            raise AssertionError(f"{data!r} was accepted")  # noqa: B904
        assert snapshot(channel) == before
        return
    # Accepted: every consumer sees the same JSON, decoded.
    got: list[Mail] = []
    outcome(channel.listener("b").consume(got.append))
    outcome(channel.dispatch("b", "e", data))
    outcome(channel.broadcast("e", data))
    outcome(channel.listener("a").consume(got.append))
    outcome(channel.dispatch_group("g", "e", data))
    assert [m.data_json for m in got] == [expected] * 4
    decoded = json.loads(expected)
    dispatched, copy_b, copy_a, grouped = got
    for mail in (copy_b, copy_a):  # what its JSON says, whatever was sent (tuples, int keys)
        assert mail.data == decoded
    # A first delivery to one recipient gets the sender's object, as publish's carriers do.
    assert dispatched.data is data and grouped.data is data


def test_request_round_trips_data() -> None:
    channel = fresh()
    echo = channel.listener("b")
    echo.set_action("echo", lambda mail: mail.data)
    outcome(echo.serve())

    @settings(max_examples=100)
    @given(data=data_values)
    def check(data: Any) -> None:
        try:
            expected = json.loads(encode_json(data))
        except InvalidDataError:
            return
        assert outcome(channel.request("b", "echo", data)) == expected

    check()


@settings(max_examples=200)
@given(option=st.integers(0, 8), value=anything)
def test_options_work_or_raise(option: int, value: Any) -> None:
    channel = fresh()
    listener = channel.listener("b")
    calls: list[Callable[[], object]] = [
        lambda: channel.add_listener("new", mailbox_size=value),
        lambda: channel.add_listener("new", ack_timeout=value),
        lambda: channel.dispatch_group("g", "e", policy=value),
        lambda: channel.request("b", "e", timeout=value),
        lambda: channel.request("b", "e", group=value),
        lambda: listener.consume(print, max_in_flight=value),
        lambda: listener.consume(print, max_deliveries=value),
        lambda: listener.consume(print, auto_ack=value),
        lambda: listener.messages(max_in_flight=value),
    ]
    before = snapshot(channel)
    try:
        result = calls[option]()
    except (TypeError, ValueError):
        assert snapshot(channel) == before
        return
    if isinstance(result, Deferred):
        if not result.called:  # a request, sent
            result.cancel()
            failure_result_of(result, CancelledError)
            assert channel.clock.getDelayedCalls() == []
            return
        got = outcome(result)
        assert not isinstance(got, Failure) or got.check(*DEFERRED_ERRORS)


# -- every mail once, in order, to a consumer that acknowledges ----------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("dispatch"), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("group"), st.sampled_from(["round-robin", "least-busy"])),
        st.tuples(st.just("broadcast"), st.none()),
        st.tuples(st.just("stop"), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("start"), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("busy"), st.sampled_from(["a", "b", "c"])),
    ),
    max_size=40,
)


@settings(max_examples=150)
@given(ops=operations, in_flight=st.integers(1, 3))
def test_each_mail_reaches_one_acknowledging_consumer_in_order(
    ops: list[tuple[str, Any]], in_flight: int
) -> None:
    channel = MemoryChannel(unique("fuzz"), clock=Clock())
    received: dict[str, list[Mail]] = {}
    held: dict[str, list[Deferred[None]]] = {}
    for name in "abc":
        outcome(channel.add_listener(name, group="g" if name != "c" else None))
        received[name], held[name] = [], []

        def handler(mail: Mail, name: str = name) -> Any:
            received[name].append(mail)
            if mail.event == "slow":  # finishes later: holds a slot
                d: Deferred[None] = Deferred()
                held[name].append(d)
                return d
            return None

        outcome(channel.listener(name).consume(handler, max_in_flight=in_flight))
    sent: dict[str, list[int]] = {name: [] for name in "abc"}
    group_sent: list[int] = []
    for n, (op, arg) in enumerate(ops):
        if op == "dispatch":
            outcome(channel.dispatch(arg, "e", n))
            sent[arg].append(n)
        elif op == "group":
            outcome(channel.dispatch_group("g", "e", n, policy=arg))
            group_sent.append(n)
        elif op == "broadcast":
            outcome(channel.broadcast("e", n))
            for name in "abc":
                sent[name].append(n)
        elif op == "busy":
            outcome(channel.dispatch(arg, "slow", n))
            sent[arg].append(n)
        else:
            outcome(channel.dispatch(arg, op))
        for name in "abc":  # never more unfinished than allowed
            unfinished = sum(1 for d in held[name] if not d.called)
            assert unfinished <= in_flight
        if n % 3 == 0:
            for name in "abc":
                for d in held[name]:
                    if not d.called:
                        d.callback(None)
                        break
    for name in "abc":
        outcome(channel.dispatch(name, "start"))
    for _ in range(len(ops) + 1):
        for name in "abc":
            for d in held[name]:
                if not d.called:
                    d.callback(None)
    own = {
        name: [m.data for m in mails if m.source != "group"] for name, mails in received.items()
    }
    assert own == sent  # own mail and broadcasts: each once, in order
    taken = sorted(m.data for name in "ab" for m in received[name] if m.source == "group")
    assert taken == group_sent  # group mail: exactly one member each
    assert all(m.deliveries == 1 for mails in received.values() for m in mails)
    for name in "abc":
        info = outcome(channel.listener(name).info())
        assert (info.queued, info.in_flight) == (0, 0)


# -- a state machine over everything -------------------------------------------------------


class MailboxMachine(RuleBasedStateMachine):
    """
    Listeners come and go, consumers attach, hold, acknowledge, release and detach, the
    clock passes ack deadlines. After every step: bounds hold, each mail has one holder,
    nothing stored is lost, own mail is handed out oldest first.
    """

    consumers = Bundle("consumers")

    @initialize(target=consumers)
    def setup(self) -> Any:
        self.clock = Clock()
        self.channel = MemoryChannel(unique("machine"), clock=self.clock)
        mailboxes = self.channel.mailboxes
        assert isinstance(mailboxes, MemoryMailboxes)
        self.boxes = mailboxes
        self.stored: set[str] = set()  # mail ids accepted and neither acked nor discarded
        self.acked: set[str] = set()
        self.pending: dict[str, list[Mail]] = {}  # listener -> mails handed out, unsettled
        # What the sinks saw wrong (an assertion in a sink would only detach it).
        self.violations: list[str] = []
        for name, group, size in (("a", "g", 2), ("b", "g", 3), ("c", None, 1)):
            outcome(self.channel.add_listener(
                name, group=group, mailbox_size=size, ack_timeout=2.0
            ))
        return multiple(self._attach("a", 1), self._attach("b", 2))

    # -- listeners --

    @rule(name=st.sampled_from("abcd"), group=st.sampled_from([None, "g", "h"]),
          size=st.integers(1, 4), timeout=st.sampled_from([1.0, 5.0]))
    def add(self, name: str, group: str | None, size: int, timeout: float) -> None:
        result = outcome(self.channel.add_listener(
            name, group=group, mailbox_size=size, ack_timeout=timeout
        ))
        if isinstance(result, Failure):
            assert result.check(ListenerExistsError) and name in self.boxes._members

    @rule(name=st.sampled_from("abcd"))
    def remove(self, name: str) -> None:
        member = self.boxes._members.get(name)
        if member is not None:  # its own mail (queued and in flight) is discarded
            attachment = member.attachment
            mine = [e.id for e in member.queue]
            mine += list(attachment.own) if attachment else []
            self.stored.difference_update(mine)
        result = outcome(self.channel.remove_listener(name))
        assert (member is None) == isinstance(result, Failure)
        self.pending.pop(name, None)

    @rule(name=st.sampled_from("abcd"), running=st.booleans())
    def start_stop(self, name: str, running: bool) -> None:
        outcome(self.channel.dispatch(name, "start" if running else "stop"))

    # -- mail --

    def _stored(self, result: Any) -> None:
        if not isinstance(result, Failure):
            assert result == str(self.boxes._seq)  # ids: one counter per channel
            self.stored.add(result)
        else:
            assert result.check(UnknownListenerError, UnknownGroupError, MailboxFullError)

    @rule(name=st.sampled_from("abcd"), n=st.integers(0, 9))
    def dispatch(self, name: str, n: int) -> None:
        self._stored(outcome(self.channel.dispatch(name, "e", n)))

    @rule(group=st.sampled_from(["g", "h"]), policy=st.sampled_from(["round-robin", "least-busy"]))
    def dispatch_group(self, group: str, policy: str) -> None:
        self._stored(outcome(self.channel.dispatch_group(group, "e", policy=policy)))

    @rule()
    def broadcast(self) -> None:
        before = self.boxes._seq
        outcome(self.channel.broadcast("e"))
        # A copy per listener, or a new _missed notice (one that grows keeps its id).
        self.stored.update(str(n) for n in range(before + 1, self.boxes._seq + 1))

    # -- consumers --

    @rule(target=consumers, name=st.sampled_from("abcd"), slots=st.integers(1, 3))
    def attach(self, name: str, slots: int) -> Any:
        attachment = self._attach(name, slots)
        return multiple() if attachment is None else attachment

    def _attach(self, name: str, slots: int) -> Any:
        machine = self

        class Sink:
            def mail(self, mail: Mail) -> None:
                machine._handed(mail)

            def detached(self, reason: str) -> None:
                if reason not in ("removed", "replaced", "closed"):
                    machine.violations.append(f"detached({reason!r})")

        self.pending[name] = []
        result = outcome(self.boxes.attach(name, Sink(), slots))
        if isinstance(result, Failure):
            assert result.check(UnknownListenerError)
            return None
        return result

    def _handed(self, mail: Mail) -> None:
        member = self.boxes._members.get(mail.listener)
        if member is None or not member.running:
            self.violations.append(f"{mail!r} handed to a stopped or removed listener")
        elif mail.source != "group" and any(int(e.id) < int(mail.id) for e in member.queue):
            self.violations.append(f"{mail!r} handed before older mail")
        if mail.id in self.acked:
            self.violations.append(f"{mail!r} handed again after it was acknowledged")
        self.pending.setdefault(mail.listener, []).append(mail)

    @rule(attachment=consumes(consumers))
    def detach(self, attachment: Any) -> None:
        outcome(attachment.detach())

    @precondition(lambda self: any(self.pending.values()))
    @rule(which=st.integers(0, 20), release=st.booleans())
    def settle(self, which: int, release: bool) -> None:
        mails = [m for ms in self.pending.values() for m in ms]
        mail = mails[which % len(mails)]
        for ms in self.pending.values():
            if mail in ms:
                ms.remove(mail)
        settled = outcome(mail._attachment.release(mail) if release  # type: ignore[union-attr]
                          else mail.ack())
        if settled and not release:
            assert mail.id not in self.acked, f"{mail!r} acknowledged twice"
            self.acked.add(mail.id)
            self.stored.discard(mail.id)

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- invariants --

    @invariant()
    def sinks_saw_nothing_wrong(self) -> None:
        assert self.violations == []

    @invariant()
    def bounds_and_single_holders(self) -> None:
        holders: dict[str, str] = {}
        for member in self.boxes._members.values():
            attachment = member.attachment
            own = len(attachment.own) if attachment else 0
            # A _missed notice may pass the bound (by one at a time: it is only added
            # when the tail is not one already).
            missed = sum(1 for e in member.queue if e.source == "missed")
            if attachment is not None:
                missed += sum(1 for m, _ in attachment.own.values() if m.source == "missed")
            assert len(member.queue) + own <= member.mailbox_size + missed
            # New notices coalesce (one given back may sit next to a newer one).
            fresh = [e.source == "missed" and not e.deliveries for e in member.queue]
            assert not any(a and b for a, b in zip(fresh, fresh[1:]))
            if attachment is not None:
                assert len(attachment.own) + len(attachment.group) <= attachment.max_in_flight
                for mail_id in list(attachment.own) + list(attachment.group):
                    assert mail_id not in holders, f"{mail_id} held twice"
                    holders[mail_id] = member.id
            for entry in member.queue:
                assert entry.id not in holders
                holders[entry.id] = member.id
        for group in self.boxes._groups.values():
            assert len(group.queue) <= self.boxes.group_size
            for entry in group.queue:
                assert entry.id not in holders
                holders[entry.id] = group.name
        # Nothing stored is lost; nothing acknowledged comes back.
        assert set(holders) == self.stored, (set(holders) ^ self.stored)
        assert not (set(holders) & self.acked)

    def teardown(self) -> None:
        if hasattr(self, "boxes"):
            self.boxes.close()
            assert self.clock.getDelayedCalls() == []


MailboxMachine.TestCase.settings = settings(
    MailboxMachine.TestCase.settings, max_examples=60, stateful_step_count=40
)
test_mailbox_machine = MailboxMachine.TestCase
