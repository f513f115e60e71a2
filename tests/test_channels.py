"""Channels: registry, publish validation, offsets, history, resume and gaps, fan-out."""

from __future__ import annotations

from typing import cast

import pytest
from zope.interface.verify import verifyObject

from twisted_event_dispatcher.channels import (
    ChannelRegistry,
    MemoryChannel,
    Message,
    Subscription,
)
from twisted_event_dispatcher.errors import (
    ChannelClassError,
    ChannelExistsError,
    InvalidDataError,
    UnknownChannelError,
)
from twisted_event_dispatcher.interfaces import ICarrier, IChannel
from twisted_event_dispatcher.testing import RecordingCarrier, success_result_of


def subscribe(
    channel: MemoryChannel, event: str, carrier: RecordingCarrier, **kw: object
) -> Subscription:
    return success_result_of(channel.subscribe(event, carrier, **kw))  # type: ignore[arg-type]


def test_interfaces() -> None:
    assert verifyObject(IChannel, MemoryChannel("news"))
    assert verifyObject(ICarrier, RecordingCarrier())


def test_registry_gives_one_channel_per_name_and_never_resets_it() -> None:
    channels = ChannelRegistry()
    news = channels.get_or_create("news", history_size=5)
    success_result_of(news.publish("headline", "one"))
    again = channels.get_or_create("news", history_size=500)
    assert again is news and news.history_size == 5 and news.last_id == 1
    assert channels["news"] is news and "news" in channels and list(channels) == ["news"]

    class OtherChannel(MemoryChannel):
        pass

    with pytest.raises(ChannelClassError, match="'news' already exists as a MemoryChannel"):
        channels.get_or_create("news", OtherChannel)
    with pytest.raises(UnknownChannelError, match="'sports'") as info:
        channels["sports"]
    assert isinstance(info.value, KeyError)


def test_registry_as_a_container_register_get_rm_and_ids() -> None:
    channels = ChannelRegistry()
    news = channels.get_or_create("news")
    sports, weather = MemoryChannel("sports"), MemoryChannel("weather")
    assert channels.register(sports) is sports
    assert channels.get("sports") is sports and channels.get("news") is news
    assert channels.get_all_ids() == ["news", "sports"]

    # A name taken (by get_or_create, by register, or by the same object) is refused.
    for taken in (MemoryChannel("news"), MemoryChannel("sports"), sports):
        with pytest.raises(ChannelExistsError, match=f"{taken.name!r} is already registered"):
            channels.register(taken)
    with pytest.raises(TypeError, match="only a Channel can be registered, got str"):
        channels.register("news")  # type: ignore[arg-type]

    # register_iterable is all or none: a duplicate anywhere adds nothing.
    with pytest.raises(ChannelExistsError, match="'weather'"):
        channels.register_iterable([weather, MemoryChannel("weather")])
    with pytest.raises(ChannelExistsError, match="'news'"):
        channels.register_iterable(iter([weather, MemoryChannel("news")]))
    with pytest.raises(TypeError):
        channels.register_iterable([weather, None])  # type: ignore[list-item]
    assert channels.get_all_ids() == ["news", "sports"]
    assert channels.register_iterable(iter([weather])) == [weather]
    assert channels.get_all_ids() == ["news", "sports", "weather"]

    assert channels.rm("sports") is sports
    assert channels.get_all_ids() == ["news", "weather"] and "sports" not in channels
    for unknown in ("sports", "", ["not", "hashable"]):
        with pytest.raises(UnknownChannelError) as info:
            channels.get(unknown)  # type: ignore[arg-type]
        assert isinstance(info.value, KeyError)
        with pytest.raises(UnknownChannelError, match="no channel named"):
            channels.rm(unknown)  # type: ignore[arg-type]
        assert unknown not in channels
    # get never creates: the registry is unchanged by the failed lookups.
    assert channels.get_all_ids() == ["news", "weather"]


def test_publish_delivers_in_order_with_increasing_offsets() -> None:
    channel = MemoryChannel("news")
    carrier = RecordingCarrier()
    subscribe(channel, "headline", carrier)
    published = [success_result_of(channel.publish("headline", {"n": n})) for n in range(3)]
    success_result_of(channel.publish("weather", "rain"))
    assert [m.id for m in published] == [1, 2, 3]
    assert carrier.messages == published
    assert all(m.epoch == channel.epoch and m.channel == "news" for m in published)
    assert published[0].as_dict() == {
        "type": "event", "id": 1, "epoch": channel.epoch, "channel": "news",
        "event": "headline", "data": {"n": 0},
    }


def test_wildcard_gets_everything_once() -> None:
    channel = MemoryChannel("news")
    everything, both = RecordingCarrier(), RecordingCarrier()
    subscribe(channel, "*", everything)
    subscribe(channel, "*", both)
    subscribe(channel, "weather", both)
    success_result_of(channel.publish("weather", "sun"))
    success_result_of(channel.publish("headline", "x"))
    assert everything.events == [("weather", "sun"), ("headline", "x")]
    assert both.events == [("weather", "sun"), ("headline", "x")], "no duplicate delivery"


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("key", "data", "error", "match"),
    [
        ("e", object(), TypeError, "JSON-encodable"),
        ("e", float("nan"), TypeError, "JSON-encodable"),
        ("e", {1: {2, 3}}, TypeError, "JSON-encodable"),
        ("e", float("inf"), InvalidDataError, "NaN and infinities"),
        ("e", "\ud800", InvalidDataError, "lone surrogate"),
        ("e", {"k\udfff": 1}, InvalidDataError, "lone surrogate"),
        ("e", _nested(65), InvalidDataError, "nested deeper than 64"),
        ("e", _nested(5000), InvalidDataError, "nested deeper than 64"),
        ("e", "x" * (1024 * 1024), InvalidDataError, "accepts at most 1048576"),
        ("e", "é" * (600 * 1024), InvalidDataError, "is 1228802 bytes"),
        (42, None, TypeError, "event name must be a str"),
        ("", None, ValueError, "empty"),
        ("*", None, ValueError, "only valid when subscribing"),
        ("_gap", None, ValueError, "reserved"),
        ("a\nb", None, ValueError, "control characters"),
        ("a\udc00", None, ValueError, "lone surrogate"),
        ("x" * 201, None, ValueError, "longer than 200"),
    ],
)
def test_bad_publish_raises_and_queues_nothing(
    key: object, data: object, error: type[Exception], match: str
) -> None:
    channel = MemoryChannel("news")
    carrier = RecordingCarrier()
    subscribe(channel, "*", carrier)
    with pytest.raises(error, match=match):
        channel.publish(key, data)  # type: ignore[arg-type]
    assert carrier.messages == [] and channel.last_id is None
    success_result_of(channel.publish("ok"))
    assert [m.id for m in carrier.messages] == [1], "no offset was used by the failure"


def test_what_publish_accepts_at_the_bounds_it_delivers() -> None:
    channel = MemoryChannel("news")
    carrier = RecordingCarrier()
    subscribe(channel, "*", carrier)
    deep, text = _nested(64), "é" * (512 * 1024 - 1)  # exactly 64 levels; 1 MiB of UTF-8
    accepted = [deep, text, "\U0001f600 \u2028 \x00", {"[": "]]]]"}]
    for data in accepted:
        success_result_of(channel.publish("e", data))
    assert [m.data for m in carrier.messages] == accepted
    for message in carrier.messages:
        message.json.encode("utf-8")  # every stored message has a wire form


def test_a_refused_message_is_not_stored_and_resume_goes_past_it() -> None:
    channel = MemoryChannel("news")
    success_result_of(channel.publish("e", 1))
    with pytest.raises(InvalidDataError):
        channel.publish("e", "\ud800")
    success_result_of(channel.publish("e", 2))
    carrier = RecordingCarrier()
    resumed = subscribe(channel, "e", carrier, since=0)
    assert resumed.gap is None and [m.data for m in resumed.replay] == [1, 2]
    assert [m.id for m in resumed.replay] == [1, 2], "the refused message took no offset"


class _Exploding(RecordingCarrier):
    def deliver(self, message: object) -> None:
        raise OSError("transport gone")


def test_a_carrier_that_raises_is_dropped_and_the_others_still_get_everything() -> None:
    from twisted.logger import ILogObserver, globalLogPublisher

    logged: list[dict[str, object]] = []
    observer = cast(ILogObserver, logged.append)
    globalLogPublisher.addObserver(observer)
    try:
        channel = MemoryChannel("news")
        before, bad, after = RecordingCarrier(), _Exploding(), RecordingCarrier()
        for carrier in (before, bad, after):
            subscribe(channel, "*", carrier)
        subscribe(channel, "e", bad)
        first = success_result_of(channel.publish("e", 1))
        second = success_result_of(channel.publish("e", 2))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert before.messages == [first, second] and after.messages == [first, second]
    assert channel.carrier_count == 2 and channel.subscribers("e") == []
    failures = [e for e in logged if "log_failure" in e]
    assert len(failures) == 1, "logged once, then dropped"
    assert "transport gone" in str(failures[0]["log_failure"])


def test_notify_gap_reaches_every_subscription_in_order_with_messages() -> None:
    channel = MemoryChannel("news")
    a, b = RecordingCarrier(), RecordingCarrier()
    subscribe(channel, "e", a)
    subscribe(channel, "*", b)
    subscribe(channel, "f", b)
    channel._notify_gap("epoch", 7, 1)
    assert [(c, e, g.reason, g.since, g.oldest) for c, e, g in a.gaps] == [
        ("news", "e", "epoch", 7, 1)
    ]
    assert sorted(e for _, e, _ in b.gaps) == ["*", "f"]
    assert all(g.epoch == channel.epoch for _, _, g in a.gaps + b.gaps)


def test_bad_subscribe_arguments() -> None:
    channel = MemoryChannel("news")
    carrier = RecordingCarrier()
    with pytest.raises(ValueError, match="since"):
        channel.subscribe("e", carrier, since=-1)
    with pytest.raises(ValueError, match="since"):
        channel.subscribe("e", carrier, since="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="epoch"):
        channel.subscribe("e", carrier, since=1, epoch=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ICarrier"):
        channel.subscribe("e", object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MemoryChannel("")
    with pytest.raises(ValueError, match="history_size"):
        MemoryChannel("x", history_size=-1)
    assert channel.carrier_count == 0


def test_resume_replays_exactly_the_missed_messages() -> None:
    channel = MemoryChannel("news", history_size=10)
    for n in range(5):
        success_result_of(channel.publish("a" if n % 2 else "b", n))
    carrier = RecordingCarrier()
    result = subscribe(channel, "a", carrier, since=2, epoch=channel.epoch)
    assert result.gap is None and result.last_id == 5
    assert [(m.id, m.data) for m in result.replay] == [(4, 3)]
    everything = subscribe(channel, "*", RecordingCarrier(), since=2)
    assert [m.id for m in everything.replay] == [3, 4, 5]
    up_to_date = subscribe(channel, "*", RecordingCarrier(), since=5)
    assert up_to_date.replay == () and up_to_date.gap is None


def test_gaps_expired_epoch_and_unknown_offsets() -> None:
    channel = MemoryChannel("news", history_size=3)
    for n in range(6):
        success_result_of(channel.publish("e", n))
    expired = subscribe(channel, "e", RecordingCarrier(), since=1)
    assert expired.gap is not None and expired.gap.reason == "expired"
    assert expired.gap.oldest == 4 and expired.replay == ()
    just_in_time = subscribe(channel, "e", RecordingCarrier(), since=3)
    assert just_in_time.gap is None and [m.id for m in just_in_time.replay] == [4, 5, 6]
    other_epoch = subscribe(channel, "e", RecordingCarrier(), since=5, epoch="old")
    assert other_epoch.gap is not None and other_epoch.gap.reason == "epoch"
    assert other_epoch.gap.epoch == channel.epoch
    future = subscribe(channel, "e", RecordingCarrier(), since=99)
    assert future.gap is not None and future.gap.reason == "unknown"


def test_a_gapped_subscription_still_gets_live_messages() -> None:
    channel = MemoryChannel("news", history_size=0)
    success_result_of(channel.publish("e", 1))
    carrier = RecordingCarrier()
    assert subscribe(channel, "e", carrier, since=0).gap is not None
    success_result_of(channel.publish("e", 2))
    assert carrier.events == [("e", 2)]


def test_a_new_channel_object_has_a_new_epoch() -> None:
    assert MemoryChannel("x").epoch != MemoryChannel("x").epoch


def test_unsubscribe_and_closed_carriers_are_dropped_everywhere() -> None:
    news, sports = MemoryChannel("news"), MemoryChannel("sports")
    carrier = RecordingCarrier()
    subscribe(news, "a", carrier)
    subscribe(news, "b", carrier)
    subscribe(sports, "*", carrier)
    assert news.unsubscribe("a", carrier) is True
    assert news.unsubscribe("a", carrier) is False
    success_result_of(news.publish("a", 1))
    assert carrier.messages == []
    carrier.close()
    assert news.carrier_count == 0 and sports.carrier_count == 0
    assert news.subscribers("b") == [] and sports.subscribers("*") == []


def test_message_json_is_built_once_and_matches_as_dict() -> None:
    import json

    channel = MemoryChannel("news")
    message: Message = success_result_of(channel.publish("e", {"text": "héllo", "n": [1, 2]}))
    assert json.loads(message.json) == message.as_dict()
    assert message.json is message.json
    calls: list[Message] = []
    assert message.encoded("k", lambda m: calls.append(m) or "x") == "x"
    assert message.encoded("k", lambda m: calls.append(m) or "y") == "x"
    assert calls == [message]
    assert "news#1" in repr(message)


def test_a_carrier_closed_before_its_subscription_lands_is_not_kept() -> None:
    # A Redis resume subscribes after its reads: the client may be gone by then.
    channel = MemoryChannel("news")
    carrier = RecordingCarrier()
    carrier.close()
    subscribe(channel, "e", carrier)
    assert channel.carrier_count == 0 and channel.subscribers("e") == []


def test_subscribe_unsubscribe_loops_do_not_grow_the_carrier() -> None:
    # Found in review: every re-subscribe registered one more close callback.
    channel = MemoryChannel("news")
    carrier = RecordingCarrier()
    for _ in range(100):
        subscribe(channel, "e", carrier)
        channel.unsubscribe("e", carrier)
    assert len(carrier._close_callbacks) == 1
    carrier.close()
    assert channel.carrier_count == 0
