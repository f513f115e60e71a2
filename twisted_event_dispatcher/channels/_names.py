"""
Checks shared by channels and listeners: names (events, channels, listener ids, groups),
counts and durations. Each raises TypeError or ValueError naming what is wrong.
"""

from __future__ import annotations

import math

__all__ = ["MAX_NAME_LENGTH", "WILDCARD", "check_count", "check_event_name", "check_seconds"]

#: Subscribe to this event name to receive every event of a channel.
WILDCARD = "*"
#: Longest event or channel name accepted.
MAX_NAME_LENGTH = 200


def check_event_name(name: object, what: str = "event name", wildcard: bool = False) -> str:
    """
    Validate an event (or channel) name: a non-empty str of at most 200 characters, with
    no control characters (names travel in SSE ``event:`` lines and JSON), not starting
    with ``_`` (reserved for control messages) and, unless ``wildcard``, not ``"*"``.
    Returns it as a plain ``str``: a subclass of str is checked, and used, by its
    characters, never by methods it overrides.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if type(name) is not str:
        name = str.__str__(name)  # an exact copy of its characters
    if not name:
        raise ValueError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if not name.isprintable():
        if any("\ud800" <= c <= "\udfff" for c in name):
            raise ValueError(f"{what} {name!r} contains a lone surrogate (not valid Unicode)")
        raise ValueError(f"{what} {name!r} contains control characters")
    if name.startswith("_"):
        raise ValueError(f"{what} {name!r} starts with '_', which is reserved")
    if name == WILDCARD and not wildcard:
        raise ValueError(f"{what} '*' is only valid when subscribing")
    return name


def check_count(value: object, what: str) -> int:
    """An int >= 1 (not a bool): a bound or a count of slots."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def check_seconds(value: object, what: str) -> float:
    """A finite number of seconds > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")
    return float(value)
