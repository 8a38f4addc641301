"""Topic matching, the built-in scheme and custom routes (pure)."""

from __future__ import annotations

import pytest

from fieldlink.core.errors import ValidationError
from fieldlink.core.topics import (
    FieldMapping,
    Route,
    TopicKind,
    TopicScheme,
    route_from_config,
    topic_matches,
    validate_filter,
)


@pytest.mark.parametrize(("flt", "topic", "expected"), [
    ("a/+/c", "a/b/c", True), ("a/+/c", "a/b/d", False), ("a/#", "a/b/c", True),
    ("a/#", "a", True), ("#", "a/b", True), ("+/b", "a/b", True), ("a/+", "a/b/c", False),
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("a/b", "a/b", True), ("a/b", "a/b/", False),
])
def test_topic_matches(flt: str, topic: str, expected: bool) -> None:
    assert topic_matches(flt, topic) is expected


@pytest.mark.parametrize("flt", ["a/#/b", "a/b#", "a+/b", "", "a\x00"])
def test_invalid_filters(flt: str) -> None:
    with pytest.raises(ValueError):
        validate_filter(flt)


def test_builtin_topics() -> None:
    scheme = TopicScheme("edge")
    assert scheme.telemetry("n1") == "edge/n1/telemetry"
    assert scheme.control("n1") == "edge/n1/control"
    assert scheme.match("edge/n1/telemetry").kind is TopicKind.TELEMETRY  # type: ignore[union-attr]
    status = scheme.match("edge/n1/status")
    assert status is not None and (status.kind, status.device_id) == (TopicKind.STATUS, "n1")
    assert scheme.match("edge/n1/other") is None
    assert scheme.match("other/n1/telemetry") is None
    assert scheme.match("edge/a/b/telemetry") is None
    assert scheme.ingest_filters() == ["edge/+/telemetry", "edge/+/status", "edge/+/ack"]


def test_multi_level_prefix() -> None:
    scheme = TopicScheme("site/7")
    match = scheme.match("site/7/n1/telemetry")
    assert match is not None and match.device_id == "n1"
    with pytest.raises(ValueError):
        TopicScheme("bad/#")


def test_mapping_order_is_drop_rename_scale() -> None:
    mapping = FieldMapping(drop=("crc", "t"), rename={"t_raw": "t"}, scale={"t": 0.1})
    assert mapping.apply({"crc": "x", "t": 99, "t_raw": 215}) == {"t": 21.5}


def test_scale_ignores_non_numbers() -> None:
    assert FieldMapping(scale={"a": 2.0}).apply({"a": "x", "b": True}) == {"a": "x", "b": True}


def test_route_id_from_payload_and_topic() -> None:
    by_payload = Route("p", "vendor/data", "payload:serial")
    assert by_payload.extract("vendor/data", {"serial": "S1", "v": 1}) == ("S1", {"v": 1})
    assert by_payload.extract("vendor/data", {"serial": 42, "v": 1}) == ("42", {"v": 1})
    by_topic = Route("t", "plant/+/sensor", "topic:1")
    assert by_topic.extract("plant/p7/sensor", {"v": 1}) == ("p7", {"v": 1})
    with pytest.raises(ValidationError) as info:
        by_payload.extract("vendor/data", {"v": 1})
    assert info.value.code == "invalid_device_id"
    with pytest.raises(ValidationError):
        by_payload.extract("vendor/data", [1])


@pytest.mark.parametrize("source", ["topic:x", "payload:", "header:1", "topic"])
def test_route_rejects_bad_id_source(source: str) -> None:
    with pytest.raises(ValueError):
        Route("r", "a/b", source)


def test_routes_exact_and_wildcard_dispatch() -> None:
    exact = Route("e", "vendor/data", "payload:id")
    wild = Route("w", "plant/+/sensor", "topic:1")
    scheme = TopicScheme("edge", (exact, wild))
    assert scheme.match("vendor/data").route is exact  # type: ignore[union-attr]
    assert scheme.match("plant/9/sensor").route is wild  # type: ignore[union-attr]
    assert scheme.match("plant/9/other") is None
    assert "vendor/data" in scheme.ingest_filters() and "plant/+/sensor" in scheme.ingest_filters()


def test_route_from_config() -> None:
    route = route_from_config("r0", {"topic": "v/d", "device_id_from": "payload:sn", "kind": "gas",
                                     "mapping": {"drop": ["x"], "rename": {"a": "b"}, "scale": {"b": 2}}})
    assert route.mapping == FieldMapping(("x",), {"a": "b"}, {"b": 2.0})
    assert route.name == "r0" and route.kind == "gas"
