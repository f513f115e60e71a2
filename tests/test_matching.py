"""MatchIndex against its rules, and against a naive linear matcher (Hypothesis)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_event_dispatcher import AnyOf
from twisted_event_dispatcher._matching import MatchIndex
from twisted_event_dispatcher.errors import UnhashableValueError


class Entry:
    """An index entry ordered by registration number."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"E{self.n}"


def make_index() -> MatchIndex[Entry]:
    return MatchIndex(lambda e: e.n)


def naive_matches(spec: Mapping[str, Any], keywords: Mapping[str, Any]) -> bool:
    for key, value in spec.items():
        if key not in keywords:
            return False
        if isinstance(value, AnyOf):
            if keywords[key] not in value.values:
                return False
        elif keywords[key] != value:
            return False
    return True


def test_empty_spec_matches_every_event_including_no_keywords() -> None:
    index = make_index()
    entry = Entry(1)
    index.add(entry, {})
    assert list(index.lookup({})) == [entry]
    assert list(index.lookup({"a": 1, "b": 2})) == [entry]


def test_subset_match_ignores_unnamed_keywords() -> None:
    index = make_index()
    a, ab = Entry(1), Entry(2)
    index.add(a, {"a": 1})
    index.add(ab, {"a": 1, "b": 2})
    assert list(index.lookup({"a": 1})) == [a]
    assert list(index.lookup({"a": 1, "b": 2, "c": 3})) == [a, ab]
    assert list(index.lookup({"a": 1, "b": 3})) == [a]
    assert list(index.lookup({"b": 2})) == []
    assert list(index.lookup({})) == []


def test_any_of_matches_each_listed_value() -> None:
    index = make_index()
    entry = Entry(1)
    index.add(entry, {"role": AnyOf("admin", "owner"), "user": 7})
    assert list(index.lookup({"role": "owner", "user": 7})) == [entry]
    assert list(index.lookup({"role": "admin", "user": 7})) == [entry]
    assert list(index.lookup({"role": "guest", "user": 7})) == []
    index.remove(entry)
    assert index.bucket_count == 0


def test_results_are_sorted_across_groups() -> None:
    index = make_index()
    entries = [Entry(n) for n in (5, 1, 4, 2, 3)]
    specs: list[dict[str, Hashable]] = [{}, {"a": 1}, {"b": 2}, {"a": 1, "b": 2}, {"a": 1}]
    for entry, spec in zip(entries, specs):
        index.add(entry, spec)
    assert [e.n for e in index.lookup({"a": 1, "b": 2})] == [1, 2, 3, 4, 5]


def test_lookup_result_is_a_snapshot() -> None:
    index = make_index()
    first, second = Entry(1), Entry(2)
    index.add(first, {"a": 1})
    snapshot = index.lookup({"a": 1})
    index.add(second, {"a": 1})
    index.remove(first)
    assert list(snapshot) == [first]
    assert list(index.lookup({"a": 1})) == [second]


def test_lookup_never_grows_the_index_and_empty_buckets_go() -> None:
    index = make_index()
    entry = Entry(1)
    index.add(entry, {"a": 1, "b": 2})
    before = (index.group_count, index.bucket_count)
    for value in range(100):
        index.lookup({"a": value, "b": value})
    assert (index.group_count, index.bucket_count) == before == (1, 1)
    index.remove(entry)
    assert (index.group_count, index.bucket_count, len(index)) == (0, 0, 0)
    assert index.keywords_in_use() == frozenset()


def test_unhashable_spec_value_is_refused_before_any_change() -> None:
    index = make_index()
    with pytest.raises(UnhashableValueError, match="'b'") as info:
        index.add(Entry(1), {"a": 1, "b": [2]})  # type: ignore[dict-item]
    assert isinstance(info.value, TypeError)
    assert len(index) == 0 and index.bucket_count == 0


def test_duplicate_add_and_missing_remove_are_errors() -> None:
    index = make_index()
    entry = Entry(1)
    index.add(entry, {})
    with pytest.raises(ValueError):
        index.add(entry, {"a": 1})
    index.remove(entry)
    with pytest.raises(KeyError):
        index.remove(entry)


def test_any_of_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AnyOf()
    with pytest.raises(TypeError, match="hashable"):
        AnyOf([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="another AnyOf"):
        AnyOf(AnyOf(1))
    assert AnyOf(1, 2) == AnyOf(2, 1) and hash(AnyOf(1, 2)) == hash(AnyOf(2, 1))
    assert repr(AnyOf("b", "a")) == "AnyOf('a', 'b')"


KEYS = ("k1", "k2", "k3", "k4")
values = st.integers(min_value=0, max_value=3)
spec_values = st.one_of(values, st.lists(values, min_size=1, max_size=3).map(lambda v: AnyOf(*v)))
specs = st.dictionaries(st.sampled_from(KEYS), spec_values, max_size=4)
events = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)


@settings(max_examples=600, deadline=None)
@given(
    specs=st.lists(specs, max_size=25),
    removals=st.lists(st.integers(min_value=0, max_value=24), max_size=10),
    probes=st.lists(events, min_size=1, max_size=10),
)
def test_index_agrees_with_a_naive_matcher(
    specs: list[dict[str, Any]], removals: list[int], probes: list[dict[str, int]]
) -> None:
    index = make_index()
    live: dict[int, tuple[Entry, dict[str, Any]]] = {}
    for n, spec in enumerate(specs):
        entry = Entry(n)
        index.add(entry, spec)
        live[n] = (entry, spec)
    for n in removals:
        if n in live:
            index.remove(live.pop(n)[0])
    shape = (index.group_count, index.bucket_count)
    for keywords in probes:
        expected = [e for e, spec in sorted(live.values(), key=lambda p: p[0].n)
                    if naive_matches(spec, keywords)]
        assert list(index.lookup(keywords)) == expected
    assert (index.group_count, index.bucket_count) == shape
    assert len(index) == len(live)
    used = {key for _, spec in live.values() for key in spec}
    assert index.keywords_in_use() == used


def test_handlers_sharing_a_keyword_set_share_one_probe() -> None:
    index = make_index()
    for n in range(1000):
        index.add(Entry(n), {"k1": n, "k2": n % 7})
    index.add(Entry(1000), {})
    # 1000 handlers, two keyword sets: a lookup probes two places, whatever the count
    assert index.group_count == 2
    assert [e.n for e in index.lookup({"k1": 14, "k2": 0, "k3": 1})] == [14, 1000]
