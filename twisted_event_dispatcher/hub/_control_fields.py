"""
Checking a control request before anything is carried out: known verb, known keys, the
required ones present, each field of the right type (a bool is not an int) and within its
bound. Every problem is a :class:`ControlError` with code ``bad_request`` naming the field.

A request comes in the names of its transport, described by a :class:`Names`: the
control socket's are the canonical short keys (:data:`SHORT_NAMES`, the default), the
WebSocket's and HTTP's are long names. :func:`check_request` translates it into the
canonical short-key dict of :mod:`._control`, and builds every message with the names
the client wrote, so no transport has to rewrite a message after the fact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from ..carriers._requests import show
from ..channels._names import check_event_name
from ..channels.message import encode_json
from ..errors import InvalidDataError

__all__ = [
    "MAX_IN_FLIGHT",
    "MAX_MAILBOX_SIZE",
    "MAX_OFFSET",
    "MAX_REF",
    "MAX_TIMEOUT",
    "MIN_ACK_TIMEOUT",
    "SHORT_NAMES",
    "VERBS",
    "ControlError",
    "Names",
    "check_request",
    "ref_of",
]

#: The verbs, with the keys each one accepts besides ``v`` and ``i``, and those it needs.
_KEYS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    "c": (frozenset({"c"}), frozenset()),
    "r": (frozenset({"c", "r", "g", "size", "ack_timeout"}), frozenset()),
    "d": (frozenset({"c", "r", "t", "p"}), frozenset({"r", "t"})),
    "b": (frozenset({"c", "t", "p"}), frozenset({"t"})),
    "g": (frozenset({"c", "g", "t", "p"}), frozenset({"g", "t"})),
    "q": (frozenset({"c", "r", "g", "t", "p", "timeout"}), frozenset({"t"})),
    "l": (frozenset({"c", "r", "a", "m"}), frozenset({"r"})),
    "w": (frozenset({"c", "since", "epoch"}), frozenset()),
    "rl": (frozenset({"c", "r"}), frozenset({"r"})),
    "rc": (frozenset({"c"}), frozenset()),
}
#: Every verb, in the order the protocol table lists them.
VERBS: Final = tuple(_KEYS)
#: Largest ``m`` (mail in flight on one stream); the default is 100.
MAX_IN_FLIGHT: Final = 1000
DEFAULT_IN_FLIGHT: Final = 100
#: Largest ``size`` (a listener's mailbox bound); the default is 1000.
MAX_MAILBOX_SIZE: Final = 100_000
DEFAULT_MAILBOX_SIZE: Final = 1000
#: Largest ``timeout`` of a request, in seconds; the default is 10.
MAX_TIMEOUT: Final = 300.0
DEFAULT_TIMEOUT: Final = 10.0
#: Largest ``ack_timeout``, in seconds (one day); the default is 30.
MAX_ACK_TIMEOUT: Final = 86400.0
#: Smallest ``ack_timeout``, in seconds (as the library's): a group mail not acknowledged
#: within it is redelivered, so a tiny one would redeliver in a busy loop.
MIN_ACK_TIMEOUT: Final = 0.1
DEFAULT_ACK_TIMEOUT: Final = 30.0
#: Longest ``i`` (request reference), in characters of its JSON.
MAX_REF: Final = 64
#: Largest ``since`` offset (offsets are 63-bit integers, as Redis stream ids).
MAX_OFFSET: Final = 2**63 - 1
#: Longest ``epoch`` accepted.
MAX_EPOCH: Final = 200


class ControlError(ValueError):
    """
    A control request that cannot be carried out as asked: ``code`` is the protocol's
    error code (``bad_request``, ``streaming``, ``limit``...), the message says why.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class Names:
    """
    How a transport names the parts of a request, which :func:`check_request` reads it
    by and names in its messages.

    :param fields: canonical key -> the transport's name for it (a key not listed keeps
        its name). A canonical key renamed here is not accepted under its short name.
    :param verbs: verb -> the transport's name for it (likewise).
    :param verb_key: the field that holds the verb (``"v"``; ``"type"`` on WebSocket).
    :param verb_word: what a verb is called in messages (``verb 'q'``, ``request 'request'``).
    :param field_word: what a field is called in messages (``unknown key(s)``).
    """

    def __init__(
        self,
        fields: Mapping[str, str] | None = None,
        verbs: Mapping[str, str] | None = None,
        *,
        verb_key: str = "v",
        verb_word: str = "verb",
        field_word: str = "key",
    ) -> None:
        self.fields: dict[str, str] = dict(fields or {})
        self.verbs: dict[str, str] = dict(verbs or {})
        self.verb_key = verb_key
        self.verb_word = verb_word
        self.field_word = field_word
        self._keys = {name: key for key, name in self.fields.items()}
        self._verbs = {name: verb for verb, name in self.verbs.items()}

    def __repr__(self) -> str:
        return f"<Names {self.verb_key}={self.verb_word} {self.field_word}s={self.fields}>"

    def field(self, key: str) -> str:
        """The transport's name of canonical ``key``."""
        return self.fields.get(key, key)

    def quoted(self, key: str) -> str:
        """``'name'`` of canonical ``key``, as messages quote fields."""
        return f"'{self.field(key)}'"

    def key(self, name: str) -> str | None:
        """The canonical key the transport calls ``name`` (None: none)."""
        key = self._keys.get(name)
        if key is not None:
            return key
        return None if name in self.fields else name  # (a key renamed here is no name)

    def verb(self, name: object) -> str | None:
        """The verb the transport calls ``name`` (None: no verb)."""
        if not isinstance(name, str):
            return None
        verb = self._verbs.get(name)
        if verb is None and name not in self.verbs:
            verb = name
        return verb if verb in _KEYS else None

    def of_verb(self, verb: str) -> str:
        """``verb 'q'``: how messages name ``verb``."""
        return f"{self.verb_word} {self.verbs.get(verb, verb)!r}"


#: The control socket's names: the canonical short keys and verbs.
SHORT_NAMES: Final = Names()


def _bad(message: str) -> ControlError:
    return ControlError("bad_request", message)


def ref_of(request: object) -> str | int | None:
    """
    The request's ``i`` if it is one that may be echoed (a str or an int, not a bool, at
    most :data:`MAX_REF` characters as JSON), else None.
    """
    if not isinstance(request, dict):
        return None
    ref: object = request.get("i")
    if ref is None or isinstance(ref, bool) or not isinstance(ref, str | int):
        return None  # (no ref, the common case: no exception built and caught per line)
    try:
        _check_ref(ref)
    except ControlError:
        return None
    return ref


def _check_ref(ref: object, names: Names = SHORT_NAMES) -> None:
    if isinstance(ref, bool) or not isinstance(ref, str | int):
        raise _bad(f"{names.quoted('i')} must be a string or an integer, got {show(ref)}")
    try:
        text = encode_json(ref)
    except InvalidDataError as e:
        raise _bad(f"{names.quoted('i')} cannot be echoed: {e}") from None
    if len(text) > MAX_REF:
        raise _bad(f"{names.quoted('i')} is longer than {MAX_REF} characters as JSON")


def check_request(request: object, names: Names = SHORT_NAMES) -> dict[str, Any]:
    """
    ``request``, written in ``names`` (by default the canonical short keys), checked and
    translated into the canonical request, with every optional field filled in (``c``
    None: the hub's channel; ``i`` only when given). Raises :class:`ControlError`
    (``bad_request``) naming the first problem as the client wrote it.
    """
    if not isinstance(request, dict):
        raise _bad(f"a request must be a JSON object, got {type(request).__name__}")
    every = " ".join(names.verbs.get(v, v) for v in VERBS)
    if names.verb_key not in request:
        raise _bad(f"missing '{names.verb_key}' (the {names.verb_word}: one of {every})")
    verb = names.verb(request[names.verb_key])
    if verb is None:
        raise _bad(
            f"unknown {names.verb_word} {show(request[names.verb_key])}; expected one of {every}"
        )
    allowed, required = _KEYS[verb]
    fields: dict[str, Any] = {}
    unknown = []
    for name, value in request.items():
        if name == names.verb_key:
            continue
        key = names.key(name)
        if key is None or (key not in allowed and key != "i"):
            unknown.append(name)
        else:
            fields[key] = value
    if unknown:
        shown = ", ".join(show(k) for k in sorted(unknown)[:5])
        accepted = sorted({names.field(k) for k in allowed | {"i"}} | {names.verb_key})
        raise _bad(
            f"unknown {names.field_word}(s) {shown} for {names.of_verb(verb)}; it accepts "
            + ", ".join(accepted)
        )
    missing = sorted(names.field(k) for k in required - fields.keys())
    if missing:
        raise _bad(f"missing {', '.join(map(repr, missing))} for {names.of_verb(verb)}")
    return _check_fields(verb, fields, names)


def _check_fields(verb: str, request: dict[str, Any], names: Names) -> dict[str, Any]:
    """The canonical request of ``verb`` with ``request``'s fields (short keys) checked."""
    checked: dict[str, Any] = {"v": verb, "c": _name(request, "c", "channel name", names)}
    if "i" in request:
        _check_ref(request["i"], names)
        checked["i"] = request["i"]
    if verb == "r":
        checked["r"] = _name(request, "r", "listener id", names)
        checked["g"] = _name(request, "g", "group name", names)
        checked["size"] = _count(
            request, "size", DEFAULT_MAILBOX_SIZE, MAX_MAILBOX_SIZE, names
        )
        checked["ack_timeout"] = _seconds(
            request, "ack_timeout", DEFAULT_ACK_TIMEOUT, MAX_ACK_TIMEOUT, names,
            minimum=MIN_ACK_TIMEOUT,
        )
    elif verb in ("d", "b", "g", "q"):
        checked["t"] = _name(request, "t", f"message type ({names.quoted('t')})", names)
        checked["p"] = request.get("p")
        if verb == "d":
            checked["r"] = _name(request, "r", "listener id", names)
        elif verb == "g":
            checked["g"] = _name(request, "g", "group name", names)
        elif verb == "q":
            if ("r" in request) == ("g" in request):
                raise _bad(
                    f"{names.of_verb('q')} needs exactly one target: {names.quoted('r')} "
                    f"(a listener) or {names.quoted('g')} (a group)"
                )
            key = "r" if "r" in request else "g"
            checked["target"] = _name(
                request, key, "listener id" if key == "r" else "group name", names
            )
            checked["group"] = key == "g"
            checked["timeout"] = _seconds(
                request, "timeout", DEFAULT_TIMEOUT, MAX_TIMEOUT, names
            )
    elif verb == "l":
        checked["r"] = _name(request, "r", "listener id", names)
        auto = request.get("a", False)
        if not isinstance(auto, bool):
            raise _bad(f"{names.quoted('a')} (auto-ack) must be true or false, got {show(auto)}")
        checked["a"] = auto
        checked["m"] = _count(request, "m", DEFAULT_IN_FLIGHT, MAX_IN_FLIGHT, names)
    elif verb == "w":
        since = request.get("since")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_OFFSET
        ):
            raise _bad(
                f"{names.quoted('since')} must be an offset from 0 to 2**63-1, got {show(since)}"
            )
        epoch = request.get("epoch")
        if epoch is not None and (not isinstance(epoch, str) or len(epoch) > MAX_EPOCH):
            raise _bad(f"{names.quoted('epoch')} must be a string of at most {MAX_EPOCH} "
                       f"characters, got {show(epoch)}")
        checked["since"], checked["epoch"] = since, epoch
    elif verb == "rl":
        checked["r"] = _name(request, "r", "listener id", names)
    return checked


def _name(request: dict[str, Any], key: str, what: str, names: Names) -> str | None:
    """``request[key]`` as a checked name, None when absent (``null`` is refused)."""
    if key not in request:
        return None
    try:
        return check_event_name(request[key], what)
    except (TypeError, ValueError) as e:
        raise _bad(f"{names.quoted(key)}: {e}") from None


def _count(
    request: dict[str, Any], key: str, default: int, limit: int, names: Names
) -> int:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise _bad(f"{names.quoted(key)} must be an integer from 1 to {limit}, "
                   f"got {show(value)}")
    return value


def _seconds(
    request: dict[str, Any],
    key: str,
    default: float,
    limit: float,
    names: Names,
    minimum: float | None = None,
) -> float:
    value = request.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= limit
        or (minimum is not None and value < minimum)
    ):
        low = f">= {minimum:g}" if minimum is not None else "> 0"
        raise _bad(f"{names.quoted(key)} must be a number of seconds {low} and <= {limit:g}, "
                   f"got {show(value)}")
    return float(value)
