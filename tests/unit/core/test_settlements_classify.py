"""Settlement reconciliation's classification (SPEC 21), one rule each: a report item and
what the journal holds under its reference in, a discrepancy (or agreement) out."""

from __future__ import annotations

import datetime as dt

import pytest

from config import ChannelConfig
from orchestrator import settlements
from orchestrator.journal import MatchRow
from orchestrator.model import DiscrepancyKind as K

CFG = ChannelConfig(name="a", kind="direct_api", base_url="http://127.0.0.1:1/a", webhook_secret="whsec_test_1234",
                    currencies=["CNY"], countries=["CN"], methods=["ewallet"], fee={"fixed_minor": 10, "percent": 0.6})


def row(state: str | None = "captured", rec_status: str | None = "succeeded", *, amount: int = 8500,
        reported: int = 8500, fee: int = 61, status: str = "captured", channel: str = "a", currency: str = "CNY",
        settlement: str | None = None, refunded: int = 0) -> MatchRow:
    known = state is not None
    return MatchRow("rc_1.1", "pr_1", status, reported, currency, fee, "2026-12-03T10:00:00Z",
                    channel if known else None, state, "rc_1" if known else None, rec_status if known else None,
                    channel if known else None, amount if known else None, "CNY" if known else None, settlement,
                    refunded if known else None)


def test_the_fee_is_fixed_plus_percent_rounded_half_up():
    assert settlements.expected_fee(8500, CFG) == 10 + 51
    assert settlements.expected_fee(250, CFG) == 10 + 2  # 1.5 -> 2


def test_a_kept_capture_settled_as_journaled_agrees():
    assert settlements.classify(row(), CFG) is None


@pytest.mark.parametrize(("match", "kind", "status"), [
    (row(None), K.MISSING_IN_JOURNAL, "open"),
    (row(channel="b"), K.MISSING_IN_JOURNAL, "open"),
    (row("voided", "failed"), K.ORPHAN_CAPTURE, "resolving"),
    (row("declined", "declined"), K.ORPHAN_CAPTURE, "resolving"),
    (row("captured", "pending"), K.ORPHAN_CAPTURE, "open"),
    (row("unknown", "pending"), K.STATUS_MISMATCH, "resolving"),
    (row("pending", "succeeded", settlement="pending"), K.STATUS_MISMATCH, "resolving"),
    (row(reported=8600), K.AMOUNT_MISMATCH, "open"),
    (row(currency="PHP"), K.AMOUNT_MISMATCH, "open"),
    (row(fee=99), K.FEE_MISMATCH, "open"),
    (row("refunded", "failed", status="captured"), K.STATUS_MISMATCH, "open"),
    (row(status="refunded"), K.STATUS_MISMATCH, "open"),
    (row(status="refunded", refunded=4000), K.STATUS_MISMATCH, "open"),
    (row(status="chargeback"), K.STATUS_MISMATCH, "open"),
])
def test_each_difference_has_its_class_and_evidence(match, kind, status):
    d = settlements.classify(match, CFG)
    assert (d.kind, d.status) == (kind, status)
    assert d.reported["amount_minor"] == match.amount_minor and d.reference == "rc_1.1"


def test_a_kept_capture_reported_refunded_agrees_when_our_refunds_cover_it():
    assert settlements.classify(row(status="refunded", refunded=8500), CFG) is None


def test_a_capture_being_refunded_or_refunded_as_reported_agrees():
    assert settlements.classify(row("refund_requested", "failed"), CFG) is None
    assert settlements.classify(row("refunded", "failed", status="refunded"), CFG) is None


def test_amounts_are_what_is_off():
    assert settlements.classify(row(reported=8600), CFG).amount_minor == 100
    assert settlements.classify(row(fee=70), CFG).amount_minor == 9
    assert settlements.classify(row(fee=62), CFG, fee_tolerance_minor=1) is None


def test_the_schedule_runs_at_its_time_of_day_utc():
    at = dt.datetime(2026, 12, 3, 1, 0, tzinfo=dt.UTC).timestamp()
    assert settlements._next_at(at, "02:00") == at + 3600
    assert settlements._next_at(at + 3600, "02:00") == at + 3600
    assert settlements._next_at(at + 3601, "02:00") == at + 3600 + 86_400
