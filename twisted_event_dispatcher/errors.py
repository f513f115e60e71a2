"""
Every exception the library raises.

Argument errors (a keyword outside the allowed set, an unhashable value, an unknown phase)
subclass the builtin exception a Python programmer would expect (``ValueError``,
``TypeError``, ``KeyError``) so that existing ``except`` clauses keep working, and
:class:`EventDispatcherError` so that callers can catch everything this library raises.
"""

from __future__ import annotations

from collections.abc import Iterable


class EventDispatcherError(Exception):
    """Base class of every exception raised by twisted_event_dispatcher."""


class UnknownKeywordError(EventDispatcherError, ValueError):
    """A match-spec keyword that the dispatcher does not allow was used."""

    def __init__(self, names: Iterable[str], allowed: Iterable[str], where: str) -> None:
        self.names = tuple(sorted(names))
        self.allowed = tuple(sorted(allowed))
        listed = ", ".join(repr(n) for n in self.names)
        plural = "s" if len(self.names) > 1 else ""
        allowed_text = ", ".join(self.allowed) or "(none)"
        super().__init__(
            f"unknown match-spec keyword{plural} {listed} in {where}; "
            f"allowed keywords are: {allowed_text}"
        )


class UnhashableValueError(EventDispatcherError, TypeError):
    """A match-spec or event keyword was given a value that cannot be hashed."""

    def __init__(self, name: str, value: object, where: str) -> None:
        self.name = name
        self.value = value
        super().__init__(
            f"value of keyword {name!r} in {where} must be hashable, "
            f"got unhashable {type(value).__name__}"
        )


class UnknownPhaseError(EventDispatcherError, ValueError):
    """A handler was registered for a phase the dispatcher was not built with."""

    def __init__(self, phase: object, phases: Iterable[str]) -> None:
        self.phase = phase
        self.phases = tuple(phases)
        super().__init__(f"unknown phase {phase!r}; this dispatcher's phases are {self.phases!r}")


class ReservedKeywordError(EventDispatcherError, ValueError):
    """A match-spec keyword collides with an option name of ``add_event_handler``."""

    def __init__(self, names: Iterable[str], reserved: Iterable[str]) -> None:
        self.names = tuple(sorted(names))
        super().__init__(
            f"match-spec keyword(s) {', '.join(map(repr, self.names))} are reserved for "
            f"add_event_handler options ({', '.join(sorted(reserved))}); choose other names"
        )


class KeywordInUseError(EventDispatcherError, ValueError):
    """An allowed keyword cannot be removed while a registered handler's spec names it."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(sorted(names))
        super().__init__(
            f"cannot remove match-spec keyword(s) {', '.join(map(repr, self.names))}: "
            "registered handlers still match on them; remove those handlers first"
        )


class UnknownHandlerError(EventDispatcherError, KeyError):
    """``remove_event_handler`` was given an id that is not (or no longer) registered."""

    def __init__(self, handler_id: object) -> None:
        self.handler_id = handler_id
        super().__init__(handler_id)

    def __str__(self) -> str:
        return (
            f"no event handler with id {self.handler_id!r} is registered "
            "(it was never added, or was already removed)"
        )


class BufferFullError(EventDispatcherError):
    """An event was fired while the dispatcher was stopped and its buffer was full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"the dispatcher is not running and already buffers {limit} events "
            "(buffer_size); call start() or raise buffer_size"
        )


class HandlerTimeoutError(EventDispatcherError, TimeoutError):
    """A handler's Deferred or coroutine did not settle within its timeout; it was cancelled."""

    def __init__(self, handler: object, phase: str, timeout: float) -> None:
        self.handler = handler
        self.phase = phase
        self.timeout = timeout
        super().__init__(
            f"handler {handler!r} in phase {phase!r} did not finish within {timeout:g}s "
            "and was cancelled"
        )


class ReactorThreadError(EventDispatcherError, RuntimeError):
    """A blocking (crochet) call was made from the reactor thread, where it would deadlock."""


class SyncTimeoutError(EventDispatcherError, TimeoutError):
    """A blocking (crochet) call did not get its result within the given timeout."""


class ChannelClassError(EventDispatcherError, TypeError):
    """A channel name is already taken by a channel of another class."""

    def __init__(self, name: str, existing: type, requested: type) -> None:
        self.name = name
        super().__init__(
            f"channel {name!r} already exists as a {existing.__name__}; "
            f"it cannot also be a {requested.__name__}"
        )


class UnknownChannelError(EventDispatcherError, KeyError):
    """No channel of that name exists in the registry."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"no channel named {self.name!r}"


class ChannelUnavailableError(EventDispatcherError, ConnectionError):
    """A channel's backend (e.g. Redis) cannot be reached: the message was not published."""


class InvalidDataError(EventDispatcherError, TypeError, ValueError):
    """
    Data that cannot travel as an event: not JSON-encodable, a string that is not valid
    Unicode (a lone surrogate), NaN or an infinity, nested too deeply, or too large.
    Raised before anything is stored or queued. A ``TypeError`` (what ``publish`` always
    raised for unencodable data) and a ``ValueError`` (what the value is).
    """


class ChannelExistsError(EventDispatcherError, ValueError):
    """A channel is registered under a name that is already taken."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a channel named {name!r} is already registered")


class UnknownListenerError(EventDispatcherError, KeyError):
    """No listener with that id is registered on the channel."""

    def __init__(self, channel: str, listener_id: object) -> None:
        self.channel = channel
        self.listener_id = listener_id
        super().__init__(listener_id)

    def __str__(self) -> str:
        return f"no listener {self.listener_id!r} on channel {self.channel!r}"


class UnknownGroupError(EventDispatcherError, KeyError):
    """A group has no member on the channel (never had one, or all were removed)."""

    def __init__(self, channel: str, group: object) -> None:
        self.channel = channel
        self.group = group
        super().__init__(group)

    def __str__(self) -> str:
        return f"no listener of group {self.group!r} on channel {self.channel!r}"


class ListenerExistsError(EventDispatcherError, ValueError):
    """A listener id is already registered on the channel."""

    def __init__(self, channel: str, listener_id: str) -> None:
        self.channel = channel
        self.listener_id = listener_id
        super().__init__(f"listener {listener_id!r} is already registered on channel {channel!r}")


class MailboxFullError(EventDispatcherError):
    """
    A mailbox (a listener's, or a group's queue) holds as many messages as its bound:
    the message was not stored. Raised instead of dropping anything.
    """

    def __init__(self, channel: str, target: str, limit: int, group: bool = False) -> None:
        self.channel = channel
        self.target = target
        self.limit = limit
        self.group = group
        what = f"the queue of group {target!r}" if group else f"the mailbox of listener {target!r}"
        super().__init__(
            f"{what} on channel {channel!r} is full ({limit} messages not yet acknowledged); "
            "the message was not stored"
        )


class ReservedTypeError(EventDispatcherError, ValueError):
    """A reserved message type (``start``, ``stop``, ...) was used where it has no meaning."""


class RequestTimeoutError(EventDispatcherError, TimeoutError):
    """A request got no reply within its timeout (the action may still run, or have run)."""

    def __init__(self, target: str, event: str, timeout: float) -> None:
        self.target = target
        self.event = event
        self.timeout = timeout
        super().__init__(f"no reply from {target!r} to {event!r} within {timeout:g} s")


class RemoteActionError(EventDispatcherError):
    """
    A request's action failed (maybe in another process): ``remote_type`` is the name of
    the exception it raised, ``remote_message`` its message. Also raised when the
    listener has no action for the request's type (``remote_type`` ``"NoActionError"``).
    """

    def __init__(self, remote_type: str, remote_message: str) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        super().__init__(f"{remote_type}: {remote_message}" if remote_message else remote_type)


class ChannelLimitError(EventDispatcherError):
    """The hub has as many channels as its bound (``--max-channels``): none was created."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"the hub has {limit} channels, its limit (--max-channels); remove one first"
        )


class DefaultChannelError(EventDispatcherError, ValueError):
    """The hub's default channel cannot be removed (requests that name no channel use it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"channel {name!r} is the hub's default channel; it cannot be removed")


class ListenerLimitError(EventDispatcherError):
    """A channel of the hub has as many listeners as its bound (``--max-listeners``)."""

    def __init__(self, channel: str, limit: int) -> None:
        self.channel = channel
        self.limit = limit
        super().__init__(
            f"channel {channel!r} has {limit} listeners, the hub's limit (--max-listeners); "
            "remove one first"
        )


class MissingExtraError(EventDispatcherError, ImportError):
    """
    A module of an optional part (the Redis channel) was imported, but its dependencies
    were not installed. The message is one line naming the extra that installs them, e.g.
    ``txredisapi is not installed: the Redis channel needs the 'redis' extra: pip install
    'twisted_event_dispatcher[redis]'``; ``name`` is the missing module.
    """

    def __init__(self, module: str, extra: str, part: str) -> None:
        self.extra = extra
        super().__init__(
            f"{module} is not installed: {part} needs the {extra!r} extra: "
            f"pip install 'twisted_event_dispatcher[{extra}]'",
            name=module,
        )
