"""
What :class:`~twisted_event_dispatcher.client.HubClient` needs from a transport, and the
bounds every transport keeps.

A *link* carries requests in the hub's canonical form (the control socket's short keys:
``{"v": "d", "c": ..., "r": ..., "t": ..., "p": ...}``) and gives back canonical answers,
whatever goes over the wire (JSON lines on the control socket, typed frames on WebSocket).
A listen or a watch is *opened* on a link: the link hands what arrives for it to a
*sink* (canonical mail lines, or the watch's event/gap/dropped frames) and the sink talks
back through the *feed* the open fired with (acks, pausing, closing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from ._client_errors import HubConnectionError, HubRequestError
from .channels.message import MAX_DEPTH, encode_json
from .errors import InvalidDataError

__all__ = ["Feed", "Limits", "Link", "ProtocolViolation", "Sink", "encode_line"]


@dataclass(frozen=True)
class Limits:
    """
    The client's bounds on one hub connection.

    :ivar max_line: longest line (control socket) or message (WebSocket) accepted from the
        hub, in bytes; a longer one breaks the connection (a stream on it ends with the
        error instead of reconnecting into the same line again). It must hold the
        largest mail: the hub bounds event data to 1 MiB, hence 4 MiB by default. (On
        WebSocket the bound is the larger of ``max_line`` and ``max_request``: Autobahn
        has one bound for both directions.)
    :ivar max_request: longest request the client sends, in bytes: the hub's
        ``--max-frame`` (65536 by default). A longer one is refused at once with
        :class:`HubRequestError` (code ``"too_large"``) instead of having the hub close
        the connection, which would fail every call pipelined on it.
    :ivar max_pending: calls awaiting their answer on one connection; one more fails at
        once with :class:`HubRequestError` (code ``"limit"``) rather than queueing
        without bound. The hub itself stops reading a connection with 1000 unanswered.
    """

    max_line: int = 4 * 1024 * 1024
    max_request: int = 65536
    max_pending: int = 1000

    def pending_refusal(self, pending: int, verb: object) -> HubRequestError | None:
        """The error for one more call when ``pending`` await their answer, else None."""
        if pending < self.max_pending:
            return None
        return HubRequestError(
            f"{pending} calls are awaiting their answer on this connection "
            f"(max_pending {self.max_pending}); wait for some first",
            "limit", verb,
        )

    def __post_init__(self) -> None:
        for name in ("max_line", "max_request", "max_pending"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class ProtocolViolation(HubConnectionError):
    """
    The hub sent something the client cannot read (a line over ``max_line``, a line that
    is not a JSON object) or refused the connection for good (a bad token): a stream
    ends with it rather than reconnecting into the same failure forever.
    """


def encode_line(request: dict[str, Any], limits: Limits) -> str:
    """
    ``request`` as compact JSON, checked before anything is sent: raises
    :class:`~twisted_event_dispatcher.errors.InvalidDataError` for data that has no JSON
    form or nests deeper than ``MAX_DEPTH`` (64) levels (the request around it is one
    more, as the hub allows), and :class:`HubRequestError` (``"too_large"``) past
    ``limits.max_request``.
    """
    try:
        text = encode_json(request, MAX_DEPTH + 1)
    except InvalidDataError as e:
        if "deeper than" not in str(e):
            raise
        raise InvalidDataError(f"data must not nest deeper than {MAX_DEPTH} levels") from None
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    # The ref the link adds is at most ~30 bytes; leave room for it.
    if size + 32 > limits.max_request:
        raise HubRequestError(
            f"the request is {size} bytes as JSON, more than the hub accepts "
            f"(max_request {limits.max_request}); send less data",
            "too_large",
            request.get("v"),
        )
    return text


class Sink(Protocol):
    """Receives what the hub sends for one open listen or watch."""

    def item(self, frame: dict[str, Any]) -> None:
        """A mail line (listen) or an event/gap/dropped frame (watch), canonical keys."""

    def end(self, reason: str) -> None:
        """The hub ended the stream (``{"end": reason}`` / ``listen_end``)."""

    def lost(self, error: HubConnectionError) -> None:
        """The connection carrying the stream is gone."""

    def problem(self, answer: dict[str, Any]) -> None:
        """An error line about something sent on the stream (e.g. an ack of an old id)."""


class Feed(Protocol):
    """An open listen or watch: the way back to the hub."""

    #: The hub's answer to the listen/watch request (canonical keys).
    answer: dict[str, Any]

    @property
    def alive(self) -> bool:
        """False once the connection that carries it is gone or it was closed."""

    def send(self, line: dict[str, Any]) -> bool:
        """Send an ack/release line (canonical); False if the connection is gone."""

    def pause(self) -> None:
        """Stop reading from the hub (the consumer is behind)."""

    def resume(self) -> None:
        """Read again."""

    def close(self) -> Deferred[None]:
        """End the stream; fires once the hub was told (or the connection is gone)."""


class Link(Protocol):
    """A transport to the hub: one-shot calls, and listens/watches opened on it."""

    #: The client's bounds on its connections.
    limits: Limits

    def call(self, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """
        Send a one-shot request; fires with the canonical answer or fails with the
        library exception its error code names (see :mod:`._client_errors`). Bad data
        raises at once.
        """

    def open(self, request: dict[str, Any], sink: Sink) -> Deferred[Feed]:
        """Open a listen (``"v": "l"``) or a watch (``"v": "w"``) whose lines go to ``sink``."""

    def close(self) -> Deferred[None]:
        """Close every connection of the link; fires when they are closed."""
