"""
The WebSocket transport of the hub client: one Autobahn connection to ``/ws`` carries
every call, listen and watch, multiplexed. Requests are the hub's typed frames (long field
names, ``"ref"`` to match each answer); mail frames are routed to their listen by channel
and listener, event and gap frames to their watch by channel. A ``dropped`` frame names no
channel: every watch of the connection gets it (each may have missed something).
Ack and release frames carry a string ``ref`` (``"s1"``, ...; calls use integers) so
that the hub's refusal of one is handed to its stream, naming the mail.

Losing the connection fails the calls awaiting an answer with :class:`HubConnectionError`
and tells every listen and watch (they reconnect, sharing one new connection).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._client_errors import HubConnectionError, HubRequestError, error_from_answer
from ._client_link import Feed, Limits, ProtocolViolation, Sink, encode_line
from .channels.message import encode_json

__all__ = ["WebSocketLink"]

_log = Logger(namespace="twisted_event_dispatcher.client")

#: Verbs by their WebSocket request type, and back.
TYPES = {
    "c": "create_channel", "r": "register", "d": "dispatch", "b": "broadcast",
    "g": "dispatch_group", "q": "request", "l": "listen", "w": "watch",
    "rl": "remove_listener", "rc": "remove_channel",
}
VERBS = {long: short for short, long in TYPES.items()}
#: Canonical (control socket) keys by their WebSocket names, and back.
LONG = {
    "c": "channel", "t": "event", "p": "data", "r": "listener", "g": "group",
    "a": "auto_ack", "m": "max_in_flight", "i": "ref", "size": "mailbox_size",
}
SHORT = {long: short for short, long in LONG.items()}
#: A mail frame's keys as a control-socket mail line's.
MAIL = {
    "channel": "c", "listener": "r", "id": "id", "event": "t", "data": "p",
    "deliveries": "n", "source": "s", "request": "q",
}


def to_frame(request: dict[str, Any]) -> dict[str, Any]:
    """A canonical request as a WebSocket request frame."""
    frame: dict[str, Any] = {"type": TYPES[request["v"]]}
    for key, value in request.items():
        if key != "v":
            frame[LONG.get(key, key)] = value
    return frame


def from_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """A ``result`` or ``error`` frame as a canonical answer (``error``, ``v``, ``code``...)."""
    answer: dict[str, Any] = {}
    for key, value in frame.items():
        if key == "type":
            continue
        if key == "request":
            answer["v"] = VERBS.get(value, value)
        elif key == "reason" and frame.get("type") == "error":
            answer["error"] = value
        else:
            answer[SHORT.get(key, key)] = value
    return answer


class _WSProtocol(WebSocketClientProtocol):
    """Hands frames and the connection's state to its link."""

    link: WebSocketLink
    opened = False

    def onOpen(self) -> None:
        self.opened = True
        self.link._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            _log.warn("ignoring a binary frame from the hub")
            return
        try:
            frame = json.loads(payload)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            self.link._violation(self, f"the hub sent a frame that is not a JSON object: "
                                       f"{payload[:80]!r}")
            return
        self.link._frame(self, frame)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.link._connection_closed(self, code, reason)


class _WSFeed:
    """A listen or a watch on the link's connection."""

    def __init__(
        self, link: WebSocketLink, protocol: _WSProtocol, request: dict[str, Any], sink: Sink
    ) -> None:
        self.link = link
        self.protocol = protocol
        self.sink = sink
        self.channel: str | None = request.get("c")
        self.listener: str | None = request.get("r") if request["v"] == "l" else None
        self.answer: dict[str, Any] = {}
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed and self.link._protocol is self.protocol

    def send(self, line: dict[str, Any]) -> bool:
        if not self.alive:
            return False
        if "release" in line:
            frame: dict[str, Any] = {"type": "release", "id": line["release"]}
        else:
            frame = {"type": "ack", "id": line["ack"]}
            for key in ("reply", "error"):
                if key in line:
                    frame[key] = line[key]
        if self.channel is not None:
            frame["channel"] = self.channel
        frame["listener"] = self.listener
        frame["ref"] = self.link._settling_ref(self, frame)
        self.link._send(self.protocol, frame)
        return True

    def pause(self) -> None:
        self.link._pause(self, True)

    def resume(self) -> None:
        self.link._pause(self, False)

    def close(self) -> Deferred[None]:
        if self.closed:
            return succeed(None)
        alive = self.alive
        self.closed = True
        self.link._forget(self)
        if not alive:
            return succeed(None)
        request: dict[str, Any] = (
            {"type": "unlisten", "listener": self.listener} if self.listener is not None
            else {"type": "unwatch"}
        )
        if self.channel is not None:
            request["channel"] = self.channel
        d = self.link._call_frame(self.protocol, request, {"v": request["type"]})
        d.addErrback(lambda _: None)  # gone already, or ended by the hub meanwhile
        return d.addCallback(lambda _: None)


class WebSocketLink:
    """The WebSocket transport (see the module docstring)."""

    def __init__(
        self, url: str, token: str | None, limits: Limits, reactor: IReactorTime
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"a WebSocket URL looks like 'ws://host:port/ws', got {url!r}")
        self.url = url
        self.limits = limits
        self._reactor = reactor
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "wss" else 80)
        self._tls = parts.scheme == "wss"
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self._factory = WebSocketClientFactory(url, headers=headers)
        self._factory.protocol = _WSProtocol
        # Autobahn has one bound for both directions; what is sent is bounded (smaller)
        # by max_request already.
        largest = max(limits.max_line, limits.max_request + 64)
        self._factory.setProtocolOptions(
            maxFramePayloadSize=largest,
            maxMessagePayloadSize=largest,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
        )
        self._protocol: _WSProtocol | None = None
        self._connecting: list[Deferred[_WSProtocol]] | None = None
        self._pending: dict[int, tuple[dict[str, Any], Deferred[dict[str, Any]]]] = {}
        self._next_ref = 0
        self._listens: dict[tuple[str | None, str], _WSFeed] = {}
        self._watches: dict[str | None, _WSFeed] = {}
        self._paused: set[_WSFeed] = set()
        self._reasons: dict[_WSProtocol, HubConnectionError] = {}
        self._closing: list[Deferred[None]] = []
        #: Ack/release frames awaiting the hub's answer, by their (string) ref.
        self._settling: dict[str, tuple[_WSFeed, dict[str, Any]]] = {}
        self._next_settling = 0
        self._closed = False

    # -- connecting ------------------------------------------------------------------------

    def connect(self) -> Deferred[_WSProtocol]:
        """The open connection, or a new one (shared by everyone waiting while it opens)."""
        if self._protocol is not None:
            return succeed(self._protocol)
        if self._closed:
            return fail(HubConnectionError("the client is closed"))
        waiting: Deferred[_WSProtocol] = Deferred()
        if self._connecting is not None:
            self._connecting.append(waiting)
            return waiting
        self._connecting = [waiting]
        d = self._endpoint().connect(self._factory)

        def connected(protocol: _WSProtocol) -> None:
            protocol.link = self  # the handshake answer is read after this

        def failed(failure: Failure) -> None:
            self._settle(HubConnectionError(
                f"cannot connect to the hub at {self.url}: {failure.getErrorMessage()}"
            ))

        d.addCallbacks(connected, failed)
        return waiting

    def _endpoint(self) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint

        endpoint: Any = HostnameEndpoint(self._reactor, self._host, self._port)
        if self._tls:
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(self._host), endpoint)
        return endpoint

    def _settle(self, result: _WSProtocol | HubConnectionError) -> None:
        waiting, self._connecting = self._connecting or [], None
        for d in waiting:
            if isinstance(result, HubConnectionError):
                d.errback(result)
            else:
                d.callback(result)

    def _opened(self, protocol: _WSProtocol) -> None:
        if self._closed:
            protocol.sendClose(1000)
            return
        self._protocol = protocol
        self._settle(protocol)

    def _connection_closed(
        self, protocol: _WSProtocol, code: int | None, reason: str | None
    ) -> None:
        error = self._reasons.pop(protocol, None)
        if not protocol.opened:
            # The handshake failed: refused (a bad token: for good) or never answered.
            text = f"the hub at {self.url} refused the WebSocket connection: {reason}"
            refused = any(f"[{status}]" in (reason or "") or f"({status}" in (reason or "")
                          for status in (400, 401, 403, 404))
            self._settle(error or (ProtocolViolation(text) if refused
                                   else HubConnectionError(text)))
            return
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._paused.clear()
        told = error  # a reason known before: streams are told that one
        why = f" ({code}: {reason})" if code not in (None, 1000) else ""
        if error is None:
            if code == 1009 or getattr(protocol, "wasMaxMessagePayloadSizeExceeded", False) or (
                getattr(protocol, "wasMaxFramePayloadSizeExceeded", False)
            ):
                error = ProtocolViolation(
                    f"the hub sent a message larger than the client's max_line{why}"
                )
            else:
                error = HubConnectionError(
                    f"the connection to the hub at {self.url} was lost{why}; "
                    "a request awaiting its answer may or may not have been carried out"
                )
        pending, self._pending = self._pending, {}
        for _, answer in pending.values():
            answer.errback(error)
        self._settling.clear()
        if told is None and type(error) is HubConnectionError:
            # What streams are told: no call of theirs was awaiting an answer.
            error = HubConnectionError(f"the connection to the hub at {self.url} was lost{why}")
        feeds = [*self._listens.values(), *self._watches.values()]
        self._listens.clear()
        self._watches.clear()
        for feed in feeds:
            if not feed.closed:
                feed.sink.lost(error)
        closing, self._closing = self._closing, []
        for waiting in closing:
            waiting.callback(None)

    def _violation(self, protocol: _WSProtocol, message: str) -> None:
        _log.error("closing the connection to {url}: {message}", url=self.url, message=message)
        self._reasons[protocol] = ProtocolViolation(message)
        protocol.dropConnection(abort=True)

    # -- calls -------------------------------------------------------------------------------

    def _send(self, protocol: _WSProtocol, frame: dict[str, Any]) -> None:
        protocol.sendMessage(encode_json(frame).encode("utf-8"))  # type: ignore[no-untyped-call]

    def _call_frame(
        self, protocol: _WSProtocol, frame: dict[str, Any], request: dict[str, Any],
        text: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        if protocol is not self._protocol:
            return fail(HubConnectionError(f"the connection to the hub at {self.url} was lost"))
        refused = self.limits.pending_refusal(len(self._pending), request.get("v"))
        if refused is not None:
            return fail(refused)
        ref = self._next_ref
        self._next_ref += 1

        def cancel(_: Deferred[dict[str, Any]]) -> None:
            self._pending.pop(ref, None)

        if text is None:
            text = encode_json(frame)
        payload = f'{text[:-1]},"ref":{ref}}}'.encode()
        protocol.sendMessage(payload)  # type: ignore[no-untyped-call]
        d: Deferred[dict[str, Any]] = Deferred(cancel)
        self._pending[ref] = (request, d)  # (its answer is read in a later reactor turn)
        return d

    def _settling_ref(self, feed: _WSFeed, frame: dict[str, Any]) -> str:
        """A ref for an ack/release ``frame`` of ``feed``: its answer is matched by it."""
        self._next_settling += 1
        ref = f"s{self._next_settling}"
        self._settling[ref] = (feed, frame)
        return ref

    def _settled(self, kind: object, ref: str, frame: dict[str, Any]) -> None:
        """The hub's answer to an ack/release: a refusal goes to its stream."""
        feed, sent = self._settling.pop(ref)
        if kind != "error" or feed.closed:
            return
        answer = from_frame(frame)
        answer["id"] = sent.get("id")
        feed.sink.problem(answer)

    def call(self, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        frame = to_frame(request)
        text = encode_line(frame, self.limits)
        protocol = self._protocol
        if protocol is not None:
            return self._call_frame(protocol, frame, request, text)
        return self.connect().addCallback(
            lambda p: self._call_frame(p, frame, request, text)
        )

    def open(self, request: dict[str, Any], sink: Sink) -> Deferred[Feed]:
        frame = to_frame(request)
        text = encode_line(frame, self.limits)

        async def opening() -> Feed:
            protocol = await self.connect()
            feed = _WSFeed(self, protocol, request, sink)
            if feed.listener is not None:
                key = (feed.channel, feed.listener)
                if key in self._listens:
                    raise HubRequestError(
                        f"listener {feed.listener!r} is streamed already on this client's "
                        "WebSocket; close that stream first", "bad_request", "l",
                    )
                self._listens[key] = feed
            else:
                if feed.channel in self._watches:
                    raise HubRequestError(
                        f"channel {feed.channel!r} is watched already on this client's "
                        "WebSocket; close that watch first", "bad_request", "w",
                    )
                self._watches[feed.channel] = feed
            try:
                feed.answer = await self._call_frame(protocol, frame, request, text)
            except BaseException:
                feed.closed = True
                self._forget(feed)
                raise
            return feed

        return Deferred.fromCoroutine(opening())

    def _forget(self, feed: _WSFeed) -> None:
        if feed.listener is not None:
            if self._listens.get((feed.channel, feed.listener)) is feed:
                del self._listens[(feed.channel, feed.listener)]
        elif self._watches.get(feed.channel) is feed:
            del self._watches[feed.channel]
        if feed in self._paused:
            self._pause(feed, False)

    def _pause(self, feed: _WSFeed, paused: bool) -> None:
        """Stop reading while any feed of the connection is paused."""
        before = bool(self._paused)
        if paused and feed.alive:
            self._paused.add(feed)
        else:
            self._paused.discard(feed)
        protocol = self._protocol
        if protocol is None or protocol.transport is None or before == bool(self._paused):
            return
        transport: Any = protocol.transport
        if self._paused:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    # -- frames ------------------------------------------------------------------------------

    def _frame(self, protocol: _WSProtocol, frame: dict[str, Any]) -> None:
        if protocol is not self._protocol:
            return
        kind = frame.get("type")
        ref = frame.get("ref")
        if kind in ("result", "error") and ref is not None:
            if isinstance(ref, str) and ref in self._settling:
                self._settled(kind, ref, frame)
            elif type(ref) is int and ref in self._pending:
                request, d = self._pending.pop(ref)
                if kind == "error":
                    d.errback(error_from_answer(from_frame(frame), request))
                else:
                    d.callback(from_frame(frame))
            return  # (else the answer to a call that was cancelled: nobody waits for it)
        if kind == "mail":
            listen = self._listen_of(frame)
            if listen is not None:
                listen.sink.item({MAIL.get(k, k): v for k, v in frame.items() if k != "type"})
            return
        if kind == "listen_end":
            listen = self._listen_of(frame)
            if listen is not None:
                listen.closed = True
                self._forget(listen)
                listen.sink.end(str(frame.get("reason")))
            return
        if kind in ("event", "gap"):
            channel = frame.get("channel")
            watch = self._watches.get(channel) if isinstance(channel, str) else None
            watch = watch or self._watches.get(None)
            if watch is not None:
                watch.sink.item(frame)
            return
        if kind == "dropped":
            for watch in list(self._watches.values()):
                watch.sink.item(frame)
            return
        if kind == "error":
            _log.warn("the hub refused a request of this client: {reason} ({request})",
                      reason=frame.get("reason"), request=frame.get("request"))
        # subscribed/unsubscribed/pong and answers to cancelled calls: nothing to do.

    def _listen_of(self, frame: dict[str, Any]) -> _WSFeed | None:
        listener = frame.get("listener")
        channel = frame.get("channel")
        if not isinstance(listener, str):
            return None
        found = self._listens.get((channel, listener)) if isinstance(channel, str) else None
        return found or self._listens.get((None, listener))

    def close(self) -> Deferred[None]:
        self._closed = True
        protocol = self._protocol
        if protocol is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        self._reasons[protocol] = HubConnectionError("the client closed the connection")
        protocol.sendClose(1000)
        return d

