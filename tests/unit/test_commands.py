"""The command lifecycle table and request/ack parsing (pure)."""

from __future__ import annotations

import pytest

from fieldlink.core.commands import (
    NOT_RESPONDING,
    TERMINAL,
    TRANSITIONS,
    Ack,
    Command,
    IllegalTransition,
    Status,
    apply_ack,
    control_message,
    expire,
    new_command,
    parse_ack,
    parse_request,
    transition,
)
from fieldlink.core.errors import ValidationError

NOW = 1_764_000_000_000


def pending(**kw: object) -> Command:
    request = parse_request({"device": "d1", "action": "charge", "params": {"setpoint_kw": 2},
                             **kw})
    return new_command(request, "c1", NOW)


def test_every_transition_in_the_table_and_nothing_else() -> None:
    for source in Status:
        for target in Status:
            command = Command("c", "d", "a", {}, 1000, NOW, NOW + 1000, status=source)
            if target in TRANSITIONS[source]:
                moved = transition(command, target, NOW + 5)
                assert moved.status is target and moved.stages[str(target)] == NOW + 5
            else:
                with pytest.raises(IllegalTransition):
                    transition(command, target, NOW + 5)
    assert TERMINAL == {Status.ACKED, Status.FAILED, Status.TIMEOUT, Status.REJECTED,
                        Status.EXPIRED}


def test_ack_and_nack_from_sent() -> None:
    sent = transition(pending(), Status.SENT, NOW + 1)
    acked = apply_ack(sent, Ack("c1", True, {"mode": "charge"}), NOW + 2)
    assert acked.status is Status.ACKED and acked.result == {"mode": "charge"}
    failed = apply_ack(sent, Ack("c1", False, error="too hot"), NOW + 2)
    assert (failed.status, failed.reason, failed.error) == (Status.FAILED, "device_error",
                                                            "too hot")


def test_an_ack_that_overtakes_the_sent_mark_still_lands() -> None:
    acked = apply_ack(pending(), Ack("c1", True), NOW + 2)
    assert acked.status is Status.ACKED and set(acked.stages) == {"pending", "sent", "acked"}


def test_late_ack_is_recorded_and_changes_nothing() -> None:
    timed_out = expire(transition(pending(), Status.SENT, NOW + 1), NOW + 10_000)
    assert timed_out.status is Status.TIMEOUT and timed_out.error == NOT_RESPONDING
    late = apply_ack(timed_out, Ack("c1", True, {"x": 1}), NOW + 12_000)
    assert late.status is Status.TIMEOUT and late.stages == timed_out.stages
    assert late.late_ack == {"ts": NOW + 12_000, "ok": True, "result": {"x": 1}}


def test_deadline_expires_what_was_never_sent() -> None:
    expired = expire(pending(), NOW + 10_000)
    assert expired.status is Status.EXPIRED and expired.reason == "expired"


def test_defaults_and_deadlines() -> None:
    command = pending()
    assert command.timeout_ms == 10_000 and command.deadline_ms == NOW + 10_000
    queued = pending(queue=True, queue_ms=60_000, timeout_ms=2000)
    assert queued.deadline_ms == NOW + 62_000
    assert control_message(command) == {"id": "c1", "action": "charge",
                                        "params": {"setpoint_kw": 2},
                                        "deadline": NOW + 10_000}
    assert Command.from_dict(command.to_dict()) == command


@pytest.mark.parametrize(("body", "code"), [
    ([], "bad_command"),
    ({"device": "d1", "action": "a", "id": "has space"}, "invalid_command_id"),
    ({"device": "bad/id", "action": "a"}, "invalid_device_id"),
    ({"device": "d1"}, "invalid_action"),
    ({"device": "d1", "action": "9lives"}, "invalid_action"),
    ({"device": "d1", "action": "a", "params": [1]}, "invalid_params"),
    ({"device": "d1", "action": "a", "params": {"x": float("inf")}}, "non_finite_number"),
    ({"device": "d1", "action": "a", "timeout_ms": 99}, "invalid_timeout"),
    ({"device": "d1", "action": "a", "timeout_ms": 300_001}, "invalid_timeout"),
    ({"device": "d1", "action": "a", "timeout_ms": True}, "invalid_timeout"),
    ({"device": "d1", "action": "a", "queue": "yes"}, "invalid_queue"),
])
def test_bad_requests_have_stable_codes(body: object, code: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_request(body)
    assert caught.value.code == code


@pytest.mark.parametrize(("body", "code"), [
    ("ok", "bad_ack"),
    ({"ok": True}, "invalid_command_id"),
    ({"id": "c1", "ok": "yes"}, "invalid_ok"),
])
def test_bad_acks(body: object, code: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_ack(body)
    assert caught.value.code == code


def test_ack_error_text_is_bounded() -> None:
    ack = parse_ack({"id": "c1", "ok": False, "error": "x" * 5000})
    assert ack.error is not None and len(ack.error) == 1024
