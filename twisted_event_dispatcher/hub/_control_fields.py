"""
Checking a control request (the canonical short-key dict of :mod:`._control`) before
anything is carried out: known verb, known keys, the required ones present, each field of
the right type (a bool is not an int) and within its bound. Every problem is a
:class:`ControlError` with code ``bad_request`` naming the field.
"""

from __future__ import annotations

import math
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
    "VERBS",
    "ControlError",
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


def _bad(message: str) -> ControlError:
    return ControlError("bad_request", message)


def ref_of(request: object) -> str | int | None:
    """
    The request's ``i`` if it is one that may be echoed (a str or an int, not a bool, at
    most :data:`MAX_REF` characters as JSON), else None.
    """
    if not isinstance(request, dict):
        return None
    ref = request.get("i")
    try:
        _check_ref(ref)
    except ControlError:
        return None
    return ref


def _check_ref(ref: object) -> None:
    if isinstance(ref, bool) or not isinstance(ref, str | int):
        raise _bad(f"'i' must be a string or an integer, got {show(ref)}")
    try:
        text = encode_json(ref)
    except InvalidDataError as e:
        raise _bad(f"'i' cannot be echoed: {e}") from None
    if len(text) > MAX_REF:
        raise _bad(f"'i' is longer than {MAX_REF} characters as JSON")


def check_request(request: object) -> dict[str, Any]:
    """
    ``request`` checked, with every optional field filled in (``c`` None: the hub's
    channel). Raises :class:`ControlError` (``bad_request``) naming the first problem.
    """
    if not isinstance(request, dict):
        raise _bad(f"a request must be a JSON object, got {type(request).__name__}")
    if "v" not in request:
        raise _bad("missing 'v' (the verb: one of " + " ".join(VERBS) + ")")
    verb = request["v"]
    if not isinstance(verb, str) or verb not in _KEYS:
        raise _bad(f"unknown verb {show(verb)}; expected one of " + " ".join(VERBS))
    allowed, required = _KEYS[verb]
    unknown = [k for k in request if k not in allowed and k not in ("v", "i")]
    if unknown:
        names = ", ".join(show(k) for k in sorted(unknown)[:5])
        raise _bad(f"unknown key(s) {names} for verb {verb!r}; it accepts " + (
            ", ".join(sorted(allowed | {"v", "i"}))
        ))
    missing = sorted(required - request.keys())
    if missing:
        raise _bad(f"missing {', '.join(repr(k) for k in missing)} for verb {verb!r}")
    if "i" in request:
        _check_ref(request["i"])
    checked: dict[str, Any] = {"v": verb, "c": _name(request, "c", "channel name")}
    if verb == "r":
        checked["r"] = _name(request, "r", "listener id")
        checked["g"] = _name(request, "g", "group name")
        checked["size"] = _count(request, "size", DEFAULT_MAILBOX_SIZE, MAX_MAILBOX_SIZE)
        checked["ack_timeout"] = _seconds(
            request, "ack_timeout", DEFAULT_ACK_TIMEOUT, MAX_ACK_TIMEOUT
        )
    elif verb in ("d", "b", "g", "q"):
        checked["t"] = _name(request, "t", "message type ('t')")
        checked["p"] = request.get("p")
        if verb == "d":
            checked["r"] = _name(request, "r", "listener id")
        elif verb == "g":
            checked["g"] = _name(request, "g", "group name")
        elif verb == "q":
            if ("r" in request) == ("g" in request):
                raise _bad("verb 'q' needs exactly one target: 'r' (a listener) or 'g' (a group)")
            key = "r" if "r" in request else "g"
            checked["target"] = _name(request, key, "listener id" if key == "r" else "group name")
            checked["group"] = key == "g"
            checked["timeout"] = _seconds(request, "timeout", DEFAULT_TIMEOUT, MAX_TIMEOUT)
    elif verb == "l":
        checked["r"] = _name(request, "r", "listener id")
        auto = request.get("a", False)
        if not isinstance(auto, bool):
            raise _bad(f"'a' (auto-ack) must be true or false, got {show(auto)}")
        checked["a"] = auto
        checked["m"] = _count(request, "m", DEFAULT_IN_FLIGHT, MAX_IN_FLIGHT)
    elif verb == "w":
        since = request.get("since")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_OFFSET
        ):
            raise _bad(f"'since' must be an offset from 0 to 2**63-1, got {show(since)}")
        epoch = request.get("epoch")
        if epoch is not None and (not isinstance(epoch, str) or len(epoch) > MAX_EPOCH):
            raise _bad(f"'epoch' must be a string of at most {MAX_EPOCH} characters, "
                       f"got {show(epoch)}")
        checked["since"], checked["epoch"] = since, epoch
    elif verb == "rl":
        checked["r"] = _name(request, "r", "listener id")
    return checked


def _name(request: dict[str, Any], key: str, what: str) -> str | None:
    """``request[key]`` as a checked name, None when absent (``null`` is refused)."""
    if key not in request:
        return None
    try:
        return check_event_name(request[key], what)
    except (TypeError, ValueError) as e:
        raise _bad(f"'{key}': {e}") from None


def _count(request: dict[str, Any], key: str, default: int, limit: int) -> int:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise _bad(f"'{key}' must be an integer from 1 to {limit}, got {show(value)}")
    return value


def _seconds(request: dict[str, Any], key: str, default: float, limit: float) -> float:
    value = request.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= limit
    ):
        raise _bad(f"'{key}' must be a number of seconds > 0 and <= {limit:g}, "
                   f"got {show(value)}")
    return float(value)
