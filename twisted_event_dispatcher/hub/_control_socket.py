"""
The control socket: newline-delimited JSON over a stream (a UNIX socket, typically), one
canonical request (see :mod:`._control`) per line, one answer line per request, written
when it completes (so in completion order; ``i`` tells them apart).

A connection is in one of three modes:

* **requests** (at first): every line is a request of any verb. ``l`` or ``w`` turns it
  into a stream (reading pauses until the stream's answer is written).
* **listen** (after ``l``): mail lines ``{"id", "t", "p", "n", "s", "r", "c"}`` (+ ``"g"``,
  ``"q": true``; a group mail's ``id`` starts with ``g:``, see
  :func:`~._control_listen.wire_id`); the client sends ``{"ack": id}`` (+ ``"reply"`` or
  ``"error"``) and ``{"release": id}`` with the id as the line showed it; any other
  line gets an error line. When the listener's consumer ends: ``{"end": reason}``, then
  the hub closes the connection.
* **watch** (after ``w``): the channel's broadcasts, each line exactly a WebSocket frame
  (``{"type": "event"...}``, ``gap``, ``dropped``), through a bounded queue (the hub's
  ``max_queue`` and ``overflow``). A ``gap`` with reason ``removed`` (the channel was
  removed) is the last line: the hub closes the connection.

**Half-close** (eric-sse's ``SocketClient`` writes one request without a newline, shuts
down its writing side and reads to the end): the protocol is an
:class:`~twisted.internet.interfaces.IHalfCloseableProtocol`. At the client's end of
data, an unterminated last line is a request line like any other (same checks, same
``max_line``); every line is carried out and answered, then:

* requests mode: once every answer is written (a ``q`` waits for its reply or timeout),
  the hub closes the connection, so the client's read ends;
* listen: the stream goes on, read-only (:meth:`~._control_listen.ListenSession.read_only`):
  mail is acknowledged as it is written, what was unacknowledged is acknowledged then,
  and a request is written and failed back at once to its requester (``remote``,
  ``remote_type`` ``ClientError``: nobody can reply to it); it ends as usual with
  ``{"end": reason}``, then the close;
* watch: it goes on until it ends.

A client that CLOSES its socket rather than half-closing is gone, as before: its
connection ends (a listen's unacknowledged mail goes to the next stream; an unterminated
last line and lines not read yet are dropped). On a UNIX socket the two are told apart
by ``poll()`` (``POLLHUP``: both directions shut; checked at the end of data, and before
each acknowledgement on a read-only stream, so mail is never acknowledged to a closed
socket). On TCP they cannot be told apart until a write fails, so a listen stream there
ends at the client's end of data as at a disconnect (its mail goes to the next stream),
rather than risk acknowledging mail to a client that is gone.

Errors are lines ``{"error", "v", "code"}`` (+ ``"i"``); the connection stays usable,
except for a line longer than ``max_line`` bytes (``code`` ``too_large``, then closed) and
a connection beyond ``max_connections`` (``code`` ``limit``, then closed; the first
refusal is logged, then one summary a minute at most). The error of an ack or release
line on a listen stream says ``"v": "ack"`` (or ``"release"``) and carries the line's
``"id"``. Bounds: at most ``max_pending`` lines of one connection being carried out at
once (beyond that the hub stops reading it), and the hub stops reading while the client
does not read.

**The hub stopping** (:meth:`ControlFactory.close_all`): a listen or watch stream gets a
last line ``{"end": "stopping"}``; every request still waiting for its answer (a ``q``
waiting for its reply) is answered ``unavailable`` ("the hub is stopping"); then the
connection is closed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..carriers.base import DROP_OLDEST
from ._control import ControlError, ControlPlane, ListenSession, error_answer, ref_of
from ._control_lines import WatchCarrier, encode_line, parse_line, peer_closed
from ._limits import WARN_EVERY
from .options import is_loopback

__all__ = ["ControlFactory", "ControlProtocol", "WatchCarrier", "listen_control"]

_log = Logger(namespace="twisted_event_dispatcher.hub")

#: Lines of one connection carried out at once before the hub stops reading it.
MAX_PENDING = 1000
#: The reason a stream ends with when the hub stops.
STOPPING = "stopping"


@implementer(IPushProducer, IHalfCloseableProtocol)
class ControlProtocol(Protocol):
    """One control connection (see the module doc)."""

    factory: ControlFactory

    def __init__(self) -> None:
        self._buffer = b""
        self._processing = False
        self._mode = "requests"  # "opening", "listen", "watch", "ended"
        self._pending = 0
        self._read_paused: set[str] = set()
        self._write_paused = False
        self._gone = False
        self.session: ListenSession | None = None
        self.carrier: WatchCarrier | None = None
        # Answers awaited, with their verb and ref: answered "unavailable" if the hub stops
        # first (and a "q" is cancelled then, or when the client goes).
        self._requests: dict[Deferred[Any], tuple[object, str | int | None]] = {}
        self._stopping = False  # close() answered what was pending: later answers are dropped
        self._read_eof = False  # the client half-closed: no more data comes
        self._read_only = False  # the listen stream went read-only at the end of data
        self.peer = "?"

    # -- connection ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer: IAddress = transport.getPeer()
        self.peer = str(getattr(peer, "name", None) or peer)
        self.factory.connections.add(self)
        transport.registerProducer(self, True)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._gone:
            return  # (ended already, at the client's close: see readConnectionLost)
        self._gone = True
        self._mode = "ended"
        self.factory.connections.discard(self)
        session, self.session = self.session, None
        if session is not None:
            session.close().addErrback(self._bug, "closing a listen stream")
        if self.carrier is not None:
            self.carrier.connection_lost()
        for request, (verb, _ref) in list(self._requests.items()):
            if verb == "q":
                request.cancel()

    def readConnectionLost(self) -> None:
        """
        The client's end of data: a half-close (carry out what came, its last line even
        unterminated; see the module doc) or a close (the client is gone: end).
        """
        self._read_eof = True
        if self._gone or self._mode == "ended":
            return
        if peer_closed(self.transport):
            # Gone: end now, not when the transport's connectionLost comes (a reactor
            # turn later), so no mail is written (and auto-acknowledged) meanwhile.
            self._buffer = b""
            self.connectionLost()
            transport: Any = self.transport
            transport.abortConnection()
            return
        self._process()

    def writeConnectionLost(self) -> None:
        """(The hub never half-closes its side.)"""

    def _after_eof(self) -> None:
        """
        Everything the half-closed client sent is read: close once every answer is out
        (requests mode); a listen stream goes read-only (UNIX) or ends (TCP).
        """
        if not self._read_eof or self._gone or self._buffer:
            return
        transport: Any = self.transport
        if self._mode == "requests" and self._pending == 0:
            self._mode = "ended"
            transport.loseConnection()  # (after what is written is flushed)
        elif self._mode == "listen" and not self._read_only and self.session is not None:
            self._read_only = True
            if peer_closed(transport) is None:  # TCP: it may be gone (module doc)
                self._mode = "ended"
                session, self.session = self.session, None  # (detached now: see above)
                session.close().addErrback(self._bug, "closing a listen stream")
                transport.loseConnection()
            else:
                self.session.read_only()

    def close(self, reason: str = STOPPING) -> None:
        """
        End the connection (the hub stops): a stream is told ``{"end": reason}``, every
        request awaiting its answer is answered ``unavailable`` (see the module doc).
        """
        if self._gone or self._stopping:
            return
        if self._mode in ("listen", "watch"):
            self._write({"end": reason})
        for verb, ref in list(self._requests.values()):
            message = "the hub is stopping"
            if verb != "q":
                message += " (the request may or may not have been carried out)"
            self._send_error(ControlError("unavailable", message), verb, ref)
        self._stopping = True
        for request, (verb, _ref) in list(self._requests.items()):
            if verb == "q":
                request.cancel()  # (forgets it: a late reply is ignored)
        self._mode = "ended"
        transport: Any = self.transport
        transport.loseConnection()

    # -- IPushProducer (requests and listen modes) ---------------------------------------

    def pauseProducing(self) -> None:
        self._write_paused = True
        self.pause_reading("writes")

    def resumeProducing(self) -> None:
        self._write_paused = False
        if self.session is not None:
            self.session.resume()
        self.resume_reading("writes")

    def stopProducing(self) -> None:
        self._write_paused = True

    def pause_reading(self, why: str) -> None:
        """Stop reading the client (``why``: writes, pending, opening) until resumed."""
        # (after the end of data the transport reads no more: resuming it would read the
        # end again)
        if not self._read_paused and not self._gone and not self._read_eof:
            transport: Any = self.transport
            transport.pauseProducing()
        self._read_paused.add(why)

    def resume_reading(self, why: str) -> None:
        if why not in self._read_paused:
            return
        self._read_paused.discard(why)
        if not self._read_paused and not self._gone:
            if not self._read_eof:
                transport: Any = self.transport
                transport.resumeProducing()
            self._process()

    # -- ListenSink ----------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        if self._write_paused or self._gone:
            return False
        # a read-only stream: no acknowledgement of mail written to a closed socket
        return not (self._read_only and peer_closed(self.transport))

    def mail_line(self, mail: dict[str, Any]) -> None:
        self._write(mail)

    def end(self, reason: str) -> None:
        if self._mode != "listen" or self._gone:
            return
        self._write({"end": reason})
        self._mode = "ended"
        transport: Any = self.transport
        transport.loseConnection()

    # -- reading -------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._mode == "ended":
            return
        self._buffer += data
        self._process()

    def _process(self) -> None:
        """
        Carry out the buffered lines, until reading is paused (re-entry: a no-op); after
        the client's end of data, the last one even unterminated, then :meth:`_after_eof`.
        """
        if self._processing:
            return  # the loop below goes on, and sees whether reading was paused
        self._processing = True
        try:
            self._process_lines()
        finally:
            self._processing = False
        self._after_eof()

    def _process_lines(self) -> None:
        max_line = self.factory.max_line
        buffer, start = self._buffer, 0
        while not self._read_paused and self._mode != "ended" and not self._gone:
            end = buffer.find(b"\n", start)
            if end < 0:
                if len(buffer) - start > max_line:
                    self._too_large()
                    return
                if not self._read_eof or start >= len(buffer):
                    break
                end = len(buffer)  # the last line, unterminated: the client's end
            if end - start > max_line:
                self._too_large()
                return
            line, start = buffer[start:end], end + 1
            self._handle(line)
        self._buffer = buffer[start:] if self._mode != "ended" else b""

    def _too_large(self) -> None:
        self._send_error(
            ControlError(
                "too_large",
                f"a line is longer than {self.factory.max_line} bytes; closing the connection",
            ),
            None, None,
        )
        self._mode = "ended"
        self._buffer = b""
        transport: Any = self.transport
        transport.loseConnection()

    def _handle(self, line: bytes) -> None:
        request: Any = None
        try:
            request = parse_line(line)
            if self._mode == "listen":
                assert self.session is not None
                verb, extra = _settling(request)
                self._track(self.session.client_line(request), verb, ref_of(request), extra)
            elif self._mode == "watch":
                raise ControlError(
                    "streaming", "this connection is a watch stream: it takes no requests; "
                    "open another connection for them"
                )
            else:
                verb = request.get("v")
                if verb == "l":
                    self._open_listen(request)
                elif verb == "w":
                    self._open_watch(request)
                else:
                    answered = self.factory.plane.execute(request)
                    if not answered.called:
                        self._requests[answered] = (verb, ref_of(request))
                        answered.addBoth(self._forget, answered)
                    self._track(answered, verb, ref_of(request))
        except Exception as e:
            self._send_error(e, _verb(request), ref_of(request))

    def _forget(self, result: object, request: Deferred[Any]) -> object:
        self._requests.pop(request, None)
        return result

    def _track(
        self,
        answered: Deferred[Any],
        verb: object,
        ref: str | int | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """
        Count ``answered`` as pending until it fires; write its answer (or its error, with
        ``extra``'s fields).
        """
        if answered.called and not isinstance(answered.result, Deferred):
            answered.addCallbacks(self._answer, self._failed, errbackArgs=(verb, ref, extra))
            return
        self._pending += 1
        if self._pending >= self.factory.max_pending:
            self.pause_reading("pending")

        def settled(result: object) -> object:
            self._pending -= 1
            if self._pending < self.factory.max_pending:
                self.resume_reading("pending")
            self._after_eof()  # (a half-closed client: its last answer may be out)
            return result

        answered.addCallbacks(self._answer, self._failed, errbackArgs=(verb, ref, extra))
        answered.addBoth(settled)

    def _answer(self, answer: object) -> None:
        if isinstance(answer, dict) and not self._stopping:  # (acks and releases: nothing)
            self._write(answer)

    def _failed(
        self,
        failure: Failure,
        verb: object,
        ref: str | int | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if failure.check(CancelledError) and (self._gone or self._stopping):
            return
        if self._stopping:  # (answered "unavailable" already)
            return
        self._send_error(failure, verb, ref, extra)

    def _send_error(
        self,
        error: BaseException | Failure,
        verb: object,
        ref: str | int | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        answer = error_answer(error, verb, ref)
        if extra:
            answer.update(extra)
        self._write(answer)

    def _write(self, value: dict[str, Any]) -> None:
        if self._gone:
            return
        line = encode_line(value)
        if self.carrier is not None:
            self.carrier.send_control(line)
        else:
            transport: Any = self.transport
            transport.write(line)

    # -- streams -------------------------------------------------------------------------

    def _open_listen(self, request: dict[str, Any]) -> None:
        self._mode = "opening"
        self.pause_reading("opening")
        opened = self.factory.plane.open_listen(request, self)

        def listening(session: ListenSession) -> None:
            if self._gone:
                session.close().addErrback(self._bug, "closing a listen stream")
                return
            self.session = session
            self._mode = "listen"
            self._write(session.answer)
            session.start()
            self.resume_reading("opening")

        def failed(failure: Failure) -> None:
            self._mode = "requests"
            self._send_error(failure, "l", ref_of(request))
            self.resume_reading("opening")

        opened.addCallbacks(listening, failed).addErrback(self._bug, "opening a listen stream")

    def _open_watch(self, request: dict[str, Any]) -> None:
        self._mode = "opening"
        self.pause_reading("opening")
        transport: Any = self.transport
        carrier = WatchCarrier(self, self.factory.max_queue, self.factory.overflow)
        transport.unregisterProducer()
        transport.registerProducer(carrier, True)
        self.carrier = carrier
        opened = self.factory.plane.open_watch(request, carrier)

        def watching(answer: dict[str, Any]) -> None:
            if self._gone:
                return
            self._mode = "watch"
            self._write(answer)
            self.resume_reading("opening")

        def failed(failure: Failure) -> None:
            if self._gone:
                return
            self.carrier = None
            transport.unregisterProducer()
            transport.registerProducer(self, True)
            self._mode = "requests"
            self._send_error(failure, "w", ref_of(request))
            self.resume_reading("opening")

        opened.addCallbacks(watching, failed).addErrback(self._bug, "opening a watch stream")

    def _bug(self, failure: Failure, doing: str) -> None:
        _log.failure("control connection {peer}: {doing} failed", failure,
                     peer=self.peer, doing=doing)


def _verb(request: object) -> object:
    return request.get("v") if isinstance(request, dict) else None


def _settling(line: dict[str, Any]) -> tuple[object, dict[str, Any] | None]:
    """
    The verb an error answer of listen stream line ``line`` names (``"ack"``,
    ``"release"``; else the line's ``v``), and the fields it adds (``"id"``: the line's).
    """
    for verb in ("release", "ack"):
        if verb in line:
            return verb, {"id": line[verb]}
    return line.get("v"), None


class _Refused(Protocol):
    """A connection beyond ``max_connections``: one error line, then closed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(encode_line({
            "error": f"too many control connections (at most {self.limit}); try again later",
            "v": None, "code": "limit",
        }))
        transport.loseConnection()


class ControlFactory(Factory):
    """
    Serves the control protocol for ``plane``.

    :param max_line: longest line, in bytes (longer: ``too_large``, closed).
    :param max_connections: control connections open at once.
    :param max_pending: lines of one connection carried out at once.
    :param max_queue: lines queued for a watching client that is not reading.
    :param overflow: what happens when that queue is full (as for WebSocket clients).
    :param clock: for the refusals' log (the first is logged, then at most one summary
        every :data:`~._limits.WARN_EVERY` seconds); the reactor by default.
    """

    def __init__(
        self,
        plane: ControlPlane,
        *,
        max_line: int = 65536,
        max_connections: int = 100,
        max_pending: int = MAX_PENDING,
        max_queue: int = 1000,
        overflow: str = DROP_OLDEST,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        #: Connections refused (beyond ``max_connections``) since the factory was made.
        self.refused = 0
        self._reported = 0
        self._warned_at: float | None = None
        self._summary: IDelayedCall | None = None
        self.plane = plane
        self.max_line = max_line
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_queue = max_queue
        self.overflow = overflow
        self.connections: set[ControlProtocol] = set()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        if len(self.connections) >= self.max_connections:
            self._report_refusal()
            refused = _Refused(self.max_connections)
            refused.factory = self
            return refused
        protocol = ControlProtocol()
        protocol.factory = self
        return protocol

    def _report_refusal(self) -> None:
        """
        Log the first refusal; later ones are counted and told in one summary line (with
        the count) at most every :data:`~._limits.WARN_EVERY` seconds.
        """
        self.refused += 1
        if self._summary is not None:
            return  # (told in the summary already due)
        now = self.clock.seconds()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._log_refusals()
        else:
            self._summary = self.clock.callLater(
                self._warned_at + WARN_EVERY - now, self._log_refusals
            )

    def _log_refusals(self) -> None:
        self._summary = None
        count, self._reported = self.refused - self._reported, self.refused
        self._warned_at = self.clock.seconds()
        if count:
            _log.warn(
                "refused {count} control connection(s) since the last report: "
                "{limit} are open, the --max-control-connections limit",
                count=count, limit=self.max_connections,
            )

    def close_all(self, reason: str = STOPPING) -> None:
        """Close every control connection (streams get ``{"end": reason}`` first)."""
        if self._summary is not None:  # (told now: the timer would outlive the hub)
            self._summary.cancel()
            self._log_refusals()
        for connection in list(self.connections):
            connection.close(reason)


async def listen_control(
    endpoint: IStreamServerEndpoint, factory: ControlFactory, mode: int = 0o600
) -> IListeningPort:
    """
    Listen on ``endpoint`` with ``factory``. A unix socket gets file ``mode`` (set by
    Twisted between ``bind`` and ``listen``, so nobody connects before it applies; a
    stale socket file is replaced under Twisted's lock file). A TCP endpoint must be bound
    to a loopback address (the socket has no token): otherwise it is closed and
    :class:`RuntimeError` says why.
    """
    if isinstance(endpoint, UNIXServerEndpoint):
        endpoint._mode = mode
    port: IListeningPort = await endpoint.listen(factory)
    address: Any = port.getHost()
    if isinstance(address, IPv4Address | IPv6Address) and not is_loopback(address.host):
        await maybeDeferred(port.stopListening)
        raise RuntimeError(
            f"refusing to serve the control socket on {address.host}: it has no token, so "
            "anyone who can reach it could drive the hub; use a unix: socket or 127.0.0.1"
        )
    where = getattr(address, "name", None)
    if isinstance(where, bytes):
        where = where.decode("utf-8", "replace")
    _log.info("control socket listening on {where}", where=where or str(address))
    return port
