"""
Property-based fuzzing of network surfaces, inside pytest-twisted's async tests.

Hypothesis' ``@given`` cannot drive an ``async def`` test that talks to a real server
through the reactor (the test runs in the reactor's greenlet), so :func:`examples` asks
Hypothesis for a list of values first (under the active profile: derandomized with fixed
seeds in CI, ``--hypothesis-profile=long`` for longer local runs) and the test sends each
one; a failure names the example that caused it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

_T = TypeVar("_T")


def examples(strategy: st.SearchStrategy[_T], count: int | None = None) -> list[_T]:
    """``count`` values drawn from ``strategy`` (the profile's ``max_examples`` if None)."""
    drawn: list[_T] = []
    current = settings()

    @settings(
        current,
        max_examples=count or current.max_examples,
        phases=[Phase.generate],
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn


__all__ = ["examples"]
