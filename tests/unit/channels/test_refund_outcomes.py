"""``refund_outcome_of``, the one map from a partial refund's wire answer to its outcome
(SPEC 6): only a refund the provider states, or a refusal it names, is final; everything
else is UNKNOWN, to be asked again under the same refund_reference."""

from __future__ import annotations

import orjson
import pytest

from channels import RefundOutcome, RefundResult
from channels.http import Op, WireAnswer, refund_outcome_of

R = RefundOutcome
REFUSALS = ["not_captured", "already_refunded", "disputed", "refund_exceeds_amount", "refund_reference_reused"]


def answer(status: int | None, body: bytes | dict = b"", **kw) -> WireAnswer:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return WireAnswer(Op.ISSUE_REFUND, status, raw, reference="r1", refund_reference="rf1", **kw)


def refund_body(status: str, **kw) -> dict:
    return {"refund_reference": "rf1", "status": status, "amount_minor": 300, **kw}


@pytest.mark.parametrize(("status", "outcome"), [("refunded", R.REFUNDED), ("pending", R.PENDING),
                                                  ("failed", R.FAILED)])
def test_a_stated_refund_is_its_status_with_its_amount(status, outcome):
    assert refund_outcome_of(answer(200, refund_body(status)), 12.5) == RefundResult(outcome, 300, latency_ms=12.5)


@pytest.mark.parametrize("code", REFUSALS)
@pytest.mark.parametrize("status", [409, 422])
def test_a_named_refusal_is_failed_with_its_code(status, code):
    res = refund_outcome_of(answer(status, {"error": {"code": code, "message": "because"}}))
    assert (res.outcome, res.code, res.amount_minor) == (R.FAILED, code, None)
    assert res.error == f"issue_refund refused ({status} {code}): because"


def test_a_refusals_message_is_cut_short():
    res = refund_outcome_of(answer(409, {"error": {"code": "disputed", "message": "x" * 10_000}}))
    assert res.outcome is R.FAILED and len(res.error) < 300


@pytest.mark.parametrize("wire", [
    answer(200, refund_body("refunded", refund_reference="rf2")),
    answer(200, refund_body("refunded", refund_reference=None)),
    answer(200, {"reference": "r1", "status": "refunded"}),
    answer(200, refund_body("captured")),
    answer(200, refund_body(["refunded"])),  # type: ignore[arg-type]
    answer(200, b"not json"),
    answer(200, b"[1]"),
    answer(201, refund_body("refunded")),
    answer(404, {"error": {"code": "not_found"}}),
    answer(409, {"error": {"code": "conflict"}}),
    answer(409, {"error": "refund_exceeds_amount"}),
    answer(409, refund_body("failed")),
    answer(422, {"error": {"code": "invalid_field"}}),
    answer(401, b""),
    answer(429, b""),
    answer(503, {"error": {"code": "disputed"}}),
    answer(500, b""),
    answer(None, sent=True, error="timeout: TimeoutError"),
    answer(None, sent=False, error="connect failed: ClientConnectorError"),
], ids=lambda w: f"{w.http_status}:{w.raw[:40]!r}")
def test_everything_else_is_unknown(wire):
    res = refund_outcome_of(wire)
    assert (res.outcome, res.code) == (R.UNKNOWN, None) and res.error


def test_a_stated_amount_that_is_not_an_integer_is_not_carried():
    res = refund_outcome_of(answer(200, refund_body("refunded", amount_minor="300")))
    assert (res.outcome, res.amount_minor) == (R.REFUNDED, None)
