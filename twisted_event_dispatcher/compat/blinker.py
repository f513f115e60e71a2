"""
A drop-in for `blinker` 1.9 on this project's engine: code written for blinker imports this
module instead and runs unchanged under Twisted::

    from twisted_event_dispatcher.compat import blinker

    saved = blinker.signal("saved")

    @saved.connect
    def reindex(sender, **kwargs): ...

    saved.send(article, created=True)        # [(reindex, None)], at once, as in blinker

Same surface and semantics as blinker's: receivers are held by weak reference by default,
``send`` calls them in the calling thread and returns ``[(receiver, result), ...]`` at once
(an exception propagates, as in blinker), ``send_async`` awaits them, ``receivers`` is a
mapping, and each signal has its own ``receiver_connected`` / ``receiver_disconnected``
meta-signals. What differs (see doc/signals.rst, "Drop-in for blinker"):

- receivers are called in connection order (blinker: undefined order);
- a receiver that returns a Deferred or a coroutine makes ``send`` raise
  :class:`AsyncResultError` (a RuntimeError) naming it, instead of handing back an
  unfinished result; ``send_async`` awaits Deferreds;
- ``connect``/``disconnect`` may be called from any thread, concurrently with sends;
- ``has_receivers_for`` answers exactly (blinker may say True for a sender whose
  receivers were all disconnected from it).

Which receivers a send calls (by sender, once each, without the collected ones) is decided
by the project's signal engine (:mod:`._engine`), not by a second matcher; this module
keeps blinker's bookkeeping (``receivers``, ``_by_sender``, ``_by_receiver``) for the code
and tests that look at it.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Coroutine, Generator, Hashable
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from inspect import iscoroutinefunction
from typing import Any, Final, Protocol, TypeVar

from ..signals import ANY
from ._engine import ANY_ID, Engine, make_id, make_ref
from ._results import (
    AsyncResultError,
    check_ready,
    coroutine_function_refused,
    settle,
    sync_function_refused,
)

__all__ = [
    "ANY",
    "AsyncResultError",
    "NamedSignal",
    "Namespace",
    "Signal",
    "default_namespace",
    "receiver_connected",
    "signal",
]

F = TypeVar("F", bound=Callable[..., Any])
_Receiver = weakref.ref[Callable[..., Any]] | Callable[..., Any]
_AsyncWrapper = Callable[[Callable[..., Coroutine[Any, Any, Any]]], Callable[..., Any]]
_SyncWrapper = Callable[[Callable[..., Any]], Callable[..., Coroutine[Any, Any, Any]]]

_RECEIVER, _SENDER = "receiver", "sender"


class Signal:
    """
    A notification emitter, as blinker's ``Signal``.

    :param doc: The docstring for the signal.
    """

    #: An alias for the :data:`ANY` sender symbol.
    ANY = ANY

    #: The set class of the ``_by_sender`` / ``_by_receiver`` bookkeeping (as in blinker).
    #: Receivers are called in connection order whatever it is.
    set_class: type[set[Any]] = set

    @cached_property
    def receiver_connected(self) -> Signal:
        """
        Emitted at the end of each :meth:`connect` call: the sender is this signal, the
        keyword arguments ``receiver``, ``sender`` and ``weak`` those of the call.
        """
        return Signal(doc="Emitted after a receiver connects.")

    @cached_property
    def receiver_disconnected(self) -> Signal:
        """
        Emitted at the end of each :meth:`disconnect` call (not when a weakly referenced
        receiver or sender is collected): the sender is this signal, the keyword
        arguments ``receiver`` and ``sender`` those of the call.
        """
        return Signal(doc="Emitted after a receiver disconnects.")

    def __init__(self, doc: str | None = None) -> None:
        if doc:
            self.__doc__ = doc
        #: True inside a :meth:`muted` block: sends call no receiver and return ``[]``.
        self.is_muted: bool = False
        self._engine = Engine()
        self._lock = threading.RLock()
        self._receiver_map: dict[Any, _Receiver] = {}
        self._senders_of: defaultdict[Any, set[Any]] = defaultdict(self.set_class)
        self._receivers_of: defaultdict[Any, set[Any]] = defaultdict(self.set_class)
        self._sender_refs: dict[Any, weakref.ref[Any]] = {}
        # (kind, id, ref) of collected receivers and senders, tidied up by _reap (weakref
        # callbacks run wherever the collector runs: they must not change the dicts)
        self._dead: list[tuple[str, Hashable, weakref.ref[Any]]] = []

    # -- blinker's bookkeeping (reading it tidies up after collected objects first) ------

    @property
    def receivers(self) -> dict[Any, _Receiver]:
        """
        The connected receivers by id: the receiver, or a weak reference to it. Its truth
        value says whether any receiver is connected; its structure, as in blinker, is not
        public API (read it, do not change it).
        """
        if self._dead:
            self._reap()
        return self._receiver_map

    @property
    def _by_sender(self) -> defaultdict[Any, set[Any]]:
        if self._dead:
            self._reap()
        return self._receivers_of

    @property
    def _by_receiver(self) -> defaultdict[Any, set[Any]]:
        if self._dead:
            self._reap()
        return self._senders_of

    @property
    def _weak_senders(self) -> dict[Any, weakref.ref[Any]]:
        if self._dead:
            self._reap()
        return self._sender_refs

    # -- connecting ------------------------------------------------------------------------

    def connect(self, receiver: F, sender: Any = ANY, weak: bool = True) -> F:
        """
        Connect ``receiver`` to be called ``receiver(sender, **kwargs)`` when the signal is
        sent by ``sender`` (by anyone for :data:`ANY`). Returns ``receiver``.

        :param weak: Track the receiver with a weak reference (the default, as in
            blinker): it is disconnected when garbage collected, so a receiver defined in
            a function is connected with ``weak=False``.
        :raises TypeError: ``receiver`` is not callable, or ``weak`` and it cannot be
            weakly referenced.
        """
        if not callable(receiver):
            raise TypeError(f"a receiver must be callable, got {type(receiver).__name__}")
        receiver_id = make_id(receiver)
        sender_id = ANY_ID if sender is ANY else make_id(sender)
        try:
            ref: weakref.ref[F] | None = make_ref(receiver, self._cleanup(_RECEIVER, receiver_id))
        except TypeError:
            ref = None
        if weak and ref is None:
            raise TypeError(
                f"{type(receiver).__name__} objects cannot be weakly referenced: connect "
                "this receiver with weak=False"
            )
        with self._lock:
            self._reap()
            # The engine holds every receiver it can weakly; the strong ones are held
            # here, in receivers, so the last connect decides, as in blinker.
            self._engine.connect(receiver, sender, weak=ref is not None)
            self._receiver_map[receiver_id] = ref if weak and ref is not None else receiver
            self._receivers_of[sender_id].add(receiver_id)
            self._senders_of[receiver_id].add(sender_id)
            if sender is not ANY and sender_id not in self._sender_refs:
                try:
                    self._sender_refs[sender_id] = make_ref(
                        sender, self._cleanup(_SENDER, sender_id)
                    )
                except TypeError:
                    pass
        if "receiver_connected" in self.__dict__ and self.receiver_connected.receivers:
            try:
                self.receiver_connected.send(self, receiver=receiver, sender=sender, weak=weak)
            except TypeError:
                self.disconnect(receiver, sender)
                raise
        if receiver_connected.receivers and self is not receiver_connected:
            try:
                receiver_connected.send(
                    self, receiver_arg=receiver, sender_arg=sender, weak_arg=weak
                )
            except TypeError:
                self.disconnect(receiver, sender)
                raise
        return receiver

    def connect_via(self, sender: Any, weak: bool = False) -> Callable[[F], F]:
        """Decorator form of ``connect(fn, sender, weak)`` (strong by default, as blinker)."""

        def decorator(fn: F) -> F:
            self.connect(fn, sender, weak)
            return fn

        return decorator

    @contextmanager
    def connected_to(
        self, receiver: Callable[..., Any], sender: Any = ANY
    ) -> Generator[None, None, None]:
        """
        Connect ``receiver`` (strongly) for the duration of a ``with`` block; on exit it is
        disconnected from every sender, as in blinker.
        """
        self.connect(receiver, sender=sender, weak=False)
        try:
            yield None
        finally:
            self.disconnect(receiver)

    def temporarily_connected_to(
        self, receiver: Callable[..., Any], sender: Any = ANY
    ) -> AbstractContextManager[None]:
        """:meth:`connected_to` under its old name (removed in blinker 1.9), for old code."""
        return self.connected_to(receiver, sender)

    @contextmanager
    def muted(self) -> Generator[None, None, None]:
        """Sends call no receiver (and return ``[]``) for the duration of a ``with`` block."""
        self.is_muted = True
        try:
            yield None
        finally:
            self.is_muted = False

    def disconnect(self, receiver: Callable[..., Any], sender: Any = ANY) -> None:
        """
        Disconnect ``receiver`` from ``sender`` only, or from every sender for :data:`ANY`
        (the default). Disconnecting what is not connected does nothing.
        """
        receiver_id = make_id(receiver)
        sender_id = ANY_ID if sender is ANY else make_id(sender)
        with self._lock:
            self._reap()
            self._engine.disconnect(receiver, sender)
            self._disconnect(receiver_id, sender_id, everywhere=sender is ANY)
        if "receiver_disconnected" in self.__dict__ and self.receiver_disconnected.receivers:
            self.receiver_disconnected.send(self, receiver=receiver, sender=sender)

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        sender: Any | None = None,
        /,
        *,
        _async_wrapper: _AsyncWrapper | None = None,
        **kwargs: Any,
    ) -> list[tuple[Callable[..., Any], Any]]:
        """
        Call every receiver connected for ``sender`` or :data:`ANY`, in connection order,
        in the calling thread, as ``receiver(sender, **kwargs)``; return the list of
        ``(receiver, result)``. A receiver's exception propagates (the rest are not
        called), as in blinker.

        :param _async_wrapper: turns an ``async def`` receiver into a plain callable; its
            result is the receiver's result, whatever it is.
        :raises AsyncResultError: an ``async def`` receiver without ``_async_wrapper``, or
            a receiver that returned a Deferred or a coroutine (it is not awaited: use
            :meth:`send_async`, or :class:`twisted_event_dispatcher.signals.Signal`).
        """
        if self.is_muted:
            return []
        results = []
        for receiver in self._engine.receivers_for(sender):
            if iscoroutinefunction(receiver):
                if _async_wrapper is None:
                    raise coroutine_function_refused(receiver)
                result = _async_wrapper(receiver)(sender, **kwargs)
            else:
                result = receiver(sender, **kwargs)
                if result is not None:
                    check_ready(receiver, result)
            results.append((receiver, result))
        return results

    async def send_async(
        self,
        sender: Any | None = None,
        /,
        *,
        _sync_wrapper: _SyncWrapper | None = None,
        **kwargs: Any,
    ) -> list[tuple[Callable[..., Any], Any]]:
        """
        Await every receiver connected for ``sender`` or :data:`ANY`, one after another in
        connection order; return the list of ``(receiver, result)``.

        ``async def`` receivers are awaited; other receivers go through ``_sync_wrapper``,
        which turns them into coroutine functions (as in blinker; without it they are
        refused with :class:`AsyncResultError`). A Deferred that comes out (returned by a
        receiver, or by the wrapper) is awaited too, so results are never Deferreds: under
        Twisted (``Deferred.fromCoroutine``, ``ensureDeferred``) directly, inside an
        asyncio task through ``Deferred.asFuture``.
        """
        if self.is_muted:
            return []
        results = []
        for receiver in self._engine.receivers_for(sender):
            if iscoroutinefunction(receiver):
                result = await settle(receiver(sender, **kwargs))
            else:
                if _sync_wrapper is None:
                    raise sync_function_refused(receiver)
                result = await settle(_sync_wrapper(receiver)(sender, **kwargs))
            results.append((receiver, result))
        return results

    # -- introspection ---------------------------------------------------------------------

    def has_receivers_for(self, sender: Any) -> bool:
        """True if a send by ``sender`` would call a (live) receiver."""
        return self._engine.has_receivers_for(sender)

    def receivers_for(self, sender: Any) -> Generator[Callable[..., Any], None, None]:
        """Each live receiver a send by ``sender`` would call, in connection order."""
        yield from self._engine.receivers_for(sender)

    # -- housekeeping ----------------------------------------------------------------------

    def _cleanup_bookkeeping(self) -> None:
        """Drop the empty buckets that disconnections leave in the bookkeeping."""
        with self._lock:
            self._reap()
            for mapping in (self._receivers_of, self._senders_of):
                for ident, bucket in list(mapping.items()):
                    if not bucket:
                        mapping.pop(ident, None)

    def _clear_state(self) -> None:
        """Disconnect every receiver from every sender. Useful for tests."""
        with self._lock:
            self._engine.clear()
            self._dead.clear()
            self._sender_refs.clear()
            self._receiver_map.clear()
            self._receivers_of.clear()
            self._senders_of.clear()

    def _disconnect(self, receiver_id: Hashable, sender_id: Hashable, everywhere: bool) -> None:
        if everywhere:
            if self._senders_of.pop(receiver_id, None) is not None:
                for bucket in self._receivers_of.values():
                    bucket.discard(receiver_id)
            self._receiver_map.pop(receiver_id, None)
        else:
            self._receivers_of[sender_id].discard(receiver_id)
            self._senders_of[receiver_id].discard(sender_id)

    def _cleanup(self, kind: str, ident: Hashable) -> Callable[[weakref.ref[Any]], None]:
        """A weakref callback that queues the collected receiver or sender for _reap."""
        me = weakref.ref(self)

        def collected(ref: weakref.ref[Any]) -> None:
            signal = me()
            if signal is not None:
                signal._dead.append((kind, ident, ref))

        return collected

    def _reap(self) -> None:
        """Forget collected receivers (everywhere) and senders (their receivers' links)."""
        with self._lock:
            while self._dead:
                kind, ident, ref = self._dead.pop()
                if kind == _RECEIVER:
                    if self._receiver_map.get(ident) is ref:  # not since reconnected
                        self._disconnect(ident, ANY_ID, everywhere=True)
                elif self._sender_refs.get(ident) is ref:
                    del self._sender_refs[ident]
                    for receiver_id in self._receivers_of.pop(ident, ()):
                        self._senders_of[receiver_id].discard(ident)


class NamedSignal(Signal):
    """
    A named signal, as made by :func:`signal` and :meth:`Namespace.signal`.

    :param name: The name of the signal within the namespace.
    :param doc: The docstring for the signal.
    """

    def __init__(self, name: str, doc: str | None = None) -> None:
        super().__init__(doc)
        #: The name of this signal.
        self.name: str = name

    def __repr__(self) -> str:
        base = super().__repr__()
        return f"{base[:-1]}; {self.name!r}>"


class Namespace(dict[str, NamedSignal]):
    """A dict mapping names to signals."""

    def signal(self, name: str, doc: str | None = None) -> NamedSignal:
        """The :class:`NamedSignal` called ``name``, created on first use."""
        try:
            return self[name]
        except KeyError:
            return self.setdefault(name, NamedSignal(name, doc))


class _PNamespaceSignal(Protocol):
    def __call__(self, name: str, doc: str | None = None) -> NamedSignal: ...


#: The :class:`Namespace` of :func:`signal`.
default_namespace: Final = Namespace()

#: ``signal(name, doc=None)``: the :class:`NamedSignal` called ``name`` in
#: :data:`default_namespace`, created on first use.
signal: _PNamespaceSignal = default_namespace.signal

#: blinker's global meta-signal (before 1.9, which removed it; kept so that older code
#: runs): sent after every connect to any signal of this module, with the signal as sender
#: and keyword arguments ``receiver_arg``, ``sender_arg`` and ``weak_arg``.
receiver_connected: Final = Signal("Sent after a receiver connects to any signal.")
