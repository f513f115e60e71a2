"""
MatchIndex: find the entries whose match spec is satisfied by an event's keywords.

A pure data structure (no Twisted import) so that it can be tested exhaustively against a
naive matcher.

A match spec is a mapping ``keyword -> value``. It matches an event iff every keyword in
the spec is present among the event's keywords with an equal value; keywords the spec
does not name are ignored, and the empty spec matches every event. A value may be
:class:`AnyOf` to accept several values.

Entries are grouped by the *set of keywords* their spec names. Each group keeps a dict
from the spec's values to a bucket of entries, so a lookup costs one dict probe per group
whose keywords the event carries: it grows with the number of distinct keyword sets, not
with the number of entries. Buckets are copy-on-write and kept sorted by the caller's sort
key, so a lookup can hand a bucket out as an immutable snapshot without copying it, and a
lookup never adds to the index.
"""

from __future__ import annotations

import itertools
from bisect import insort
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Generic, TypeVar

from .errors import UnhashableValueError

T = TypeVar("T", bound=Hashable)

__all__ = ["AnyOf", "MatchIndex", "check_hashable"]


class AnyOf:
    """
    A match-spec value that accepts any of several values.

    ``add_event_handler(h, 'during', role=AnyOf('admin', 'owner'))`` runs ``h`` for events
    fired with ``role='admin'`` or ``role='owner'``. The handler is indexed under each
    value, so lookups stay a dict probe.
    """

    __slots__ = ("values",)

    def __init__(self, *values: Hashable) -> None:
        if not values:
            raise ValueError("AnyOf() needs at least one value; it would never match")
        for value in values:
            if isinstance(value, AnyOf):
                raise TypeError("AnyOf cannot contain another AnyOf")
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"AnyOf values must be hashable, got unhashable {type(value).__name__}"
                ) from None
        self.values: frozenset[Hashable] = frozenset(values)

    def __repr__(self) -> str:
        return f"AnyOf({', '.join(sorted(map(repr, self.values)))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnyOf) and other.values == self.values

    def __hash__(self) -> int:
        return hash((AnyOf, self.values))


def check_hashable(keywords: Mapping[str, object], where: str) -> None:
    """
    Raise :class:`UnhashableValueError` naming the first keyword whose value is unhashable.

    One ``hash()`` of a tuple covers the common case where every value is hashable.
    """
    try:
        hash(tuple(keywords.values()))
    except TypeError:
        for name, value in keywords.items():
            try:
                hash(value)
            except TypeError:
                raise UnhashableValueError(name, value, where) from None
        raise


class _Group(Generic[T]):
    """The entries whose specs name exactly the keywords ``keys``."""

    __slots__ = ("keys", "keyset", "getter", "table")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.keyset = frozenset(keys)
        # itemgetter with one key returns the bare value, with several a tuple; bucket keys
        # are built the same way so that a lookup is a single call and a dict probe.
        self.getter: Callable[[Mapping[str, Any]], Hashable] = itemgetter(*keys)
        self.table: dict[Hashable, list[T]] = {}


_Probe = tuple[
    frozenset[str], Callable[[Mapping[str, Any]], Hashable], dict[Hashable, list[T]]
]


class MatchIndex(Generic[T]):
    """
    Entries indexed by match spec; ``lookup(keywords)`` returns the matching ones sorted.

    :param sort_key: orders the entries of a lookup's result (and each bucket).
    """

    def __init__(self, sort_key: Callable[[T], Any]) -> None:
        self._sort_key = sort_key
        self._groups: dict[tuple[str, ...], _Group[T]] = {}
        # (keyset, getter, table) per group: what a lookup reads, unpacked in one step.
        self._probe: tuple[_Probe[T], ...] = ()
        self._match_all: list[T] = []
        self._where: dict[T, tuple[_Group[T] | None, tuple[Hashable, ...]]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, entry: object) -> bool:
        return entry in self._where

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._where))

    @property
    def group_count(self) -> int:
        """Number of distinct keyword sets in use (the per-lookup cost)."""
        return len(self._groups) + (1 if self._match_all else 0)

    @property
    def bucket_count(self) -> int:
        """Number of non-empty buckets; lookups never change it."""
        return sum(len(g.table) for g in self._groups.values()) + (1 if self._match_all else 0)

    def keywords_in_use(self) -> frozenset[str]:
        """Every keyword named by at least one registered spec."""
        return frozenset(itertools.chain.from_iterable(self._groups))

    def add(self, entry: T, spec: Mapping[str, Hashable]) -> None:
        """
        Index ``entry`` under ``spec``. Raises before changing anything if a value is
        unhashable or ``entry`` is already present.
        """
        if entry in self._where:
            raise ValueError(f"{entry!r} is already in the index")
        if not spec:
            self._match_all = self._inserted(self._match_all, entry)
            self._where[entry] = (None, ())
            return
        check_hashable(spec, "match spec")
        keys = tuple(sorted(spec))
        choices = [
            sorted(v.values, key=repr) if isinstance(v, AnyOf) else [v]
            for v in (spec[k] for k in keys)
        ]
        if len(keys) == 1:
            bucket_keys: tuple[Hashable, ...] = tuple(choices[0])
        else:
            bucket_keys = tuple(itertools.product(*choices))
        group = self._groups.get(keys)
        if group is None:
            group = self._groups[keys] = _Group(keys)
            self._reprobe()
        table = group.table
        for key in bucket_keys:
            table[key] = self._inserted(table.get(key, []), entry)
        self._where[entry] = (group, bucket_keys)

    def remove(self, entry: T) -> None:
        """Remove ``entry``; ``KeyError`` if absent. Empty buckets and groups are dropped."""
        group, bucket_keys = self._where.pop(entry)
        if group is None:
            self._match_all = self._without(self._match_all, entry)
            return
        table = group.table
        for key in bucket_keys:
            remaining = self._without(table[key], entry)
            if remaining:
                table[key] = remaining
            else:
                del table[key]
        if not table:
            del self._groups[group.keys]
            self._reprobe()

    def lookup(self, keywords: Mapping[str, Hashable]) -> Sequence[T]:
        """
        Entries whose spec matches ``keywords``, sorted by the sort key.

        The returned sequence must not be mutated; it stays valid (a snapshot) when the
        index changes afterwards. Values must be hashable (see :func:`check_hashable`).
        """
        found: list[T] | None = self._match_all or None
        more: list[list[T]] | None = None
        if keywords:
            names = keywords.keys()
            for keyset, getter, table in self._probe:
                if names >= keyset:
                    bucket = table.get(getter(keywords))
                    if bucket is not None:
                        if found is None:
                            found = bucket
                        elif more is None:
                            more = [found, bucket]
                        else:
                            more.append(bucket)
        if more is not None:
            return sorted(itertools.chain.from_iterable(more), key=self._sort_key)
        return found if found is not None else ()

    def _reprobe(self) -> None:
        self._probe = tuple((g.keyset, g.getter, g.table) for g in self._groups.values())

    # Buckets are never changed in place (lookups hand them out as snapshots): both helpers
    # build a new list, with C-level copies in the common cases.

    def _inserted(self, bucket: list[T], entry: T) -> list[T]:
        key = self._sort_key
        if not bucket or key(bucket[-1]) <= key(entry):
            return [*bucket, entry]
        copy = list(bucket)
        insort(copy, entry, key=key)
        return copy

    @staticmethod
    def _without(bucket: list[T], entry: T) -> list[T]:
        if bucket[-1] is entry:
            return bucket[:-1]
        i = bucket.index(entry)
        return bucket[:i] + bucket[i + 1 :]
