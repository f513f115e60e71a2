"""
The listener operations of every channel (eric-sse's model: ids with mailboxes, groups,
requests), mixed into :class:`~.base.Channel`. They validate and encode at once (bad
input raises before anything changes) and delegate to :attr:`ListenerMethods.mailboxes`,
the backend's storage (:class:`~twisted_event_dispatcher.listeners.Mailboxes`).
"""

from __future__ import annotations

import uuid
import weakref
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred

from ..errors import ReservedTypeError
from ._names import check_count, check_event_name, check_seconds
from .message import Message

if TYPE_CHECKING:
    from ..listeners._backend import Mailboxes
    from ..listeners._requests import PendingRequests
    from ..listeners.listener import Listener
    from .base import Channel

__all__ = ["ListenerMethods"]

#: The message types ``start`` and ``stop`` (``listeners.mail.CONTROL_TYPES``; repeated
#: here because the listeners package imports this module).
_CONTROL_TYPES = frozenset({"start", "stop"})


class ListenerMethods:
    """Listeners on a channel; see :class:`~.base.Channel`."""

    _encode: Any  # (data) -> JSON text: the channel's check and encoding, as publish's

    def __init__(self) -> None:
        self._mailboxes: Mailboxes | None = None
        self._requests: PendingRequests | None = None
        # Listener handles: the same object for an id while it is in use (its actions live
        # on it); the ones this channel registered, or that have actions, are kept until
        # removed through it.
        self._handles: weakref.WeakValueDictionary[str, Listener] = (
            weakref.WeakValueDictionary()
        )
        self._registered: dict[str, Listener] = {}

    @property
    def mailboxes(self) -> Mailboxes:
        """
        The channel's listeners and their mailboxes (made by :meth:`_make_mailboxes` on
        first use); replies to this process's requests reach :meth:`request` through it.
        """
        if self._mailboxes is None:
            from ..listeners._requests import PendingRequests

            mailboxes = self._make_mailboxes()
            self._requests = PendingRequests(cast("Channel", self))
            mailboxes.on_reply = self._requests.on_reply
            self._mailboxes = mailboxes
        return self._mailboxes

    def _make_mailboxes(self) -> Mailboxes:
        """The backend's :class:`~twisted_event_dispatcher.listeners.Mailboxes`."""
        raise NotImplementedError(f"{type(self).__name__} has no listener backend")

    def add_listener(
        self,
        listener_id: str | None = None,
        *,
        group: str | None = None,
        mailbox_size: int = 1000,
        ack_timeout: float = 30.0,
    ) -> Deferred[Listener]:
        """
        Register a listener (running, with an empty mailbox) and fire with its handle.

        :param listener_id: its id (a generated one if None); unique on the channel.
        :param group: the group whose messages it takes a share of (see
            :meth:`dispatch_group`).
        :param mailbox_size: the bound on its own mailbox (queued + unacknowledged).
        :param ack_timeout: seconds its consumer has to acknowledge a group message
            before the message goes back to the group (at least 0.1).
        :raises TypeError, ValueError: a bad name or option (at once; nothing changes).
        :return: fails with :class:`~twisted_event_dispatcher.errors.ListenerExistsError`
            when the id is taken.
        """
        if listener_id is not None:
            listener_id = check_event_name(listener_id, "listener id")
        if group is not None:
            group = check_event_name(group, "group name")
        check_count(mailbox_size, "mailbox_size")
        if check_seconds(ack_timeout, "ack_timeout") < 0.1:  # (less: redelivery busy-loops)
            raise ValueError(f"ack_timeout must be at least 0.1 seconds, got {ack_timeout!r}")

        def registered(new_id: str) -> Listener:
            handle = self.listener(new_id)
            handle.group = group
            self._registered[new_id] = handle
            return handle

        return self.mailboxes.register(listener_id, group, mailbox_size, ack_timeout).addCallback(
            registered
        )

    def listener(self, listener_id: str) -> Listener:
        """
        The handle of listener ``listener_id``: no I/O and no check that it exists (an
        unknown id fails when the handle is used). The same handle while it is in use, so
        the actions set on it are the ones :meth:`~.Listener.serve` runs.
        """
        listener_id = check_event_name(listener_id, "listener id")
        handle = self._handles.get(listener_id)
        if handle is None:
            from ..listeners.listener import Listener

            handle = Listener(cast("Channel", self), listener_id)
            self._handles[listener_id] = handle
        return handle

    def _keep_handle(self, handle: Listener) -> None:
        """
        Keep ``handle`` (it has actions) until its listener is removed through this
        channel: ``channel.listener(id).set_action(...)`` must not lose the action when
        that handle is dropped (the listener may be added later, or live in another process).
        """
        self._registered.setdefault(handle.id, handle)

    def remove_listener(self, listener_id: str) -> Deferred[None]:
        """
        Remove a listener: its own mailbox is discarded, its unacknowledged group messages
        go back to the group, its consumer ends (reason ``"removed"``).
        Fails with :class:`~twisted_event_dispatcher.errors.UnknownListenerError`.
        """
        listener_id = check_event_name(listener_id, "listener id")

        def removed(_: None) -> None:
            self._registered.pop(listener_id, None)

        return self.mailboxes.remove(listener_id).addCallback(removed)

    def listener_ids(self, group: str | None = None) -> Deferred[list[str]]:
        """Every listener's id (of ``group`` only, if given), in registration order."""
        if group is not None:
            group = check_event_name(group, "group name")
        return self.mailboxes.listener_ids(group)

    def broadcast(self, event: str, data: Any = None) -> Deferred[Message]:
        """
        Publish to the live subscribers (as :meth:`publish`) and copy the message into every
        listener's mailbox, in one order for all. A full mailbox gets a ``_missed`` notice
        (with the count) instead of the copy; the broadcast itself never fails for it.
        """
        event = check_event_name(event)
        _check_not_control(event, "broadcast")
        return self.mailboxes.put_all(event, data, self._encode(data))

    def dispatch(self, listener_id: str, event: str, data: Any = None) -> Deferred[str | None]:
        """
        Put a message into one listener's mailbox; fires with its mail id. ``start`` and
        ``stop`` (with no data) start or stop the listener instead and fire with None.
        Fails with :class:`~twisted_event_dispatcher.errors.UnknownListenerError` or
        :class:`~twisted_event_dispatcher.errors.MailboxFullError` (nothing stored).
        """
        if type(listener_id) is not str or listener_id not in self._registered:
            listener_id = check_event_name(listener_id, "listener id")  # (registered: checked)
        event = check_event_name(event)
        if event in _CONTROL_TYPES:
            if data is not None:
                raise ReservedTypeError(
                    f"{event!r} starts or stops a listener and takes no data, got {data!r}"
                )
            running: Deferred[Any] = self.mailboxes.set_running(listener_id, event == "start")
            return running
        result: Deferred[Any] = self.mailboxes.put(listener_id, event, data, self._encode(data))
        return result

    def dispatch_group(
        self, group: str, event: str, data: Any = None, *, policy: str = "round-robin"
    ) -> Deferred[str]:
        """
        Put a message into ``group``'s queue: exactly one running member takes it (the next
        in turn with a free slot: ``"round-robin"``; or ``"least-busy"``). Fails with
        :class:`~twisted_event_dispatcher.errors.UnknownGroupError` (no member) or
        :class:`~twisted_event_dispatcher.errors.MailboxFullError` (the queue is full).
        """
        group = check_event_name(group, "group name")
        event = check_event_name(event)
        _check_not_control(event, "dispatch_group")
        _check_policy(policy)
        return self.mailboxes.put_group(group, event, data, self._encode(data), policy)

    def request(
        self,
        target: str,
        event: str,
        data: Any = None,
        *,
        group: bool = False,
        timeout: float = 10.0,
    ) -> Deferred[Any]:
        """
        Dispatch a request to listener ``target`` (or, with ``group=True``, to one member of
        group ``target``) and fire with its action's return value.

        Fails with :class:`~twisted_event_dispatcher.errors.RemoteActionError` (the action
        raised, or there is none for ``event``), with
        :class:`~twisted_event_dispatcher.errors.RequestTimeoutError` after ``timeout``
        seconds without a reply (the action may still run), or as :meth:`dispatch` does.
        Cancelling the Deferred forgets the request (a late reply is ignored).
        """
        if not isinstance(group, bool):
            raise TypeError(f"group must be a bool, got {type(group).__name__}")
        target = check_event_name(target, "group name" if group else "listener id")
        event = check_event_name(event)
        _check_not_control(event, "request")
        check_seconds(timeout, "timeout")
        data_json = self._encode(data)
        mailboxes = self.mailboxes
        assert self._requests is not None  # made with the mailboxes
        requests = self._requests
        correlation = uuid.uuid4().hex
        answer = requests.add(correlation, target, event, timeout)
        if group:
            sent = mailboxes.put_group(
                target, event, data, data_json,
                reply_to=mailboxes.reply_address, correlation=correlation,
            )
        else:
            sent = mailboxes.put(
                target, event, data, data_json,
                reply_to=mailboxes.reply_address, correlation=correlation,
            )
        sent.addCallbacks(requests.sent, requests.fail, (correlation,), {}, (correlation,))
        return answer


def _check_not_control(event: str, where: str) -> None:
    if event in _CONTROL_TYPES:
        raise ReservedTypeError(
            f"{event!r} is reserved: it starts or stops one listener, through "
            f"dispatch(listener_id, {event!r}), not {where}"
        )


def _check_policy(policy: object) -> None:
    from ..listeners._backend import POLICIES

    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
