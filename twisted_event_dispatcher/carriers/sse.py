"""
The Server-Sent Events carrier: a twisted.web resource streaming ``text/event-stream``.

``GET /sse?event=a&event=b&channel=news`` subscribes the stream to events ``a`` and ``b``
(no ``event``: every event) of a channel (the resource's default one when not named). Each
message is one block::

    id: <epoch>:<offset>
    event: <event name>
    data: {"type": "event", "id": ..., "epoch": ..., "channel": ..., "event": ..., "data": ...}

The stream starts with a ``retry:`` field and a ``_subscribed`` block per event, sends a
``: keepalive`` comment every ``heartbeat`` seconds, and tells a slow client how many
messages it missed with a ``_dropped`` block. A browser's ``EventSource`` reconnects by
itself and sends the last id it saw as ``Last-Event-ID``; the stream then resumes after
that offset (or sends a ``_gap`` block when it cannot). ``?since=<epoch>:<offset>`` (or a
bare offset) does the same for clients that are not browsers. Event names starting with
``_`` are reserved for these control blocks, so they never collide with yours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..channels import registry as default_registry
from ..channels.base import WILDCARD, Channel, Gap, Subscription, check_event_name
from ..channels.message import Message, encode_json
from ..errors import ChannelUnavailableError
from .base import DROP_OLDEST, QueueingCarrier, check_queue_options

__all__ = ["SSECarrier", "SSEResource", "parse_last_event_id"]

_log = Logger(namespace="twisted_event_dispatcher.sse")


def _block(message: Message) -> bytes:
    return (
        f"id: {message.epoch}:{message.id}\nevent: {message.event}\ndata: {message.json}\n\n"
    ).encode()


def _control(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {encode_json(payload)}\n\n".encode()


#: Offsets are 64-bit (Redis stream ids); a larger ``since`` is a client error.
MAX_OFFSET = 2**63 - 1
#: Longest epoch a client may send back (ours are 16 hex digits).
MAX_EPOCH_LENGTH = 64


def parse_last_event_id(value: str) -> tuple[int, str | None]:
    """
    ``"<epoch>:<offset>"`` (what this carrier sends as ``id``) or a bare ``"<offset>"``
    as ``(offset, epoch or None)``; ``ValueError`` otherwise. Only ASCII digits and
    letters count (``"\\u0663"`` is a digit to Python, not an offset).
    """
    epoch, _, offset = value.strip().rpartition(":")
    if (
        not (offset.isascii() and offset.isdigit())
        or (epoch and not (epoch.isascii() and epoch.isalnum()))
        or len(offset) > 20
        or len(epoch) > MAX_EPOCH_LENGTH
        or int(offset) > MAX_OFFSET
    ):
        shown = value if len(value) <= 100 else value[:100] + "…"
        raise ValueError(f"expected '<epoch>:<offset>' or '<offset>', got {shown!r}")
    return int(offset), epoch or None


def _text(value: bytes, what: str) -> str:
    """Client bytes as text; a ``ValueError`` naming ``what`` (a 400) if not UTF-8."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not valid UTF-8") from None


class SSECarrier(QueueingCarrier):
    """
    Delivers messages as SSE blocks on one streaming HTTP response.

    A stream subscribes to several events at once, and a resuming subscription may
    complete asynchronously (Redis reads the history): between :meth:`hold` and
    :meth:`release`, live messages wait, so that the stream starts with the replay and
    stays in offset order whichever subscription completes first.
    """

    def __init__(self, request: Request, max_queue: int, overflow: str) -> None:
        super().__init__(max_queue, overflow)
        self.request = request
        self._holding: list[Message] | None = None
        self._held_dropped = 0

    def hold(self) -> None:
        """Keep live messages back (at most ``max_queue``, the oldest dropped first)."""
        self._holding = []

    def deliver(self, message: Message) -> None:
        holding = self._holding
        if holding is None:
            super().deliver(message)
            return
        if len(holding) >= self.max_queue:
            del holding[0]
            self._held_dropped += 1
        holding.append(message)

    def release(self, replay: list[Message]) -> None:
        """
        Deliver ``replay`` and the messages held back, merged into offset order, each
        once; then deliver live messages as they come.
        """
        held, self._holding = self._holding or [], None
        merged = {m.id: m for m in replay}
        merged.update((m.id, m) for m in held)
        for offset in sorted(merged):
            super().deliver(merged[offset])
        if self._held_dropped:
            count, self._held_dropped = self._held_dropped, 0
            self.send_control(_control("_dropped", {"count": count}))

    def _write_message(self, message: Message) -> None:
        self.request.write(message.encoded(SSECarrier, _block))

    def _write_control(self, frame: Any) -> None:
        self.request.write(frame)

    def _gap_frame(self, channel: str, event: str, gap: Gap) -> bytes:
        return _control("_gap", {"channel": channel, "event": event, **gap._asdict()})

    def _write_dropped(self, count: int) -> None:
        self.request.write(_control("_dropped", {"count": count}))

    def _overflowed(self) -> None:
        _log.info("closing SSE stream of {peer}: too slow", peer=self.request.getClientAddress())
        self.connection_lost()
        transport: Any = self.request.channel.transport if self.request.channel else None
        if transport is not None:
            transport.abortConnection()


class SSEResource(Resource):
    """
    Streams a channel's events as Server-Sent Events.

    :param channels: where channel names are looked up (the process-wide registry by
        default); a KeyError means unknown.
    :param default_channel: the channel of requests that name none.
    :param heartbeat: seconds between keepalive comments (proxies close idle streams).
    :param retry: milliseconds a browser should wait before reconnecting.
    :param max_events: events one stream may subscribe to.
    :param max_queue: messages queued for a client that is not reading.
    :param overflow: ``"drop_oldest"`` or ``"disconnect"`` when that queue is full.
    :param authorize: called with each request; return an error message to refuse it
        with 401, or None to accept.
    :param clock: for the heartbeat (the reactor by default).
    """

    isLeaf = True
    # Not HEAD: a HEAD would open a stream that never writes a byte.
    allowedMethods = (b"GET",)

    def __init__(
        self,
        *,
        channels: Any = None,
        default_channel: str = "events",
        heartbeat: float = 15.0,
        retry: int = 3000,
        max_events: int = 100,
        max_queue: int = 1000,
        overflow: str = DROP_OLDEST,
        authorize: Callable[[Request], str | None] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        check_queue_options(max_queue, overflow)
        if not heartbeat > 0:
            raise ValueError(f"heartbeat must be positive, got {heartbeat!r}")
        self.channels = default_registry if channels is None else channels
        self.default_channel = default_channel
        self.heartbeat = heartbeat
        self.retry = retry
        self.max_events = max_events
        self.max_queue = max_queue
        self.overflow = overflow
        self.authorize = authorize
        self.clock = clock
        self.streams: set[SSECarrier] = set()

    def render_GET(self, request: Request) -> bytes | int:
        if self.authorize is not None:
            refusal = self.authorize(request)
            if refusal is not None:
                return self._refuse(request, 401, refusal)
        try:
            channel, events, since, epoch = self._parse(request)
        except KeyError as e:
            return self._refuse(request, 400, f"no channel named {e.args[0]!r}")
        except (TypeError, ValueError) as e:
            return self._refuse(request, 400, str(e))
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(f"retry: {self.retry}\n\n".encode())
        carrier = SSECarrier(request, self.max_queue, self.overflow)
        request.registerProducer(carrier, True)
        self.streams.add(carrier)
        heartbeat = LoopingCall(carrier.send_control, b": keepalive\n\n")
        if self.clock is not None:
            heartbeat.clock = self.clock
        heartbeat.start(self.heartbeat, now=False)

        def finished(_: object) -> None:
            if heartbeat.running:
                heartbeat.stop()
            self.streams.discard(carrier)
            carrier.connection_lost()

        request.notifyFinish().addBoth(finished)
        carrier.hold()  # until every subscription has its replay (see _subscribed)
        subscribed = gatherResults(
            [channel.subscribe(event, carrier, since, epoch) for event in events],
            consumeErrors=True,
        )
        subscribed.addCallbacks(
            self._subscribed, self._failed, callbackArgs=(carrier,), errbackArgs=(carrier,)
        )
        return NOT_DONE_YET

    def _parse(self, request: Request) -> tuple[Channel, list[str], int | None, str | None]:
        args = request.args or {}
        names = [_text(n, "query parameter 'channel'") for n in args.get(b"channel", [])]
        if len(names) > 1:
            raise ValueError("give at most one 'channel'")
        channel: Channel = self.channels[names[0] if names else self.default_channel]
        events = list(
            dict.fromkeys(_text(e, "query parameter 'event'") for e in args.get(b"event", []))
        )
        for event in events:
            check_event_name(event, wildcard=True)
        if len(events) > self.max_events:
            raise ValueError(f"at most {self.max_events} events per stream")
        raw = request.getHeader(b"last-event-id")
        resume = None if raw is None else _text(raw, "the Last-Event-ID header")
        if resume is None and b"since" in args:
            resume = _text(args[b"since"][0], "query parameter 'since'")
        since, epoch = parse_last_event_id(resume) if resume else (None, None)
        return channel, events or [WILDCARD], since, epoch

    def _subscribed(self, subscriptions: list[Subscription], carrier: SSECarrier) -> None:
        replay: list[Message] = []
        for subscription in subscriptions:
            carrier.send_control(
                _control(
                    "_subscribed",
                    {
                        "channel": subscription.channel,
                        "event": subscription.event,
                        "epoch": subscription.epoch,
                        "last_id": subscription.last_id,
                        "replayed": len(subscription.replay),
                    },
                )
            )
            if subscription.gap is not None:
                carrier.notify_gap(subscription.channel, subscription.event, subscription.gap)
            replay.extend(subscription.replay)
        # several events: their missed messages and the live ones that came meanwhile,
        # merged back into offset order, once each
        carrier.release(replay)

    def _failed(self, failure: Failure, carrier: SSECarrier) -> None:
        if isinstance(failure.value, FirstError):  # gatherResults: the first that failed
            failure = failure.value.subFailure
        if failure.check(ChannelUnavailableError):
            # Expected while Redis is down: the client is told; no traceback.
            _log.warn("SSE subscribe failed: {error}", error=failure.value)
        else:
            _log.failure("SSE subscribe failed", failure=failure)
        if not carrier.closed:
            carrier.send_control(_control("_error", {"reason": failure.getErrorMessage()}))
            carrier.request.unregisterProducer()  # before finish(), which insists on it
            carrier.request.finish()

    def _refuse(self, request: Request, code: int, reason: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return encode_json({"error": reason}).encode("utf-8")

    def close_all(self) -> None:
        """End every stream (e.g. on shutdown); browsers will try to reconnect."""
        for carrier in list(self.streams):
            if not carrier.closed:
                carrier.request.unregisterProducer()  # before finish(), which insists on it
                carrier.request.finish()
