"""
zope.interface contracts. The docstrings here are the contract; implementations are
checked against them with :func:`zope.interface.verify.verifyObject` in the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from .results import FireResult

__all__ = ["ICarrier", "IChannel", "IEventDispatcher"]


class IEventDispatcher(Interface):
    """
    Dispatches events to handlers selected by a match spec, phase by phase.

    A dispatcher has a fixed ordered tuple of phases (by default ``("before", "during",
    "after")``) and a set of allowed match-spec keywords. Handlers are registered for one
    phase with a match spec (keyword -> value). Firing an event with keywords runs, phase
    by phase, every handler whose spec is a subset of those keywords; every result of a
    phase (values, Deferreds, coroutines) settles before the next phase starts.

    Every method must be called in the reactor thread (use
    :class:`twisted_event_dispatcher.sync.BlockingEventDispatcher` from other threads).
    Bad arguments raise synchronously, before any state changes; outcomes that depend on
    time or on handlers arrive through the returned Deferred.
    """

    running = Attribute("True between start() and stop(); events fired while False are buffered.")
    phases = Attribute("The tuple of phase names, in the order they run.")
    allowed_match_spec_keywords = Attribute(
        "frozenset of the keywords match specs and fire_event may use."
    )
    handler_count = Attribute("Number of handlers currently registered.")

    def add_event_handler(
        handler: Callable[[Any], object],
        phase: str,
        /,
        *,
        priority: int = 0,
        times: int | None = None,
        once: bool = False,
        weak: bool = False,
        timeout: float | None = None,
        **match_spec: Any,
    ) -> Deferred[int]:
        """
        Register ``handler`` to be called as ``handler(event)`` in ``phase`` for every event
        whose keywords include all of ``match_spec`` with equal values (a value may be
        :class:`~twisted_event_dispatcher.AnyOf`). An empty spec matches every event.

        Options (keyword-only, so these names cannot be match-spec keywords): ``priority``
        (int, lower runs first within a phase; ties run in registration order), ``times``
        (remove after that many calls), ``once`` (``times=1``), ``weak`` (hold the handler
        by weak reference; it is removed when collected), ``timeout`` (seconds; a handler
        whose Deferred or coroutine has not settled by then is cancelled and reported as a
        :class:`~twisted_event_dispatcher.errors.HandlerTimeoutError`).

        The handler takes part from the next event fired; events already in flight keep
        the handlers they were fired with.

        :raises TypeError: ``handler`` is not callable, a value is unhashable, or an option
            has the wrong type.
        :raises ValueError: unknown phase or keyword, or an option out of range.
        :return: Deferred firing with the new handler's id (an int never reused).
        """

    def remove_event_handler(handler_id: int) -> Deferred[None]:
        """
        Remove a handler. Events in flight whose phase for it has not started yet skip it.

        :raises KeyError: (:class:`~twisted_event_dispatcher.errors.UnknownHandlerError`)
            the id is not registered.
        :return: Deferred firing with None once removed.
        """

    def has_handler(handler_id: int) -> bool:
        """True if a handler with that id is currently registered."""

    def fire_event(event: Any, /, **keywords: Any) -> Deferred[FireResult]:
        """
        Run ``event`` through every phase for the handlers matching ``keywords``.

        The matching handlers are chosen when the event is dispatched. Within a phase they
        are started in (priority, registration) order and run concurrently; a failing
        handler never stops the others and is logged once. If the dispatcher is not
        running the event is buffered (bounded) and dispatched in order by ``start()``.

        :raises ValueError: a keyword is not allowed.
        :raises TypeError: a keyword's value is unhashable.
        :return: Deferred firing with a :class:`~twisted_event_dispatcher.FireResult`
            (every handler's outcome per phase); it fails with
            :class:`~twisted_event_dispatcher.errors.BufferFullError` if the dispatcher is
            stopped and its buffer is full.
        """

    def start() -> None:
        """Start dispatching: buffered events are dispatched in the order fired. Returns None."""

    def stop() -> Deferred[None]:
        """
        Stop dispatching: new events are buffered from now on.

        :return: Deferred firing with None once every event in flight has finished.
        """

    def add_match_spec_keywords(*names: str) -> None:
        """Allow more match-spec keywords. Reserved option names raise ``ValueError``."""

    def remove_match_spec_keywords(*names: str) -> None:
        """
        Disallow match-spec keywords. Refused with ``ValueError`` if a registered handler's
        spec still names one, or if one is not allowed in the first place.
        """


class ICarrier(Interface):
    """
    Delivers a channel's messages to one client (a WebSocket connection, an SSE stream).

    ``deliver`` never blocks and never buffers without bound: a carrier keeps a bounded
    queue and, when its client reads too slowly, applies its overflow policy (drop the
    oldest messages and tell the client how many, or disconnect it).
    """

    closed = Attribute("True once the client is gone; channels then drop the carrier.")

    def deliver(message: Any) -> None:
        """Queue a :class:`~twisted_event_dispatcher.channels.Message` for the client."""

    def notify_gap(channel: str, event: str, gap: Any) -> None:
        """
        Tell the client, in order with its messages, that the messages of ``event`` on
        ``channel`` after ``gap.since`` cannot be delivered (a
        :class:`~twisted_event_dispatcher.channels.Gap`: why, the epoch now, the oldest
        offset still available). Channels call it when a subscription is resumed too late,
        and while live, when their backend lost or skipped messages.
        """

    def on_close(callback: Callable[[Any], object]) -> None:
        """
        Call ``callback(carrier)`` once when the client is gone (at once if it already
        is). Channels use this to unsubscribe a closed carrier everywhere.
        """


class IChannel(Interface):
    """
    A named publish/subscribe channel: messages published under an event name are pushed
    to the carriers subscribed to that name (or to ``"*"``), in publish order, each with a
    monotonically increasing offset (``id``) and the channel's ``epoch``. A bounded
    history lets a reconnecting client resume from its last offset, or learn that the gap
    cannot be filled (new epoch, or offset older than the history).
    """

    name = Attribute("The channel's name (unique per class within a process).")
    epoch = Attribute("Changes whenever offsets start over (e.g. the history was lost).")
    history_size = Attribute("How many recent messages are kept for resuming clients.")

    def publish(key: str, data: Any = None) -> Deferred[Any]:
        """
        Publish ``data`` (JSON-encodable) under event name ``key``.

        :raises TypeError: ``data`` is not JSON-encodable, or ``key`` is not a str;
            nothing is published. For data this is an
            :class:`~twisted_event_dispatcher.errors.InvalidDataError` (also a
            ``ValueError``), raised too for NaN, infinities, lone surrogates, nesting
            deeper than :data:`~twisted_event_dispatcher.channels.message.MAX_DEPTH` and
            data larger than the channel's ``max_data_size``.
        :raises ValueError: ``key`` is empty, too long, or reserved.
        :return: Deferred firing with the published
            :class:`~twisted_event_dispatcher.channels.Message`.
        """

    def subscribe(
        event: str, carrier: ICarrier, since: int | None = None, epoch: str | None = None
    ) -> Deferred[Any]:
        """
        Subscribe ``carrier`` to ``event`` (``"*"``: every event). With ``since``, the
        result lists the messages after that offset still in the history, or reports a
        gap. Live messages reach the carrier only after the replay it is handed.

        :return: Deferred firing with a
            :class:`~twisted_event_dispatcher.channels.Subscription`.
        """

    def unsubscribe(event: str, carrier: ICarrier) -> bool:
        """Unsubscribe; False if the carrier was not subscribed to ``event``."""

    def unsubscribe_all(carrier: ICarrier) -> int:
        """Remove every subscription of ``carrier``; how many there were."""
