"""Strict decoding and validation of telemetry (pure, no event loop)."""

from __future__ import annotations

import pytest

from fieldlink.core import codec
from fieldlink.core.codec import Limits, decode_json, parse_status, parse_timestamp, validate_record
from fieldlink.core.errors import ValidationError

NOW = 1_764_000_000_000  # 2025-11-24T16:00:00Z


def code_of(fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as info:
        fn(*args, **kwargs)
    return info.value.code


@pytest.mark.parametrize("payload", [
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":1e999999}', b"\xef\xbb\xbf{}",
    b'{"a":"\xff"}', b'{"a":"\\ud800"}', b'{"a":1}garbage', b'{"a":', b"", b"[" * 60_000,
])
def test_bad_json_is_invalid_json(payload: bytes) -> None:
    assert code_of(decode_json, payload) == "invalid_json"


def test_huge_integer_is_not_a_crash() -> None:
    # orjson turns a 5,000-digit integer into a float overflow error or a float: never a crash.
    try:
        value = decode_json(b'{"a":' + b"9" * 5000 + b"}")
    except ValidationError as exc:
        assert exc.code == "invalid_json"
    else:
        assert code_of(validate_record, value, now_ms=NOW, device_id="d") == "non_finite_number"


def test_payload_size_limit() -> None:
    limits = Limits(max_payload_bytes=100)
    assert code_of(decode_json, b'{"a":"' + b"x" * 200 + b'"}', limits) == "payload_too_large"


def test_duplicate_keys_keep_the_last() -> None:
    assert decode_json(b'{"a":1,"a":2}') == {"a": 2}


@pytest.mark.parametrize("device_id", ["n1", "a" * 128, "dev.1:x_y-z", "A9"])
def test_valid_device_ids(device_id: str) -> None:
    assert validate_record({"v": 1}, now_ms=NOW, device_id=device_id).device_id == device_id


@pytest.mark.parametrize("device_id", ["", "a" * 129, "has space", "slash/x", "x#", "ü", "n\x00", 5, None])
def test_invalid_device_ids(device_id: object) -> None:
    record = {"v": 1, "device_id": device_id}
    assert code_of(validate_record, record, now_ms=NOW) == "invalid_device_id"


def test_reserved_keys_are_lifted_out_and_the_rest_are_metrics() -> None:
    r = validate_record({"ts": NOW - 1000, "seq": 5, "meta": {"fw": "1"}, "kind": "gas", "t": 1.5,
                         "s": "x", "b": True, "n": None, "o": {"x": [1, 2]}}, now_ms=NOW, device_id="d")
    assert (r.ts_ms, r.seq, r.meta, r.kind) == (NOW - 1000, 5, {"fw": "1"}, "gas")
    assert r.metrics == {"t": 1.5, "s": "x", "b": True, "n": None, "o": {"x": [1, 2]}}
    assert r.to_event_data() == {"device_id": "d", "ts": NOW - 1000, "seq": 5, **r.metrics}


def test_missing_ts_means_now() -> None:
    assert validate_record({"v": 1}, now_ms=NOW, device_id="d").ts_ms == NOW


@pytest.mark.parametrize(("obj", "code", "path"), [
    ([1], "not_an_object", "$"),
    ("x", "not_an_object", "$"),
    ({}, "no_metrics", "$"),
    ({"ts": NOW}, "no_metrics", "$"),
    ({"v": float("inf")}, "non_finite_number", "$.v"),
    ({"v": float("nan")}, "non_finite_number", "$.v"),
    ({"o": {"v": float("inf")}}, "non_finite_number", "$.o.v"),
    ({"v": "x" * 1025}, "invalid_value", "$.v"),
    ({"a": {"b": {"c": {"d": {"e": 1}}}}}, "too_deep", "$.a.b.c.d"),
    ({f"k{i}": i for i in range(257)}, "too_many_keys", "$"),
    ({"v": list(range(257))}, "too_many_keys", "$.v"),
    ({"": 1}, "invalid_key", "$"),
    ({"k" * 129: 1}, "invalid_key", "$"),
    ({"a\x00b": 1}, "invalid_key", "$"),
    ({"'; DROP TABLE telemetry;--": 1}, "invalid_key", "$"),
    ({"-x": 1}, "invalid_key", "$"),
    ({"seq": -1, "v": 1}, "invalid_seq", "$.seq"),
    ({"seq": 1.5, "v": 1}, "invalid_seq", "$.seq"),
    ({"seq": True, "v": 1}, "invalid_seq", "$.seq"),
    ({"seq": 2**63, "v": 1}, "invalid_seq", "$.seq"),
    ({"meta": [1], "v": 1}, "invalid_meta", "$.meta"),
    ({"kind": "Bad Kind", "v": 1}, "invalid_value", "$.kind"),
])
def test_invalid_records(obj: object, code: str, path: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_record(obj, now_ms=NOW, device_id="d")
    assert (info.value.code, info.value.path) == (code, path)
    assert info.value.message  # a clear message for the user


def test_injection_strings_are_values_not_code() -> None:
    r = validate_record({"note": "'; DROP TABLE telemetry;--", "html": "<script>x</script>"},
                        now_ms=NOW, device_id="d")
    assert r.metrics["note"] == "'; DROP TABLE telemetry;--"


@pytest.mark.parametrize(("value", "expected"), [
    (1_764_000_000, 1_764_000_000_000),          # epoch seconds
    (1_764_000_000.5, 1_764_000_000_500),
    (1_764_000_000_123, 1_764_000_000_123),      # epoch ms
    ("2025-11-24T16:00:00Z", NOW),
    ("2025-11-24T16:00:00", NOW),                # no zone: UTC
    ("2025-11-24T18:00:00+02:00", NOW),
])
def test_timestamps(value: object, expected: int) -> None:
    assert parse_timestamp(value, NOW + 1000) == expected


@pytest.mark.parametrize("value", [-5, 0, 946_684_799, "1999-12-31T23:59:59Z", NOW + 5 * 60_000 + 1,
                                   "yesterday", True, None, [1], "", "x" * 65])
def test_bad_timestamps(value: object) -> None:
    assert code_of(parse_timestamp, value, NOW) == "invalid_timestamp"


def test_clock_skew_of_five_minutes_is_accepted() -> None:
    assert parse_timestamp(NOW + 5 * 60_000, NOW) == NOW + 5 * 60_000


@pytest.mark.parametrize(("payload", "status"), [
    (b"online", "online"), (b"offline", "offline"), (b" OFFLINE\n", "offline"),
    (b'{"status":"online"}', "online"), (b'"offline"', "offline"), (b"1", "online"), (b"0", "offline"),
])
def test_status_payloads(payload: bytes, status: str) -> None:
    assert parse_status(payload) == status


@pytest.mark.parametrize("payload", [b"sideways", b'{"status":5}', b"{bad", b"\xff\xfe", b"[1]",
                                     b"x" * 2000])
def test_bad_status_payloads(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_status(payload)


def test_key_memo_does_not_admit_invalid_keys() -> None:
    validate_record({"ok_key": 1}, now_ms=NOW, device_id="d")
    assert "ok_key" in codec._VALID_KEYS
    assert code_of(validate_record, {"bad key": 1}, now_ms=NOW, device_id="d") == "invalid_key"
    assert "bad key" not in codec._VALID_KEYS
