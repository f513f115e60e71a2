"""
Functions for processing tests that run in worker processes: a spawned worker imports
them by name, so they live at the top level of an importable module (and this module
imports nothing heavy, so a worker starts fast).
"""

from __future__ import annotations

import os
from typing import Any


def square(x: int) -> int:
    return x * x


def pid(_: object) -> int:
    """The worker's process id."""
    return os.getpid()


def refuse(x: object) -> object:
    raise ValueError(f"cannot process {x!r}")


def die(_: object) -> object:
    """Kill the worker process at once (the pool sees BrokenProcessPool)."""
    os._exit(3)


def unencodable(_: object) -> Any:
    """A picklable result that JSON cannot encode."""
    return {1, 2}


def square_and_pid(x: int) -> list[int]:
    """``[x * x, the worker's process id]``."""
    return [x * x, os.getpid()]


def square_or_die(x: object) -> list[int]:
    """Like :func:`square_and_pid`; the input ``"die"`` kills the worker."""
    if x == "die":
        os._exit(3)
    assert isinstance(x, int)
    return square_and_pid(x)


class TwoArgsError(Exception):
    """Pickles, but does not unpickle: ``__init__`` takes other arguments than ``args``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code


def raise_unpicklable(x: object) -> object:
    raise TwoArgsError(3, f"cannot process {x!r}")
