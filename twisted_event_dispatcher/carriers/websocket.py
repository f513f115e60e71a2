"""
The WebSocket carrier, on Autobahn: a server protocol and factory that speak a small JSON
protocol, one object per text frame, each with a ``"type"``.

Client to server:

* ``{"type": "subscribe", "event": name, "channel": optional, "since": optional offset,
  "epoch": optional}`` — ``event`` may be ``"*"``; ``channel`` defaults to the endpoint's;
  with ``since`` the messages after that offset still in the history are replayed first,
  or a ``gap`` frame says they cannot be;
* ``{"type": "unsubscribe", "event": name, "channel": optional}``;
* ``{"type": "ping"}`` (an ``"id"`` is echoed: a JSON value of at most 256 characters).

The hub's control requests (with the factory's ``control`` plane; without it each gets an
``error`` frame with ``code`` ``unsupported``), each answered by exactly one ``result``
or ``error`` frame carrying its ``"ref"`` (optional: a string or an integer of at most 64
characters as JSON). ``channel`` is optional everywhere (the endpoint's channel):

* ``{"type": "create_channel", "channel"?}`` -> ``{"type": "result", "request":
  "create_channel", "channel"}`` (a generated name if none is asked for);
* ``{"type": "register", "channel"?, "listener"?, "group"?, "mailbox_size"?,
  "ack_timeout"?}`` -> ``{..., "listener", "channel"}``;
* ``{"type": "dispatch", "listener", "event", "data"?}`` -> ``{..., "ok": true, "id"}``
  (``"id": null`` for ``start``/``stop``);
* ``{"type": "dispatch_group", "group", "event", "data"?}`` -> ``{..., "ok": true, "id"}``;
* ``{"type": "broadcast", "event", "data"?}`` -> ``{..., "ok": true, "id", "epoch"}``;
* ``{"type": "request", "listener" or "group", "event", "data"?, "timeout"?}`` ->
  ``{..., "ok": true, "data": reply}``; the listener's action failed: an ``error`` with
  ``code`` ``remote`` and ``remote_type``; no reply in time: ``code`` ``timeout``;
* ``{"type": "remove_listener", "listener"}``, ``{"type": "remove_channel"}`` ->
  ``{..., "ok": true}``;
* ``{"type": "listen", "listener", "auto_ack"?, "max_in_flight"?}`` -> ``{..., "ok": true,
  "listener", "channel"}``, then ``mail`` frames; ``{"type": "ack", "listener", "id",
  "reply"? or "error"?}`` (``reply``/``error`` answer a request), ``{"type": "release",
  "listener", "id"}`` (redeliver it) -> ``{..., "ok": true, "id"}``; ``{"type":
  "unlisten", "listener"}`` -> ``{..., "ok": true, "channel", "listener"}`` (what is
  not acknowledged goes to the listener's next stream);
* ``{"type": "watch", "since"?, "epoch"?}`` -> ``{..., "ok": true, "channel", "epoch",
  "last_id", "replayed"}``, then ``event`` frames (a subscription to ``"*"``);
  ``{"type": "unwatch"}`` -> ``{..., "ok": true, "channel"}``.

Server to client:

* ``{"type": "event", "id", "epoch", "channel", "event", "data"}``;
* ``{"type": "subscribed", "channel", "event", "epoch", "last_id", "replayed"}``;
* ``{"type": "unsubscribed", "channel", "event"}``;
* ``{"type": "gap", "channel", "event", "since", "epoch", "oldest", "reason"}``;
* ``{"type": "dropped", "count"}`` — the client read too slowly and missed ``count``
  messages (``drop_oldest`` policy);
* ``{"type": "error", "reason", "code", "request"?, "ref"?}`` — a bad request; the
  connection stays open. ``code`` is ``bad_request`` unless a more specific one applies
  (``limit``: the request rate or the subscription limit; ``unknown_channel``;
  ``unavailable``: Redis is down; the control requests' codes, see
  :mod:`twisted_event_dispatcher.hub._control`, with ``"remote_type"``? for ``remote``;
  ``unsupported`` without a control plane); ``request`` is the request's type when it is
  short and printable; ``ref`` is echoed when the request had a valid one (a string or an
  integer of at most 64 characters as JSON), whatever its type;
* ``{"type": "pong", "id"?}``;
* ``{"type": "result", "request", "ref"?, ...}`` — a control request's answer;
* ``{"type": "mail", "id", "event", "data", "deliveries", "source", "listener", "channel",
  "group"?, "request"?}`` — a mail of a listen (``"request": true``: ack it with a
  ``reply`` or an ``error``);
* ``{"type": "listen_end", "channel", "listener", "reason"}`` — a listen ended: the
  listener was ``removed``, ``replaced`` by another stream, or its channel ``closed``
  (removed from the hub, or the hub stopping).

Malformed JSON (NaN and infinities included), data nested deeper than
:data:`~twisted_event_dispatcher.channels.message.MAX_DEPTH` (a request frame may nest one
level more: the object around its data), unknown types, bad fields and binary frames get
an ``error`` frame; the reason quotes the client's values shortened and escaped, so it can
always be sent. Frames over the size limit close the connection with 1009, invalid UTF-8
in a text frame with 1007, protocol violations with 1002, a client that cannot keep up
under the ``disconnect`` policy with 1008 (policy violation), and a failure of ours with
1011.

Flow control: a client that sends requests faster than it reads their answers is not
refused nor closed. Once :data:`READ_PAUSE_FRAMES` answers (or other control frames: mail,
notices) wait for it to read, the server stops reading the connection (its socket, under
twisted.web too) and stops handling the frames it had already received; it reads again
when the client has read them. Such a client only fills its own buffers; every request is
answered, in order. (A client that writes every request before it reads any answer, with
blocking writes, deadlocks itself, as over any flow-controlled connection.) Events are not
held up: while only events wait, requests are still read (an ``unsubscribe`` gets through),
and the overflow policy applies to them: ``drop_oldest`` drops the oldest (a ``dropped``
notice), ``disconnect`` closes with 1008. Answers are never dropped: they may wait past
``max_queue``, by as many as the connection may have pending. The 1008 close lets the close
frame out: the answers still queued are written (mail is not: it goes to the listener's
next stream), then the close frame, after what the client has not read yet; the client has
:data:`OVERFLOW_CLOSE_TIMEOUT` seconds to read up to it and answer, then the connection is
aborted. After any close frame of ours, the client's frames are read only to find its
close frame, not carried out, and its listens detach at once.

A WebSocket ping is answered with a pong at once; while the client is not reading, only the
latest ping is answered (RFC 6455 allows it), so a ping flood cannot grow the server.
Requests past the factory's ``max_request_rate`` (per connection, per second) get an
``error`` frame with ``code`` ``limit`` and are not carried out; ``ack`` and ``release``
frames are counted only when they fail (a valid one settles mail the hub sent, at most
``max_in_flight`` per listen, and refusing it would stall the listen). Each event frame is
encoded once (``prepareMessage``) and the same prepared frame is sent to every subscriber.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._rate import RateLimiter
from ..channels import registry as default_registry
from ..channels.base import WILDCARD, Channel, Gap, Subscription, check_event_name
from ..channels.message import Message, encode_json
from ..errors import ChannelUnavailableError, InvalidDataError
from ._requests import BadRequest, clip, parse_request, show
from ._ws_control import MAX_PENDING, TYPES, VERBS, ConnectionControl
from .base import DROP_OLDEST, QueueingCarrier, check_queue_options

if TYPE_CHECKING:
    from ..hub._control import ControlPlane

__all__ = [
    "LOOPBACK_ORIGINS", "EventWebSocketFactory", "EventWebSocketProtocol", "WebSocketCarrier",
]

_log = Logger(namespace="twisted_event_dispatcher.websocket")

#: Close code for a client that cannot keep up (the ``disconnect`` policy).
CLOSE_TOO_SLOW = 1008
#: Close code when the server shuts down.
CLOSE_GOING_AWAY = 1001
#: Close code when handling a request failed on our side (logged with its traceback).
CLOSE_INTERNAL_ERROR = 1011
#: Longest ``id`` of a ``ping`` request echoed in the ``pong``, in characters of JSON.
MAX_PING_ID = 256
#: Largest ``since`` offset (offsets are 63-bit integers, as Redis stream ids).
MAX_OFFSET = 2**63 - 1
#: Frames that settle mail a listen delivered: not counted against the request rate.
SETTLING = frozenset({"ack", "release"})
#: Control frames (answers, mail, notices) waiting for a client that is not reading, at
#: which the server stops reading its requests until it reads (flow control).
READ_PAUSE_FRAMES = 64
#: Seconds a client closed for overflow (1008) has to read up to the close frame and
#: answer it before its connection is aborted.
OVERFLOW_CLOSE_TIMEOUT = 10.0
#: The origins a factory accepts by default, and the hub's unless told otherwise: pages
#: served from this machine's loopback addresses (any port, plain http). Requests without
#: an ``Origin`` header (non-browser clients) are accepted whatever the allowed origins.
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")
#: Every request type, as the error for an unknown one lists them.
REQUEST_TYPES = (
    "subscribe", "unsubscribe", "ping", *VERBS, "ack", "release", "unlisten", "unwatch",
)


class WebSocketCarrier(QueueingCarrier):
    """
    Delivers messages over one WebSocket connection. Answers to the client's requests may
    wait past ``max_queue`` by as many as its connection may have pending
    (:data:`~._ws_control.MAX_PENDING`): they are bounded by the connection's flow control
    (:data:`READ_PAUSE_FRAMES`), never refused or dropped.
    """

    control_headroom = MAX_PENDING

    def __init__(self, protocol: EventWebSocketProtocol, max_queue: int, overflow: str) -> None:
        super().__init__(max_queue, overflow)
        self.protocol = protocol
        self._factory = protocol.factory
        # Sending a prepared message is writing its ready-made frame to the transport:
        # that is all sendPreparedMessage -> sendData do here, because this factory never
        # accepts permessage-deflate and nothing of ours sends with ``sync`` or
        # ``chopsize`` (Autobahn's send queue stays empty). Writing directly skips their
        # per-call bookkeeping, which costs more than the write on a large broadcast.
        transport: Any = protocol.transport
        self._send_frame = transport.write
        # The payload of the latest ping received while paused: the one pong owed.
        self._pong: bytes | None = None

    def deliver(self, message: Message) -> None:
        # The broadcast hot path: QueueingCarrier.deliver with _write_message inlined.
        if self._writable:
            prepared = message._cache.get(self._factory)
            if prepared is None:
                prepared = self._prepare(message)
            self._send_frame(prepared.payloadHybi)
        elif not self.closed:
            self._enqueue(message)

    def _write_message(self, message: Message) -> None:
        prepared = message._cache.get(self._factory)
        if prepared is None:
            prepared = self._prepare(message)
        self._send_frame(prepared.payloadHybi)

    def _prepare(self, message: Message) -> Any:
        """Encode once per message and factory; every connection shares the frame."""
        prepared = message._cache[self._factory] = self._factory.prepareMessage(
            message.json.encode("utf-8")
        )
        return prepared

    def _write_control(self, frame: Any) -> None:
        self.protocol.sendMessage(frame)  # type: ignore[no-untyped-call]

    def send_control(self, frame: Any) -> None:
        """
        Write a control frame, or queue it; with :data:`READ_PAUSE_FRAMES` queued, the
        connection stops reading requests until the client reads (:meth:`resumeProducing`).
        """
        if self._writable:
            self._write_control(frame)
        elif not self.closed:
            self._enqueue(frame)
            if self._controls >= READ_PAUSE_FRAMES:
                self.protocol.pause_reading()

    @property
    def paused(self) -> bool:
        """True while the transport's buffer is full (the client is not reading)."""
        return self._paused

    @property
    def writable(self) -> bool:
        """True while a frame sent now is written at once (open, not paused, none queued)."""
        return self._writable

    def owe_pong(self, payload: bytes) -> None:
        """
        Answer a ping received while paused once the client reads again: only the latest
        one is owed (RFC 6455, 5.5.3), so a ping flood costs one pending pong, not one
        buffered pong per ping.
        """
        self._pong = payload

    def resumeProducing(self) -> None:
        super().resumeProducing()
        control = self.protocol.control
        if self._writable and control is not None and control.listens:
            control.drained()  # the queue is written out: auto-ack what it held
        pong = self._pong
        if pong is not None and not self._paused and not self.closed:
            self._pong = None
            self.protocol.sendPong(pong)  # type: ignore[no-untyped-call]
        if self._controls < READ_PAUSE_FRAMES:
            self.protocol.resume_reading()

    def _gap_frame(self, channel: str, event: str, gap: Gap) -> bytes:
        return _frame(
            {
                "type": "gap",
                "channel": channel,
                "event": event,
                "since": gap.since,
                "epoch": gap.epoch,
                "oldest": gap.oldest,
                "reason": gap.reason,
            }
        )

    def _write_dropped(self, count: int) -> None:
        self._write_control(_frame({"type": "dropped", "count": count}))

    def _overflowed(self) -> None:
        _log.info(
            "closing {peer}: not reading, {n} frames queued ({policy})",
            peer=self.protocol.peer, n=self.queued, policy=self.overflow,
        )
        # Answers it is owed go out before the close frame (mail does not: it could not
        # be acknowledged any more, and goes to the listener's next stream).
        owed = [frame for frame in self._owed_controls() if not frame.startswith(_MAIL)]
        self.connection_lost()
        self.protocol.close_too_slow(owed)


def origin_patterns(origins: Sequence[str]) -> list[str]:
    """
    Browser origins (``"https://app.example"``, ``"http://*.example:8080"``, ``"*"``) as
    Autobahn's patterns, which always carry a port: the scheme's default when none is
    given.
    """
    patterns = []
    for origin in origins:
        if origin == "*":
            patterns.append(origin)
            continue
        scheme, sep, rest = origin.partition("://")
        if not sep or not rest or "/" in rest:
            raise ValueError(f"an allowed origin looks like 'https://host[:port]', got {origin!r}")
        if ":" not in rest:
            default = {"http": 80, "https": 443}.get(scheme.lower())
            rest = f"{rest}:{default}" if default else f"{rest}:*"
        patterns.append(f"{scheme.lower()}://{rest}")
    return patterns


def _frame(payload: Mapping[str, Any]) -> bytes:
    return encode_json(payload).encode("utf-8")


#: How every ``mail`` frame starts (``_ws_control.mail_frame``: compact JSON, type first).
_MAIL = b'{"type":"mail",'


def _socket_producer(transport: Any) -> Any:
    """
    What pauses reading this connection's socket: the transport when it can
    (``pauseProducing`` of a TCP transport stops reading), else the first transport beneath
    it that can; None if none can. Behind twisted.web, Autobahn's ``WebSocketResource``
    takes over the HTTP channel's transport: the TCP transport, or a ``ProtocolWrapper``
    around it (the hub's connection limit, TLS) that relays ``pauseProducing`` to it. The
    HTTP channel is out of the way: it no longer has the transport, and :meth:`onOpen`
    replaces it as the transport's producer by the carrier.
    """
    for _ in range(8):  # (bounded: wrappers do not nest deeper)
        if transport is None:
            return None
        if callable(getattr(transport, "pauseProducing", None)) and callable(
            getattr(transport, "resumeProducing", None)
        ):
            return transport
        transport = getattr(transport, "transport", None)
    return None


class EventWebSocketProtocol(WebSocketServerProtocol):
    """One client connection: its subscriptions and its carrier."""

    factory: EventWebSocketFactory
    carrier: WebSocketCarrier | None = None
    #: The connection's control requests (listens, pending answers) once open.
    control: ConnectionControl | None = None
    #: True while the server does not read this connection (flow control).
    reading_paused = False
    #: Seconds a client closed for overflow has to read up to the close frame.
    overflow_close_timeout = OVERFLOW_CLOSE_TIMEOUT
    # What pauses reading the socket (see _socket_producer), once open.
    _reader: Any = None
    # True while consumeData runs (it is not entered again).
    _consuming = False

    def onConnect(self, request: ConnectionRequest) -> None:
        # Raise autobahn's ConnectionDeny from the hook to refuse (e.g. a missing token).
        if self.factory.authorize is not None:
            self.factory.authorize(request)
        self._subscriptions: dict[tuple[str, str], Channel] = {}
        # Subscriptions whose answer is not in yet (a resume reading Redis): the client
        # may not unsubscribe them, nor add an overlapping one, until it is.
        self._resuming: set[tuple[str, str]] = set()

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: Any = None
    ) -> None:
        # Autobahn answers a refused Origin 400; it is a refusal, not a malformed request:
        # 403, as the hub answers it.
        if code == 400 and reason.startswith("WebSocket connection denied: origin "):
            code = 403
        super().failHandshake(reason, code, responseHeaders)

    def onOpen(self) -> None:
        self.carrier = WebSocketCarrier(self, self.factory.max_queue, self.factory.overflow)
        transport: Any = self.transport
        # Behind twisted.web (WebSocketResource) the HTTP channel is still registered.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self.carrier, True)
        self._reader = _socket_producer(transport)
        self.control = ConnectionControl(self)
        self.factory.connections.add(self)

    # -- flow control --------------------------------------------------------------------

    def pause_reading(self) -> None:
        """
        Stop reading the client's frames: its answers wait unread (the carrier calls this
        with :data:`READ_PAUSE_FRAMES` queued). Frames already received wait too (see
        :meth:`consumeData`); what the client sends meanwhile stays in its kernel buffers.
        """
        if self.reading_paused or self.state != self.STATE_OPEN or self._reader is None:
            return
        self.reading_paused = True
        self._reader.pauseProducing()

    def resume_reading(self) -> None:
        """Read again (the client read its answers, or the connection is closing)."""
        if not self.reading_paused:
            return
        self.reading_paused = False
        self._reader.resumeProducing()
        if self.data:
            # Frames received before the pause: on the next turn, never inside whatever
            # resumed reading (a write, a close).
            from twisted.internet import reactor

            reactor.callLater(0, self._consume_received)

    def _consume_received(self) -> None:
        if self.data and not self._consuming and self.state != self.STATE_CLOSED:
            self.consumeData()

    def consumeData(self) -> None:
        """
        Autobahn's frame loop, stopping between frames while reading is paused: one read
        may hold thousands of small requests, and each would queue its answer.
        """
        if self.state != self.STATE_OPEN:
            super().consumeData()
            return
        if self._consuming:
            return  # (the loop below goes on with what was added)
        self._consuming = True
        try:
            while (
                not (self.reading_paused and self.state == self.STATE_OPEN)
                and self.processData()
                and self.state != self.STATE_CLOSED
            ):
                pass
        finally:
            self._consuming = False

    def close_too_slow(self, owed: Sequence[bytes]) -> None:
        """
        Close a client whose queue overflowed with 1008, letting the close frame out: the
        frames it is ``owed`` (answers) are written first, then the close frame, and the
        client has :attr:`overflow_close_timeout` seconds to read up to it and answer it
        before the connection is aborted. Its requests are read again meanwhile (to find
        its close frame behind them), but no longer carried out.
        """
        if self.state != self.STATE_OPEN:
            self.dropConnection(abort=True)
            return
        for frame in owed:
            self.sendMessage(frame)  # type: ignore[no-untyped-call]
        self.closeHandshakeTimeout = self.overflow_close_timeout
        self.close_with(CLOSE_TOO_SLOW, "too slow: outgoing queue full")

    def close_with(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with any RFC 6455 code (Autobahn's ``sendClose``
        only lets applications use 1000 and 3000-4999; 1001 and 1008 are ours to send).
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123])

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # Whoever starts or answers the closing handshake, no event may follow the close
        # frame on the wire: the carrier stops (and leaves its channels) first.
        if self.carrier is not None:
            self.carrier.connection_lost()
        super().sendCloseFrame(code, reasonUtf8, isReply)
        # No request is carried out after it (onMessage), so no mail can be acknowledged:
        # listens detach now, and their unacknowledged mail goes to the next stream.
        if self.control is not None:
            self.control.connection_lost()
        # The client's close frame may be behind requests it sent while reading was paused.
        self.resume_reading()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.connections.discard(self)
        self.factory.request_rate.forget(id(self))
        if self.carrier is not None:
            self.carrier.connection_lost()
        if self.control is not None:
            self.control.connection_lost()

    # -- requests ------------------------------------------------------------------------

    def onPing(self, payload: bytes) -> None:
        # Autobahn answers each ping with a pong written at once, whether the client reads
        # or not: while it does not, owe it one pong for the latest ping instead.
        carrier = self.carrier
        if carrier is not None and carrier.paused:
            carrier.owe_pong(payload)
        elif self.state == self.STATE_OPEN:
            self.sendPong(payload)  # type: ignore[no-untyped-call]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != self.STATE_OPEN:
            return  # after our close frame, requests are read (to find the client's) only
        request_type = None
        request: dict[str, Any] | None = None
        refused: BadRequest | None = None  # (answered once counted against the rate)
        try:
            if isBinary:
                refused = BadRequest("binary frames are not supported; send JSON text frames")
            else:
                try:
                    request = parse_request(payload)
                except BadRequest as e:
                    refused, request = e, e.request  # (a frame too deep: its type and ref)
            if request is not None:
                request_type = request.get("type")
            # Acknowledgements are counted only when they fail (ConnectionControl.error):
            # each valid one settles mail the hub sent (at most max_in_flight per listen),
            # and refusing it would stall the listen stream.
            rate = self.factory.request_rate
            counted = refused is not None or request_type not in SETTLING
            if counted and rate.take(id(self)) is not None:
                reason = (
                    f"too many requests: at most {rate.rate:g} a second "
                    "on one connection; this one was not carried out"
                )
                if (refused is None and request is not None and request_type in TYPES
                        and self.control is not None):
                    self.control.refuse(request_type, request, "limit", reason)  # (ref echoed)
                    return
                raise BadRequest(reason, "limit")
            if refused is not None:
                raise refused
            assert request is not None
            handler = self._handlers.get(request_type) if isinstance(request_type, str) else None
            if handler is None:
                if request_type in TYPES and self.control is not None:
                    self.control.handle(request_type, request)
                    return
                raise BadRequest(
                    f"unknown request type {show(request_type)}; expected "
                    + ", ".join(repr(t) for t in REQUEST_TYPES)
                )
            handler(self, request)
        except BadRequest as e:
            self._error(str(e), request_type, e.code, request)
        except (TypeError, ValueError) as e:
            self._error(str(e), request_type, "bad_request", request)
        except Exception:
            # A bug of ours, not a bad request: say so with a close code, never by
            # dropping the connection, and log it once (the connection ends).
            _log.failure("closing {peer}: handling a request failed", peer=self.peer)
            self.close_with(CLOSE_INTERNAL_ERROR, "internal error")

    def _subscribe(self, request: dict[str, Any]) -> None:
        channel, event = self._target(request)
        since = request.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int)):
            raise BadRequest(f"since must be an integer offset, got {show(since)}")
        if since is not None and not 0 <= since <= MAX_OFFSET:
            raise BadRequest(f"since must be an offset from 0 to 2**63-1, got {show(since)}")
        epoch = request.get("epoch")
        if epoch is not None and not isinstance(epoch, str):
            raise BadRequest(f"epoch must be a string, got {show(epoch)}")
        key = (channel.name, event)
        self.check_subscribable(channel.name, event, since)
        if len(self._subscriptions) >= self.factory.max_subscriptions:
            raise BadRequest(
                f"subscription limit reached ({self.factory.max_subscriptions} per connection)",
                "limit",
            )
        self._subscriptions[key] = channel
        carrier = self.carrier
        assert carrier is not None
        try:
            d = channel.subscribe(event, carrier, since, epoch)
        except Exception:
            self._subscriptions.pop(key, None)  # refused at once: it holds no slot
            raise
        self._resuming.add(key)  # until the answer: at once, unless Redis is read
        d.addCallbacks(
            self._subscribed, self._subscribe_failed, callbackArgs=(key,),
            errbackArgs=(key, request),
        )

    def check_subscribable(self, name: str, event: str, since: object) -> None:
        """
        Raise :class:`BadRequest` if subscribing this connection to ``event`` of channel
        ``name`` (resuming after ``since``, if not None) would deliver a message twice.
        """
        if (name, event) in self._subscriptions:
            # Subscribing again would replay (since) or deliver (live) what this
            # subscription already delivers: never twice to one subscription.
            raise BadRequest(
                f"already subscribed to {show(event)} on channel {show(name)}; "
                "unsubscribe first to subscribe again"
            )
        busy = next(
            (e for c, e in self._resuming if c == name and (e == WILDCARD or event == WILDCARD)),
            None,
        )
        if busy is not None:
            # Its replay would repeat what this one delivers live meanwhile.
            raise BadRequest(
                f"the subscription to {show(busy)} on channel {show(name)} is still "
                "resuming; subscribe once it is subscribed"
            )
        if since is not None:
            # A replay overlapping another subscription of this connection on the channel
            # ("*" and a named event) would deliver that one's messages a second time.
            overlap = next(
                (e for c, e in self._subscriptions if c == name
                 and (e == WILDCARD or event == WILDCARD)),
                None,
            )
            if overlap is not None:
                raise BadRequest(
                    f"a resume (since) of {show(event)} would replay what this connection's "
                    f"subscription to {show(overlap)} on channel {show(name)} "
                    "delivered already; subscribe without since, or unsubscribe first"
                )

    def channel_removed(self, name: str) -> None:
        """
        The hub removed channel ``name`` (its subscribers got a ``gap`` with reason
        ``"removed"`` and were unsubscribed): forget this connection's subscriptions and
        listens on it, so the name may be subscribed to again once it is created anew.
        """
        for key in [k for k in self._subscriptions if k[0] == name]:
            del self._subscriptions[key]
        if self.control is not None:
            self.control.channel_removed(name)

    def _subscribed(self, subscription: Subscription, key: tuple[str, str]) -> None:
        self._resuming.discard(key)
        carrier = self.carrier
        assert carrier is not None
        carrier.send_control(
            _frame(
                {
                    "type": "subscribed",
                    "channel": subscription.channel,
                    "event": subscription.event,
                    "epoch": subscription.epoch,
                    "last_id": subscription.last_id,
                    "replayed": len(subscription.replay),
                }
            )
        )
        if subscription.gap is not None:
            carrier.notify_gap(subscription.channel, subscription.event, subscription.gap)
        for message in subscription.replay:
            carrier.deliver(message)

    def _subscribe_failed(
        self, failure: Failure, key: tuple[str, str], request: dict[str, Any]
    ) -> None:
        self._resuming.discard(key)
        self._subscriptions.pop(key, None)
        if failure.check(ChannelUnavailableError):
            # Expected while Redis is down: the client is told; no traceback.
            _log.warn("subscribe {key} failed: {error}", key=key, error=failure.value)
            code = "unavailable"
        else:
            _log.failure("subscribe {key} failed", failure=failure, key=key)
            code = "internal"
        self._error(f"subscribe failed: {failure.getErrorMessage()}", "subscribe", code, request)

    def _unsubscribe(self, request: dict[str, Any]) -> None:
        channel, event = self._target(request)
        if (channel.name, event) in self._resuming:
            raise BadRequest(
                f"the subscription to {show(event)} on channel {show(channel.name)} is still "
                "resuming; unsubscribe once it is subscribed"
            )
        if self._subscriptions.pop((channel.name, event), None) is None:
            raise BadRequest(
                f"not subscribed to {show(event)} on channel {show(channel.name)}"
            )
        carrier = self.carrier
        assert carrier is not None
        channel.unsubscribe(event, carrier)
        carrier.send_control(
            _frame({"type": "unsubscribed", "channel": channel.name, "event": event})
        )

    def _ping(self, request: dict[str, Any]) -> None:
        frame = b'{"type":"pong"}'
        if "id" in request:
            try:
                id_json = encode_json(request["id"])
            except InvalidDataError as e:
                raise BadRequest(f"ping id cannot be echoed: {e}") from None
            if len(id_json) > MAX_PING_ID:
                raise BadRequest(f"ping id is longer than {MAX_PING_ID} characters as JSON")
            frame = b'{"type":"pong","id":' + id_json.encode("utf-8") + b"}"
        assert self.carrier is not None
        self.carrier.send_control(frame)

    _handlers: dict[str, Callable[[EventWebSocketProtocol, dict[str, Any]], None]] = {
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "ping": _ping,
    }

    def _target(self, request: dict[str, Any]) -> tuple[Channel, str]:
        event = request.get("event")
        if event is None:
            raise BadRequest("missing 'event'")
        check_event_name(event, wildcard=True)
        name = request.get("channel", self.factory.default_channel)
        if not isinstance(name, str):
            raise BadRequest(f"channel must be a string, got {show(name)}")
        try:
            channel = self.factory.channels[name]
        except KeyError:
            raise BadRequest(f"unknown channel {show(name)}", "unknown_channel") from None
        return channel, event

    def _error(
        self,
        reason: str,
        request_type: object = None,
        code: str = "bad_request",
        request: dict[str, Any] | None = None,
    ) -> None:
        """
        Send an ``error`` frame: ``reason``, ``code``, the request's type when it is short
        and printable, and its ``ref`` when it had one that may be echoed (the control
        requests' rule: a string or an integer, at most 64 characters as JSON).
        """
        frame: dict[str, Any] = {"type": "error", "reason": clip(reason), "code": code}
        # Echo the request's type only when it is short and printable (always encodable).
        if isinstance(request_type, str) and len(request_type) <= 60:
            if request_type.isprintable():
                frame["request"] = request_type
        if request is not None and "ref" in request:
            from ..hub._control_fields import ref_of  # (the hub imports this module)

            ref = ref_of({"i": request["ref"]})
            if ref is not None:
                frame["ref"] = ref
        if self.carrier is not None:
            self.carrier.send_control(_frame(frame))


class EventWebSocketFactory(WebSocketServerFactory):
    """
    Serves the JSON protocol above; use it with ``listenTCP``/endpoints, or behind
    twisted.web through :class:`autobahn.twisted.resource.WebSocketResource`.

    :param channels: where channel names are looked up (``registry[name]``; a KeyError
        means unknown) — the process-wide :data:`~twisted_event_dispatcher.channels.registry`
        by default.
    :param default_channel: the channel of requests that name none.
    :param allowed_origins: browser origins accepted at the handshake (others get 403):
        :data:`LOOPBACK_ORIGINS` by default, the hub's policy (pages served from
        ``127.0.0.1``, ``localhost`` or ``[::1]``, any port), so a page of another site
        cannot use a visitor's browser to connect. Name the origins of your pages
        (``"https://app.example"``, ``"http://*.example:8080"``), or pass ``("*",)`` to
        accept every origin (an explicit opt-in). A request without an ``Origin`` header
        (a non-browser client) is accepted whatever this says: use ``authorize`` to
        refuse those.
    :param max_subscriptions: subscriptions one connection may hold.
    :param max_queue: messages queued for a client that is not reading (answers to its
        requests may wait past it: see flow control above).
    :param overflow: ``"drop_oldest"`` or ``"disconnect"`` when that queue is full.
    :param max_message_size: largest frame or message accepted from a client, in bytes.
    :param authorize: called with each ``ConnectionRequest``; raise
        :class:`autobahn.websocket.types.ConnectionDeny` to refuse it.
    :param max_request_rate: requests one connection may send a second, in bursts of as
        many; past it a request gets an ``error`` frame instead (``0``: no limit).
    :param clock: for the request rate (the reactor by default).
    :param control: the hub's control plane
        (:class:`~twisted_event_dispatcher.hub._control.ControlPlane`), which carries out
        the control requests (``create_channel`` ... ``unwatch``); without it they get an
        ``error`` frame with ``code`` ``unsupported``. Channels its hub removes are
        forgotten by every connection.
    :param max_listens: listens one connection may hold.
    """

    protocol = EventWebSocketProtocol  # type: ignore[assignment]

    def __init__(
        self,
        url: str | None = None,
        *,
        channels: Any = None,
        default_channel: str = "events",
        allowed_origins: Sequence[str] = LOOPBACK_ORIGINS,
        max_subscriptions: int = 100,
        max_queue: int = 1000,
        overflow: str = DROP_OLDEST,
        max_message_size: int = 64 * 1024,
        authorize: Callable[[ConnectionRequest], None] | None = None,
        max_request_rate: float = 100.0,
        clock: IReactorTime | None = None,
        control: ControlPlane | None = None,
        max_listens: int = 100,
    ) -> None:
        super().__init__(url)  # type: ignore[no-untyped-call]
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        #: Requests per connection (keyed by the connection's id while it is open).
        self.request_rate = RateLimiter(
            max_request_rate, max(1, int(max_request_rate)), clock, max_keys=1_000_000
        )
        if max_subscriptions < 1:
            raise ValueError(f"max_subscriptions must be >= 1, got {max_subscriptions}")
        if max_listens < 1:
            raise ValueError(f"max_listens must be >= 1, got {max_listens}")
        check_queue_options(max_queue, overflow)
        self.channels = default_registry if channels is None else channels
        self.default_channel = default_channel
        self.max_subscriptions = max_subscriptions
        self.max_queue = max_queue
        self.overflow = overflow
        self.authorize = authorize
        self.control = control
        self.max_listens = max_listens
        self.connections: set[EventWebSocketProtocol] = set()
        if control is not None:
            control.hub.hub_channels.removed_callbacks.append(self._channel_removed)
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            allowedOrigins=origin_patterns(allowed_origins),
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            # Tell an abusive client why (e.g. 1009 for a frame too big) before closing.
            failByDrop=False,
        )

    def _channel_removed(self, name: str) -> None:
        for connection in list(self.connections):
            connection.channel_removed(name)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server going away") -> None:
        """Close every connection (e.g. on shutdown) with a going-away code."""
        for connection in list(self.connections):
            connection.close_with(code, reason)
