"""
A client for the event hub's control plane, for other processes: eric-sse's
``SocketClient`` operations (create channels, register listeners, dispatch, broadcast,
request/reply, stream a listener's mailbox, watch a channel) over the hub's UNIX control
socket or its WebSocket; the URL decides::

    client = await HubClient.connect("unix:/run/hub/hub.sock")
    # or: await HubClient.connect("ws://127.0.0.1:8080/ws", token=TOKEN)
    jobs = await client.create_channel("jobs")
    worker = await client.register(jobs, "worker-1", group="workers")
    await client.dispatch_group(jobs, "workers", "render", {"page": 1})
    async for mail in client.stream(jobs, worker):
        ...
        await mail.ack()

* **Control socket** (``unix:/path``, or any Twisted client endpoint string such as
  ``tcp:127.0.0.1:9000``): JSON lines. One connection carries the one-shot calls,
  pipelined (answers are matched by their ``"i"`` ref); each stream and watch has a
  connection of its own. The socket file's permissions are its access control: no token.
* **WebSocket** (``ws://host:port/ws``, ``wss://``): one connection multiplexes calls,
  streams and watches; the token goes in an ``Authorization: Bearer`` header.

Failures are the library's exceptions, mapped from the hub's error ``code``
(``UnknownListenerError``, ``MailboxFullError``, ``RemoteActionError``,
``RequestTimeoutError``, ``UnknownChannelError``...; :class:`HubRequestError` for a
malformed or refused request); each carries the hub's error ``code`` as its ``code``
attribute. A call whose connection is lost before its answer fails with
:class:`HubConnectionError` and is never sent again by the client: it may or may not have
been carried out. The connection is not needed again until the next call: that call opens
a new one (after a hub restart, calls work again as soon as the hub is back; while it is
down each fails at once with :class:`HubConnectionError`, "cannot connect"). Streams and
watches reconnect by themselves (see :class:`ClientStream`, :class:`ClientWatch`).

Settling a mail (``ack()``...) fires True once its line is sent, which is no confirmation:
the hub answers nothing when it takes it, and a refusal (``unknown_mail``) comes later on
the stream: logged as a warning and kept in :attr:`ClientStream.refused`.

:class:`BlockingHubClient` offers the same calls to threaded code, through crochet.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from ._client_blocking import BlockingHubClient, BlockingMail, BlockingStream, BlockingWatch
from ._client_errors import HubConnectionError, HubRequestError
from ._client_link import Limits, Link
from ._client_stream import (
    ClientEvent,
    ClientMail,
    ClientNotice,
    ClientRefusal,
    ClientStream,
    ClientWatch,
    Retry,
)

_S = TypeVar("_S", ClientStream, ClientWatch)

__all__ = [
    "BlockingHubClient",
    "BlockingMail",
    "BlockingStream",
    "BlockingWatch",
    "ClientEvent",
    "ClientMail",
    "ClientNotice",
    "ClientRefusal",
    "ClientStream",
    "ClientWatch",
    "HubClient",
    "HubConnectionError",
    "HubRequestError",
]


class HubClient:
    """
    A connection to an event hub's control plane (see the module docstring). Make one
    with :meth:`connect`. Every ``channel`` argument may be None: the hub's default
    channel.

    One-shot calls share one connection (the control socket) or the WebSocket. When it
    is lost (the hub restarted, the network broke) the calls awaiting their answer fail
    with :class:`HubConnectionError` and are not sent again; the next call connects anew,
    so a long-lived client outlives a hub restart without being made again.
    """

    def __init__(self, link: Link, url: str, clock: IReactorTime, retry: Retry) -> None:
        self._link = link
        #: The URL it was connected with.
        self.url = url
        self._clock = clock
        self._retry = retry
        self._streams: set[ClientStream | ClientWatch] = set()
        self._closed = False

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        reactor: Any = None,
        max_line: int = Limits.max_line,
        max_request: int = Limits.max_request,
        max_pending: int = Limits.max_pending,
        max_retries: int | None = None,
        max_retry_delay: float = 5.0,
    ) -> Deferred[HubClient]:
        """
        Connect to the hub at ``url``: ``"unix:/path/hub.sock"`` (or another Twisted
        client endpoint string) for its control socket, ``"ws://host:port/ws"`` for its
        WebSocket. Fires once connected; fails with :class:`HubConnectionError`.

        :param token: the hub's token (WebSocket only: the control socket has none).
        :param max_line: longest line or message accepted from the hub, in bytes (4 MiB).
        :param max_request: longest request sent, in bytes: the hub's ``--max-frame``
            (65536); a longer one fails at once with :class:`HubRequestError`.
        :param max_pending: calls awaiting their answer on one connection (1000); one
            more fails at once with :class:`HubRequestError` (code ``"limit"``).
        :param max_retries: failed reconnect attempts in a row before a stream or watch
            gives up (None: never gives up; 0: never reconnects).
        :param max_retry_delay: the longest wait between reconnect attempts, in seconds
            (the first is 0.1 s, doubling).
        :raises ValueError: a malformed URL, or a token for the control socket.
        """
        if reactor is None:
            from twisted.internet import reactor as default

            reactor = default
        limits = Limits(max_line, max_request, max_pending)
        retry = Retry(max_retry_delay, max_retries)
        link: Any
        if url.startswith(("ws://", "wss://")):
            from ._client_ws import WebSocketLink

            link = WebSocketLink(url, token, limits, reactor)
        else:
            if token is not None:
                raise ValueError(
                    "the control socket takes no token (its file permissions are its access "
                    "control); give a token only with a ws:// URL"
                )
            from twisted.internet.endpoints import clientFromString

            from ._client_socket import SocketLink

            try:
                endpoint = clientFromString(reactor, url)
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(
                    f"not a hub URL: {url!r} (expected 'unix:/path/hub.sock', another Twisted "
                    f"client endpoint string, or 'ws://host:port/ws'): {e}"
                ) from None
            link = SocketLink(endpoint, url, limits)
        client = cls(link, url, reactor, retry)
        d: Deferred[Any] = link.connect()
        return d.addCallback(lambda _: client)

    # -- one-shot verbs --------------------------------------------------------------------

    def _call(self, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self._link.call(request)

    @staticmethod
    def _on(channel: str | None, request: dict[str, Any]) -> dict[str, Any]:
        if channel is not None:
            request["c"] = channel
        return request

    def create_channel(self, channel_id: str | None = None) -> Deferred[str]:
        """Create a channel (``channel_id``, or a generated name); fires with its name."""
        request: dict[str, Any] = {"v": "c"}
        if channel_id is not None:
            request["c"] = channel_id
        return self._call(request).addCallback(lambda a: a["c"])

    def register(
        self,
        channel: str | None,
        listener_id: str | None = None,
        *,
        group: str | None = None,
        mailbox_size: int | None = None,
        ack_timeout: float | None = None,
    ) -> Deferred[str]:
        """
        Register a listener (``listener_id``, or a generated id) on ``channel``, in
        ``group`` if given; fires with its id. ``mailbox_size`` (hub default 1000) bounds
        its mailbox; ``ack_timeout`` is how long a stream may hold a group mail.
        """
        request = self._on(channel, {"v": "r"})
        for key, value in (("r", listener_id), ("g", group), ("size", mailbox_size),
                           ("ack_timeout", ack_timeout)):
            if value is not None:
                request[key] = value
        return self._call(request).addCallback(lambda a: a["r"])

    def dispatch(
        self, channel: str | None, listener_id: str, event: str, data: Any = None
    ) -> Deferred[str | None]:
        """
        Put ``event``/``data`` into one listener's mailbox; fires with the mail id
        (None for ``start``/``stop``, which start or stop the listener).
        """
        request = self._on(channel, {"v": "d", "r": listener_id, "t": event, "p": data})
        return self._call(request).addCallback(lambda a: a.get("id"))

    def dispatch_group(
        self, channel: str | None, group: str, event: str, data: Any = None
    ) -> Deferred[str]:
        """Give ``event``/``data`` to one running member of ``group``; fires with its id."""
        request = self._on(channel, {"v": "g", "g": group, "t": event, "p": data})
        return self._call(request).addCallback(lambda a: a.get("id"))

    def broadcast_message(
        self, channel: str | None, event: str, data: Any = None
    ) -> Deferred[int]:
        """
        Broadcast ``event``/``data`` on ``channel``: to every listener's mailbox and, as
        an event, to its subscribers and watches. Fires with the event's offset.
        """
        request = self._on(channel, {"v": "b", "t": event, "p": data})
        return self._call(request).addCallback(lambda a: a.get("id"))

    def request(
        self,
        channel: str | None,
        target: str,
        event: str,
        data: Any = None,
        *,
        group: bool = False,
        timeout: float = 10.0,
    ) -> Deferred[Any]:
        """
        Send a request to listener ``target`` (to a member of group ``target`` with
        ``group=True``) and fire with its reply. Fails with
        :class:`~twisted_event_dispatcher.errors.RemoteActionError` when the listener's
        action failed, :class:`~twisted_event_dispatcher.errors.RequestTimeoutError` when
        no reply came within ``timeout`` seconds (at most 300).
        """
        request = self._on(channel, {"v": "q", "t": event, "p": data, "timeout": timeout})
        request["g" if group else "r"] = target
        return self._call(request).addCallback(lambda a: a.get("p"))

    def remove_listener(self, channel: str | None, listener_id: str) -> Deferred[None]:
        """Remove a listener and its mailbox (its stream, if any, ends with ``removed``)."""
        request = self._on(channel, {"v": "rl", "r": listener_id})
        return self._call(request).addCallback(lambda _: None)

    def remove_channel(self, channel: str) -> Deferred[None]:
        """Remove a channel (not the hub's default one) with its listeners."""
        return self._call({"v": "rc", "c": channel}).addCallback(lambda _: None)

    # -- streams -----------------------------------------------------------------------------

    def stream(
        self,
        channel: str | None,
        listener_id: str,
        *,
        auto_ack: bool = False,
        max_in_flight: int = 100,
    ) -> ClientStream:
        """
        Listen to a listener's mailbox: a :class:`ClientStream` (``async for``, or
        ``on_mail(callback)``) that reconnects on a lost connection; the hub delivers the
        unacknowledged mail again. A listener has one stream at a time: a new one
        replaces the old, which ends with ``"replaced"``.
        """
        self._check_open()
        return self._track(ClientStream(
            self._link, self._clock, self._retry, channel, listener_id, auto_ack, max_in_flight
        ))

    def watch(
        self,
        channel: str | None = None,
        *,
        since: int | None = None,
        epoch: str | None = None,
        max_buffer: int = 1000,
    ) -> ClientWatch:
        """
        Watch a channel's broadcasts: a :class:`ClientWatch` yielding
        :class:`ClientEvent` and :class:`ClientNotice` (``gap``, ``dropped``). With
        ``since`` (and the ``epoch`` it belongs to) it starts with the events after that
        offset still in the hub's history, or a ``gap`` notice. It reconnects resuming
        after the last event it got.
        """
        self._check_open()
        return self._track(ClientWatch(
            self._link, self._clock, self._retry, channel, since, epoch, max_buffer
        ))

    def _check_open(self) -> None:
        if self._closed:
            raise HubConnectionError("this HubClient is closed")

    def _track(self, stream: _S) -> _S:
        """Remember a stream or watch until it ends, to close it with the client."""
        self._streams.add(stream)
        stream.wait_ended().addBoth(lambda _: self._streams.discard(stream))
        return stream

    def close(self) -> Deferred[None]:
        """
        Close every stream and watch, then the connections; calls awaiting their answer
        fail with :class:`HubConnectionError`. Fires once everything is closed.
        """
        self._closed = True
        closing = [stream.close() for stream in list(self._streams)]
        closing.append(self._link.close())
        return gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)
