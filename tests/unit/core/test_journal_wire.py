"""What the journal client sends the writer process comes back as the same objects:
every field of every model type, the empty and the None ones too."""

from __future__ import annotations

import orjson
import pytest

from orchestrator.journal import _wire
from orchestrator.model import Attempt, AttemptState, Credit, FirstRecharge, Notice, Recharge, RechargeStatus, \
    Settlement, Step, TrailEntry

AT = 1796157391.9159791  # floats must survive exactly: the audit chain hashes them


def _attempt(**kw: object) -> Attempt:
    base = dict(reference="rc_1.1", recharge_id="rc_1", seq=1, channel="alipay_direct", state=AttemptState.UNKNOWN,
                created_at=AT, updated_at=AT + 0.5, provider_ref="p-1", decline_code="do_not_honor",
                error="timeout: TimeoutError", latency_ms=28.125)
    return Attempt(**{**base, **kw})  # type: ignore[arg-type]


def _recharge(**kw: object) -> Recharge:
    base = dict(id="rc_1", client="front", idempotency_key="k-\u00e9", fingerprint="f" * 64, user_id="u1",
                amount_minor=8500, currency="CNY", country="CN", method="ewallet",
                instrument={"account_number_masked": "411111******1111"}, metadata={"order": "x", "n": 1.5, "b": None},
                coins=835, bonus_coins=125, status=RechargeStatus.PENDING, created_at=AT, updated_at=AT,
                deadline_at=AT + 15, config_version="v1", channel="wechat_direct", decline_code=None,
                reason="awaiting_provider", attempts=[_attempt(), _attempt(reference="rc_1.2", seq=2)])
    return Recharge(**{**base, **kw})  # type: ignore[arg-type]


def _roundtrip_request(op: str, args: tuple[object, ...]) -> tuple[object, ...]:
    rid, op2, sent = orjson.loads(_wire.encode_request(7, op, args))
    assert (rid, op2) == (7, op)
    return _wire.decode_args(op, sent)


@pytest.mark.parametrize("rec", [_recharge(), _recharge(metadata=None, attempts=[], channel=None, reason=None),
                                 _recharge(instant=True, settlement=Settlement.FAILED)])
def test_create_round_trips(rec):
    entry = TrailEntry(rec.id, AT, "created", "processing", detail={"rate": "0.1404", "promotions": []})
    started = (_attempt(state=AttemptState.STARTED), TrailEntry(rec.id, AT, "attempt_started", "processing",
                                                                 "rc_1.1", "alipay_direct"))
    first = FirstRecharge(0, {"bonus_coins": 0, "promotions": []})
    notices = (Notice("evt_1", "front", rec.id, "recharge.blocked", AT, '{"id": "evt_1"}'),)
    assert _roundtrip_request("create", (rec, entry, ("local", AT + 10), first, started, notices)) == (
        rec, entry, ("local", AT + 10), first, started, notices)
    assert _roundtrip_request("create", (rec, entry, None, None, None, ())) == (rec, entry, None, None, None, ())


@pytest.mark.parametrize("step", [
    Step("rc_1", AT, status=RechargeStatus.SUCCEEDED,
         expect_status=frozenset({RechargeStatus.PROCESSING, RechargeStatus.PENDING}), channel="alipay_direct",
         attempt=_attempt(state=AttemptState.CAPTURED), expect_attempt=frozenset({AttemptState.STARTED}),
         credit=Credit("rc_1", "u1", 960, AT), event=("alipay_direct", "evt_1"),
         trail=(TrailEntry("rc_1", AT, "attempt_captured", "succeeded", "rc_1.1", "alipay_direct", {"x": [1, 2]}),
                TrailEntry("rc_1", AT, "credited", "succeeded"))),
    Step("rc_1", AT),
    Step("rc_1", AT, attempt=_attempt(), attempt_is_new=True, decline_code="insufficient_funds", reason="r"),
    Step("rc_1", AT, attempt=_attempt(state=AttemptState.VOIDED, late_check_at=AT + 120), follow_up=AT + 120,
         lease=("w0", 7)),
    Step("rc_1", AT, attempt=_attempt(state=AttemptState.REFUNDED), follow_up=None),
    Step("rc_1", AT, status=RechargeStatus.FAILED, notices=(
        Notice("evt_2", "front", "rc_1", "recharge.failed", AT, '{"data": {"status": "failed"}}'),)),
    Step("rc_1", AT, attempt=_attempt(state=AttemptState.DECLINED), settlement=Settlement.FAILED,
         clawback=Credit("rc_1", "u1", 960, AT, "cn")),
])
def test_apply_round_trips(step):
    assert _roundtrip_request("apply", (step,)) == (step,)


def test_plain_ops_and_answers_round_trip():
    held = {"rc_1": 1, "rc_2": 3}
    assert _roundtrip_request("renew", ("owner", held, 10.0, AT)) == ("owner", held, 10.0, AT)
    recs = [_recharge(), _recharge(id="rc_2", attempts=[], instant=True, settlement=Settlement.PENDING)]
    claimed = [(recs[0], 1), (recs[1], 4)]
    sent = orjson.loads(orjson.dumps(_wire.encode_value("claim", claimed)))
    assert _wire.decode_value("claim", sent) == claimed
    sent = orjson.loads(orjson.dumps(_wire.encode_value("claim_follow_ups", recs)))
    assert _wire.decode_value("claim_follow_ups", sent) == recs
    assert _wire.decode_value("create", orjson.loads(orjson.dumps(_wire.encode_value("create", (None, True))))) == [
        None, True]


def test_frames_split_a_stream_at_frame_boundaries():
    stream = bytearray(_wire.pack(b"[1]") + _wire.pack(b"[2,3]") + _wire.pack(b"[4]")[:5])
    assert list(_wire.frames(stream)) == [b"[1]", b"[2,3]"]
    assert bytes(stream) == _wire.pack(b"[4]")[:5]
    stream += _wire.pack(b"[4]")[5:]
    assert list(_wire.frames(stream)) == [b"[4]"] and stream == bytearray()


def test_an_oversized_frame_is_refused():
    with pytest.raises(ValueError, match="journal frame"):
        list(_wire.frames(bytearray(_wire.HEADER.pack(_wire.MAX_FRAME + 1))))
