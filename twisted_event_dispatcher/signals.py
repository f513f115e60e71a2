"""
Signals: in-process publish/subscribe in the style of blinker and Django, Deferred-aware.

Declare a signal anywhere, connect receivers elsewhere, send where the thing happened::

    post_save = signal("post-save")

    @post_save.connect
    def reindex(sender, **kwargs): ...

    d = post_save.send(instance, created=True)   # Deferred: [(receiver, result), ...]

Receivers are called ``receiver(sender, **kwargs)`` in connection order; they may return
plain values, Deferreds or coroutines, and ``send`` never blocks: its Deferred fires once
every receiver has settled. A failing receiver does not stop the others; its entry holds
the :class:`~twisted.python.failure.Failure`, which is logged once.

A signal is a thin layer over the dispatcher's engine (a :class:`~._registry.
HandlerRegistry` with the one match keyword ``sender``, and :func:`~._phases.run_phases`
with one phase), not a second dispatch engine. Senders are matched like blinker: ``str``
and ``int`` by value, any other object by identity; receivers connected for an object
that can be weakly referenced are dropped when it is collected.

``connect`` and ``disconnect`` may be called from any thread (they take a lock); ``send``
belongs to the reactor thread, and hands itself over to it when called from another.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from threading import get_ident
from types import MethodType
from typing import Any, ClassVar, Final, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python import threadable

from ._phases import run_phases
from ._registration import Registration
from ._registry import HandlerRegistry
from ._threads import in_reactor
from .results import FireResult

__all__ = [
    "ANY",
    "NamedSignal",
    "Namespace",
    "Signal",
    "default_namespace",
    "receiver_connected",
    "receiver_disconnected",
    "signal",
]

F = TypeVar("F", bound=Callable[..., Any])
SendResult = list[tuple[Callable[..., Any] | None, Any]]

_threadable: Any = threadable


class _AnySender:
    """The wildcard sender: receivers connected for ``ANY`` get every send."""

    _instance: ClassVar[_AnySender | None] = None

    def __new__(cls) -> _AnySender:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY"

    def __reduce__(self) -> str:
        return "ANY"


#: Connect with ``sender=ANY`` (the default) to receive every send, whoever the sender.
ANY: Final = _AnySender()

_ANY_KEY: Final = ("ANY",)  # a key no sender can have: object senders get (id,) 1-tuples

# send()'s default: tells "no sender given" (None) from an explicit positional sender.
_NO_SENDER: Final[Any] = object()


def _sender_key(sender: object) -> Hashable:
    """str and int senders match by value, other objects by identity (as in blinker)."""
    kind = type(sender)
    if kind is str or kind is int or isinstance(sender, (str, int)):
        return sender
    try:
        hash(sender)
    except TypeError:
        raise TypeError(
            f"a sender must be hashable, got unhashable {type(sender).__name__}"
        ) from None
    return (id(sender),)


def _is_doubled(connections: dict[Hashable, Registration]) -> bool:
    """True if a receiver's connections (by sender key) include ANY and another sender."""
    return len(connections) > 1 and _ANY_KEY in connections


def _receiver_key(receiver: Callable[..., Any]) -> Hashable:
    # A bound method is a new object at every attribute access: key it by its parts.
    if isinstance(receiver, MethodType):
        return (id(receiver.__self__), id(receiver.__func__))
    return id(receiver)


class Signal:
    """
    A signal that receivers connect to and senders send through.

    :param doc: becomes the signal's ``__doc__``.
    """

    #: Sent after every ``connect`` of any signal: the sender is the signal, keyword
    #: arguments ``receiver``, ``sender`` and ``weak`` are those of the connect call.
    receiver_connected: ClassVar[Signal]
    #: Sent after every ``disconnect`` that removed something: sender is the signal,
    #: keyword arguments ``receiver`` and ``sender``.
    receiver_disconnected: ClassVar[Signal]

    #: A signal runs its receivers in one phase, and never aborts.
    phases: Final = ("send",)
    _abort_indices: Final = frozenset[int]()
    _tracks_context = False
    _log_terms = ("receiver", "sender")
    #: ``send(sender=...)`` names the sender; False for the meta-signals, whose receivers
    #: get ``sender`` (the connect call's) as an ordinary keyword argument.
    _sender_keyword = True
    #: How ``connect``, ``disconnect`` and ``receivers_for`` key a sender (a hook: the
    #: blinker compatibility layer keys unhashable senders by identity too).
    _sender_key = staticmethod(_sender_key)

    def __init__(self, doc: str | None = None) -> None:
        if doc:
            self.__doc__ = doc
        self._handlers = HandlerRegistry(on_remove=self._forget)
        self._by_receiver: dict[Hashable, dict[Hashable, Registration]] = {}
        self._by_sender: dict[Hashable, dict[int, Registration]] = {}
        self._keys: dict[int, tuple[Hashable, Hashable]] = {}
        self._sender_refs: dict[Hashable, object] = {}
        # receivers connected for ANY and for some sender: sends must call them once
        self._doubled = 0
        self._lock = threading.RLock()
        self._muted = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x}: {len(self._handlers)} receiver(s)>"

    # -- connecting ----------------------------------------------------------------------

    def connect(self, receiver: F, sender: object = ANY, weak: bool = False) -> F:
        """
        Connect ``receiver`` to be called ``receiver(sender, **kwargs)`` for every send by
        ``sender`` (any sender for :data:`ANY`). Returns ``receiver``, so it works as a
        decorator. Connecting the same receiver for the same sender again does nothing.

        :param weak: hold the receiver by weak reference; it is disconnected when collected
            (strong references by default, so lambdas and closures just work).
        :raises TypeError: ``receiver`` is not callable, ``sender`` is unhashable, or
            ``weak=True`` with a receiver that cannot be weakly referenced.
        """
        if not callable(receiver):
            raise TypeError(f"a receiver must be callable, got {type(receiver).__name__}")
        sender_key = _ANY_KEY if sender is ANY else self._sender_key(sender)
        receiver_key = _receiver_key(receiver)
        with self._lock:
            self._handlers.reap()
            connections = self._by_receiver.get(receiver_key)
            if connections is not None and sender_key in connections:
                return receiver
            spec = {} if sender is ANY else {"sender": sender_key}
            registration = self._handlers.add(receiver, "send", 0, 0, spec, None, None, weak)
            connections = self._by_receiver.setdefault(receiver_key, {})
            was_doubled = _is_doubled(connections)
            connections[sender_key] = registration
            self._doubled += _is_doubled(connections) - was_doubled
            self._keys[registration.id] = (receiver_key, sender_key)
            if sender is not ANY:
                self._by_sender.setdefault(sender_key, {})[registration.id] = registration
                if sender_key not in self._sender_refs and not isinstance(sender, str | int):
                    self._sender_refs[sender_key] = self._sender_ref(sender, sender_key)
        if self is not Signal.receiver_connected:  # as blinker: the meta-signal is silent
            self._notify(Signal.receiver_connected, receiver=receiver, sender=sender, weak=weak)
        return receiver

    def connect_via(self, sender: object, weak: bool = False) -> Callable[[F], F]:
        """Decorator form of ``connect(receiver, sender, weak)``."""

        def decorator(receiver: F) -> F:
            return self.connect(receiver, sender, weak)

        return decorator

    def disconnect(self, receiver: Callable[..., Any], sender: object = ANY) -> None:
        """
        Disconnect ``receiver``: from ``sender`` only, or from every sender for ``ANY``.
        Disconnecting a receiver that is not connected does nothing (as in blinker).
        """
        receiver_key = _receiver_key(receiver)
        with self._lock:
            self._handlers.reap()
            connections = self._by_receiver.get(receiver_key, {})
            if sender is ANY:
                doomed = list(connections.values())
            else:
                one = connections.get(self._sender_key(sender))
                doomed = [] if one is None else [one]
            for registration in doomed:
                self._handlers.remove(registration)
        if doomed:
            self._notify(Signal.receiver_disconnected, receiver=receiver, sender=sender)

    @contextmanager
    def connected_to(self, receiver: F, sender: object = ANY) -> Iterator[F]:
        """Connect ``receiver`` for the duration of a ``with`` block."""
        self.connect(receiver, sender)
        try:
            yield receiver
        finally:
            self.disconnect(receiver, sender)

    def temporarily_connected_to(
        self, receiver: F, sender: object = ANY
    ) -> AbstractContextManager[F]:
        """
        Alias of :meth:`connected_to`, under the name blinker used before deprecating it,
        so that code written for blinker runs unchanged. New code uses ``connected_to``.
        """
        return self.connected_to(receiver, sender)

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Sends do nothing (and fire with ``[]``) for the duration of a ``with`` block."""
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1

    @property
    def is_muted(self) -> bool:
        """True inside a ``muted()`` block."""
        return self._muted > 0

    # -- introspection -------------------------------------------------------------------

    def receivers_for(self, sender: object) -> Iterator[Callable[..., Any]]:
        """The live receivers a send by ``sender`` would call, in connection order."""
        keywords = {} if sender is ANY else {"sender": self._sender_key(sender)}
        for registration in self._lookup(keywords):
            receiver = registration.handler
            if receiver is not None and registration.active:
                yield receiver

    def has_receivers_for(self, sender: object) -> bool:
        """True if a send by ``sender`` would call at least one receiver."""
        return next(self.receivers_for(sender), None) is not None

    @property
    def receivers(self) -> tuple[Callable[..., Any], ...]:
        """Every connected receiver (for any sender), once each, in connection order."""
        seen: dict[Hashable, Callable[..., Any]] = {}
        for registration in sorted(self._handlers, key=lambda r: r.id):
            receiver = registration.handler
            if receiver is not None:
                seen.setdefault(_receiver_key(receiver), receiver)
        return tuple(seen.values())

    # -- sending -------------------------------------------------------------------------

    def send(self, sender: object = _NO_SENDER, /, **kwargs: Any) -> Deferred[SendResult]:
        """
        Call every receiver connected for ``sender`` (or for ANY) as
        ``receiver(sender, **kwargs)``, in connection order, without blocking. A receiver
        connected both for ``sender`` and for ANY is called once.

        The sender may be given positionally, ``send(app, x=1)``, or as a keyword,
        ``send(sender=app, x=1)`` (TBone/Django style); no sender at all means ``None``.

        :raises TypeError: ``sender`` is unhashable, or given both ways.
        :return: Deferred firing with ``[(receiver, result), ...]`` once every receiver has
            settled; a failed receiver's result is its Failure.
        """
        if "sender" in kwargs and self._sender_keyword:
            if sender is not _NO_SENDER:
                raise TypeError("send() got the sender both positionally and as sender=")
            sender = kwargs.pop("sender")
        elif sender is _NO_SENDER:
            sender = None
        io_thread = _threadable.ioThread
        if io_thread is not None and io_thread != get_ident():
            return in_reactor(self.send, sender, **kwargs)
        kind = type(sender)
        if kind is str or kind is int:
            keywords = {"sender": sender}
        elif kind.__hash__ is object.__hash__:  # plain objects: identity, no need to hash
            keywords = {"sender": (id(sender),)}
        else:
            keywords = {"sender": _sender_key(sender)}
        if self._muted:
            return succeed([])
        handlers = self._handlers
        if handlers._dead:
            with self._lock:
                handlers.reap()
        entries = handlers.index.lookup(keywords)
        if not entries:
            return succeed([])
        if self._doubled and len(entries) > 1:
            entries = self._once_each(entries)
        # receiver(sender) and receiver(sender, **{}) are the same call; the first is faster
        outcome = run_phases(self, sender, keywords, entries, kwargs or None)
        if type(outcome) is not FireResult:
            assert not isinstance(outcome, FireResult)
            if outcome.result is None:
                return outcome.deferred.addCallback(FireResult.handler_results)
            outcome = outcome.result  # every Deferred had already fired (e.g. failed)
        raw = outcome._raw
        if len(raw) == 1:  # the common selective send: skip building a comprehension
            _, receiver, _, value = raw[0]
            return succeed([(receiver, value)])
        return succeed(outcome.handler_results())

    # -- engine plumbing -----------------------------------------------------------------

    def _lookup(self, keywords: dict[str, Hashable]) -> Any:
        handlers = self._handlers
        if handlers._dead:
            with self._lock:
                handlers.reap()
        entries = handlers.index.lookup(keywords)
        if self._doubled and len(entries) > 1:
            entries = self._once_each(entries)
        return entries

    def _once_each(self, entries: Sequence[Registration]) -> list[Registration]:
        """
        ``entries`` with each receiver once, at its first (earliest connected) live
        registration: a receiver connected for ANY and for the sender matches twice.
        """
        keys = self._keys
        seen: set[Hashable] = set()
        unique = []
        for registration in entries:
            key = keys.get(registration.id)
            receiver_key = registration if key is None else key[0]
            if registration.active and receiver_key not in seen:
                seen.add(receiver_key)
                unique.append(registration)
        return unique

    @property
    def _clock(self) -> IReactorTime:  # signals set no timeouts; the PhaseHost protocol
        from twisted.internet import reactor

        return reactor

    def _count_call(self, registration: Registration) -> None:
        self._handlers.count_call(registration)

    def _landed(self) -> None:
        pass

    def _forget(self, registration: Registration) -> None:
        """Registry callback: drop the bookkeeping of a registration that left."""
        receiver_key, sender_key = self._keys.pop(registration.id)
        connections = self._by_receiver[receiver_key]
        was_doubled = _is_doubled(connections)
        del connections[sender_key]
        self._doubled -= was_doubled - _is_doubled(connections)
        if not connections:
            del self._by_receiver[receiver_key]
        if sender_key is not _ANY_KEY:
            registrations = self._by_sender[sender_key]
            del registrations[registration.id]
            if not registrations:
                del self._by_sender[sender_key]
                self._sender_refs.pop(sender_key, None)

    def _sender_ref(self, sender: object, sender_key: Hashable) -> object:
        """
        Hold a sender weakly (its receivers are dropped when it dies) or, if it cannot be
        weakly referenced, strongly, so that its id cannot be reused while it has receivers.
        """
        me = weakref.ref(self)

        def collected(_: object) -> None:
            signal = me()
            if signal is not None:
                for registration in list(signal._by_sender.get(sender_key, {}).values()):
                    signal._handlers.collected(registration)

        try:
            return weakref.ref(sender, collected)
        except TypeError:
            return sender

    def _notify(self, announcement: Signal | None, **kwargs: Any) -> None:
        if announcement is not None and len(announcement._handlers):
            announcement.send(self, **kwargs)


class NamedSignal(Signal):
    """A signal with a name, as made by :func:`signal` and :meth:`Namespace.signal`."""

    def __init__(self, name: str, doc: str | None = None) -> None:
        super().__init__(doc)
        self.name = name

    def __repr__(self) -> str:
        return f"<NamedSignal {self.name!r}: {len(self._handlers)} receiver(s)>"


class Namespace(dict[str, NamedSignal]):
    """A mapping of names to signals; ``signal(name)`` returns the same one every time."""

    def signal(self, name: str, doc: str | None = None) -> NamedSignal:
        """The signal called ``name`` in this namespace, created on first use."""
        if not isinstance(name, str):
            raise TypeError(f"a signal name must be str, got {type(name).__name__}")
        try:
            return self[name]
        except KeyError:
            return self.setdefault(name, NamedSignal(name, doc))


#: The namespace of the module-level :func:`signal`.
default_namespace: Final = Namespace()

#: ``signal('name')``: the process-wide signal called ``name``, created on first use.
signal: Final = default_namespace.signal

Signal.receiver_connected = Signal("Sent after a receiver is connected to any signal.")
Signal.receiver_disconnected = Signal("Sent after a receiver is disconnected from any signal.")
Signal.receiver_connected._sender_keyword = False
Signal.receiver_disconnected._sender_keyword = False
receiver_connected: Final = Signal.receiver_connected
receiver_disconnected: Final = Signal.receiver_disconnected
