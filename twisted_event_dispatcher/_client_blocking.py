"""
The hub client for threaded code: :class:`BlockingHubClient` runs each call of a
:class:`~twisted_event_dispatcher.client.HubClient` in the reactor thread through crochet
and blocks the calling thread until the answer, or until ``timeout`` seconds passed.

crochet runs the reactor: call ``crochet.setup()`` first (``BlockingHubClient.connect``
does, unless ``setup=False``), or ``crochet.no_setup()`` in an application whose reactor
runs already (then call from any thread but the reactor's). Streams and watches are plain
iterators in the calling thread; their mail is settled with blocking calls too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import crochet
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.python import threadable
from twisted.python.failure import Failure

from .errors import ReactorThreadError, SyncTimeoutError

if TYPE_CHECKING:
    from ._client_stream import (
        ClientEvent,
        ClientMail,
        ClientNotice,
        ClientRefusal,
        ClientStream,
        ClientWatch,
    )
    from .client import HubClient

__all__ = ["BlockingHubClient", "BlockingMail", "BlockingStream", "BlockingWatch"]

_T = TypeVar("_T")

#: How long a blocking iteration waits between checks for Ctrl-C, in seconds.
_POLL = 1.0
#: Extra seconds a blocking ``request`` waits beyond its own timeout: the hub answers a
#: request that got no reply with a timeout error, which should be the error seen.
_REQUEST_MARGIN = 5.0


def _blocking(what: str, function: Callable[[], object], timeout: float | None) -> Any:
    """
    Run ``function`` in the reactor thread and wait for its result (``timeout`` None:
    without limit, still interruptible by Ctrl-C).

    :raises ReactorThreadError: called from the reactor thread (waiting would deadlock).
    :raises SyncTimeoutError: no result in time; the call's Deferred is cancelled, and
        how it ends then (``CancelledError``, or a failure that came meanwhile) is
        dropped: nobody waits for it any more, so it is not logged as an unhandled error.
    """
    if threadable.isInIOThread():
        raise ReactorThreadError(
            f"BlockingHubClient {what} was called from the reactor thread, where waiting "
            "would deadlock; use HubClient and its Deferreds there"
        )
    abandoned = False

    def call() -> Deferred[Any]:
        def settle(result: object) -> object:
            # Past the timeout crochet would log the failure ("Unhandled error in
            # EventualResult") since its result is never retrieved.
            return None if abandoned and isinstance(result, Failure) else result

        return maybeDeferred(function).addBoth(settle)

    eventual = crochet.run_in_reactor(call)()
    try:
        if timeout is not None:
            return eventual.wait(timeout)
        while True:
            try:
                return eventual.wait(_POLL)
            except crochet.TimeoutError:
                continue
    except crochet.TimeoutError:
        abandoned = True  # (read in the reactor thread, which the cancel below runs in)
        eventual.cancel()
        eventual.original_failure()  # a failure that came before: retrieved, not logged
        raise SyncTimeoutError(f"{what} did not finish within {timeout:g}s") from None


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class BlockingMail:
    """A :class:`~twisted_event_dispatcher.client.ClientMail`, settled by blocking calls."""

    def __init__(self, mail: ClientMail, timeout: float) -> None:
        self.mail = mail
        self.id = mail.id
        self.event = mail.event
        self.data = mail.data
        self.deliveries = mail.deliveries
        self.source = mail.source
        self.listener = mail.listener
        self.channel = mail.channel
        self.is_request = mail.is_request
        self._timeout = timeout

    def ack(self) -> bool:
        """Send its acknowledgement (see ``ClientMail.ack``: True means sent)."""
        return bool(_blocking("ack", self.mail.ack, self._timeout))

    def reply(self, value: Any) -> bool:
        """Answer the request with ``value``."""
        return bool(_blocking("reply", lambda: self.mail.reply(value), self._timeout))

    def fail(self, message: str) -> bool:
        """Fail the request with ``message``."""
        return bool(_blocking("fail", lambda: self.mail.fail(message), self._timeout))

    def release(self) -> bool:
        """Give it back for redelivery."""
        return bool(_blocking("release", self.mail.release, self._timeout))

    def __repr__(self) -> str:
        return repr(self.mail).replace("<ClientMail", "<BlockingMail", 1)


class _BlockingIterator:
    """Shared by streams and watches: blocking ``next`` with an optional timeout."""

    _source: ClientStream | ClientWatch

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    def _next(self, timeout: float | None) -> Any:
        source = self._source

        def next_item() -> Deferred[Any]:
            d: Deferred[Any] = source.next()
            if timeout is not None:
                from twisted.internet import reactor

                d.addTimeout(timeout, reactor)
            return d

        try:
            return _blocking("next", next_item, None)
        except DeferredTimeoutError:
            raise SyncTimeoutError(f"nothing arrived within {timeout:g}s") from None

    @property
    def connected(self) -> bool:
        """True while it is open on a live connection."""
        return self._source.connected

    @property
    def ended(self) -> bool:
        """True once it ended for good."""
        return self._source.ended

    @property
    def reconnects(self) -> int:
        """How many times it reconnected."""
        return self._source.reconnects

    def close(self) -> None:
        """End it (see ``ClientStream.close``)."""
        _blocking("close", self._source.close, self._timeout)


class BlockingStream(_BlockingIterator):
    """
    A listener's stream as a plain iterator of :class:`BlockingMail`: ``for mail in
    stream`` blocks until the next mail, and stops when the stream ended (raises the
    error that ended it, if one did). :meth:`get` waits at most ``timeout``.
    """

    def __init__(self, stream: ClientStream, timeout: float) -> None:
        super().__init__(timeout)
        self._source = self.stream = stream

    def __iter__(self) -> Iterator[BlockingMail]:
        return self

    def __next__(self) -> BlockingMail:
        mail = self.get()
        if mail is None:
            raise StopIteration
        return mail

    @property
    def refused(self) -> list[ClientRefusal]:
        """The settle lines the hub refused lately (see ``ClientStream.refused``)."""
        return list(self.stream.refused)

    def get(self, timeout: float | None = None) -> BlockingMail | None:
        """
        The next mail (None: the stream ended). Raises
        :class:`~twisted_event_dispatcher.errors.SyncTimeoutError` when none arrived
        within ``timeout`` seconds (None: no limit); no mail is lost by it.
        """
        mail: ClientMail | None = self._next(timeout)
        return None if mail is None else BlockingMail(mail, self._timeout)


class BlockingWatch(_BlockingIterator):
    """A watch as a plain iterator of ``ClientEvent`` and ``ClientNotice`` items."""

    def __init__(self, watch: ClientWatch, timeout: float) -> None:
        super().__init__(timeout)
        self._source = self.watch = watch

    def __iter__(self) -> Iterator[ClientEvent | ClientNotice]:
        return self

    def __next__(self) -> ClientEvent | ClientNotice:
        item = self.get()
        if item is None:
            raise StopIteration
        return item

    def get(self, timeout: float | None = None) -> ClientEvent | ClientNotice | None:
        """The next item (None: the watch ended); ``SyncTimeoutError`` past ``timeout``."""
        item: ClientEvent | ClientNotice | None = self._next(timeout)
        return item


class BlockingHubClient:
    """
    :class:`~twisted_event_dispatcher.client.HubClient`'s calls, blocking (see the
    module docstring). Each call takes ``timeout=`` (seconds; the client's ``timeout``
    by default) and raises
    :class:`~twisted_event_dispatcher.errors.SyncTimeoutError` past it; the hub's errors
    are raised as ``HubClient`` raises them. Use it as a context manager to close it.
    """

    def __init__(self, client: HubClient, timeout: float = 10.0) -> None:
        self.client = client
        self.timeout = _check_timeout(timeout)

    @classmethod
    def connect(
        cls, url: str, *, token: str | None = None, timeout: float = 10.0, setup: bool = True,
        **options: Any,
    ) -> BlockingHubClient:
        """
        Connect (see ``HubClient.connect`` for ``url``, ``token`` and ``options``);
        ``setup`` calls :func:`crochet.setup` first (a no-op after ``crochet.no_setup()``).
        """
        from .client import HubClient

        timeout = _check_timeout(timeout)
        if setup:
            crochet.setup()

        def connect() -> Deferred[HubClient]:
            return HubClient.connect(url, token=token, **options)

        return cls(_blocking("connect", connect, timeout), timeout)

    def _wait(self, what: str, call: Callable[[], Deferred[_T]], timeout: float | None) -> _T:
        result: _T = _blocking(what, call, self.timeout if timeout is None else timeout)
        return result

    def create_channel(
        self, channel_id: str | None = None, *, timeout: float | None = None
    ) -> str:
        """Create a channel; its name."""
        return self._wait("create_channel", lambda: self.client.create_channel(channel_id),
                          timeout)

    def register(
        self, channel: str | None, listener_id: str | None = None, *, group: str | None = None,
        mailbox_size: int | None = None, ack_timeout: float | None = None,
        timeout: float | None = None,
    ) -> str:
        """Register a listener; its id."""
        return self._wait("register", lambda: self.client.register(
            channel, listener_id, group=group, mailbox_size=mailbox_size,
            ack_timeout=ack_timeout,
        ), timeout)

    def dispatch(
        self, channel: str | None, listener_id: str, event: str, data: Any = None, *,
        timeout: float | None = None,
    ) -> str | None:
        """Dispatch to one listener; the mail id."""
        return self._wait("dispatch", lambda: self.client.dispatch(
            channel, listener_id, event, data), timeout)

    def dispatch_group(
        self, channel: str | None, group: str, event: str, data: Any = None, *,
        timeout: float | None = None,
    ) -> str:
        """Dispatch to one member of a group; the mail id."""
        return self._wait("dispatch_group", lambda: self.client.dispatch_group(
            channel, group, event, data), timeout)

    def broadcast_message(
        self, channel: str | None, event: str, data: Any = None, *,
        timeout: float | None = None,
    ) -> int:
        """Broadcast; the event's offset."""
        return self._wait("broadcast_message", lambda: self.client.broadcast_message(
            channel, event, data), timeout)

    def request(
        self, channel: str | None, target: str, event: str, data: Any = None, *,
        group: bool = False, timeout: float = 10.0,
    ) -> Any:
        """
        Send a request and return its reply; ``timeout`` is the hub's wait for the reply
        (this call waits a few seconds more, for the hub's timeout answer).
        """
        return _blocking("request", lambda: self.client.request(
            channel, target, event, data, group=group, timeout=timeout,
        ), _check_timeout(timeout) + _REQUEST_MARGIN)

    def remove_listener(
        self, channel: str | None, listener_id: str, *, timeout: float | None = None
    ) -> None:
        """Remove a listener."""
        self._wait("remove_listener", lambda: self.client.remove_listener(
            channel, listener_id), timeout)

    def remove_channel(self, channel: str, *, timeout: float | None = None) -> None:
        """Remove a channel."""
        self._wait("remove_channel", lambda: self.client.remove_channel(channel), timeout)

    def stream(
        self, channel: str | None, listener_id: str, *, auto_ack: bool = False,
        max_in_flight: int = 100,
    ) -> BlockingStream:
        """A listener's stream, iterated in this thread."""
        stream: ClientStream = _blocking("stream", lambda: self.client.stream(
            channel, listener_id, auto_ack=auto_ack, max_in_flight=max_in_flight,
        ), self.timeout)
        return BlockingStream(stream, self.timeout)

    def watch(
        self, channel: str | None = None, *, since: int | None = None,
        epoch: str | None = None, max_buffer: int = 1000,
    ) -> BlockingWatch:
        """A channel's watch, iterated in this thread."""
        watch: ClientWatch = _blocking("watch", lambda: self.client.watch(
            channel, since=since, epoch=epoch, max_buffer=max_buffer,
        ), self.timeout)
        return BlockingWatch(watch, self.timeout)

    def close(self, *, timeout: float | None = None) -> None:
        """Close the client, its streams and watches."""
        self._wait("close", self.client.close, timeout)

    def __enter__(self) -> BlockingHubClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
