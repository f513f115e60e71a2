"""
Token buckets: how the hub bounds the rate of requests one peer (or one WebSocket
connection) may make, with bounded memory however many peers there are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from twisted.internet.interfaces import IReactorTime

__all__ = ["RateLimiter"]


class RateLimiter:
    """
    Allows ``rate`` requests per second per key on average, in bursts of up to ``burst``.

    Keys are kept in least-recently-used order and at most ``max_keys`` of them: a flood
    of new keys forgets the least recent ones instead of growing without bound. A
    forgotten key starts again with a full burst, so a client that can use more than
    ``max_keys`` addresses (an IPv6 prefix) is not held to the rate: the bound is on
    memory first. Per-address limits are a guard against a runaway or careless client,
    not against a distributed flood.

    :param rate: requests per second a key earns; ``0`` disables the limit.
    :param burst: requests a key may make at once after being quiet (at least 1).
    """

    def __init__(
        self, rate: float, burst: int, clock: IReactorTime, max_keys: int = 10_000
    ) -> None:
        if not rate >= 0:
            raise ValueError(f"rate must be >= 0 requests per second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        # key -> (tokens left, when they were counted)
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def take(self, key: Hashable) -> float | None:
        """
        Spend one token of ``key``: None if allowed, else the seconds until the next
        token (for a ``Retry-After`` answer).
        """
        if not self.rate:
            return None
        now = self.clock.seconds()
        buckets = self._buckets
        tokens, then = buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1:
            buckets[key] = (tokens - 1, now)
            verdict = None
        else:
            buckets[key] = (tokens, now)
            verdict = (1 - tokens) / self.rate
        if len(buckets) > self.max_keys:
            buckets.popitem(last=False)
        return verdict

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s bucket (its connection is gone)."""
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)
