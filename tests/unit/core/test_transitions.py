"""The state machine's rules (SPEC 7), one case each, with no I/O: a recharge and an input
in, a Step (or nothing) out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from channels import AttemptOutcome as O
from channels import ChannelResult
from orchestrator import transitions as tr
from orchestrator.model import KEEP, Attempt, AttemptState as S, Recharge, RechargeStatus as R, Settlement
from orchestrator.transitions import Move, RunSettings, Source

NOW = 1_800_000_100.0
RULES = RunSettings(version="t", max_attempts=3, deadline_s=15, soft_decline_codes=frozenset({"soft"}),
                    inquiry_attempts=3, inquiry_initial_backoff_s=0.1, inquiry_max_backoff_s=1,
                    reconcile_interval_s=5, late_capture_check_s=120)


def att(seq: int = 1, state: S = S.STARTED, channel: str = "a", **kw: object) -> Attempt:
    return Attempt(f"rc_1.{seq}", "rc_1", seq, channel, state, NOW - 10, NOW - 10, **kw)


def rec(*attempts: Attempt, status: R = R.PROCESSING, reason: str | None = None) -> Recharge:
    return Recharge(id="rc_1", client="c", idempotency_key="k", fingerprint="f", user_id="u1", amount_minor=8500,
                    currency="CNY", country="CN", method="ewallet", instrument={"token": "t"}, metadata=None,
                    coins=835, bonus_coins=125, status=status, created_at=NOW - 10, updated_at=NOW - 10,
                    deadline_at=NOW + 5, config_version="v", reason=reason, attempts=list(attempts))


def answer(outcome: O, **kw: object) -> ChannelResult:
    return ChannelResult(outcome, **kw)


def applied(r: Recharge, step: tr.Step | None) -> Recharge:
    assert step is not None and tr.admits(r, step)
    tr.reduce(r, step)
    return r


# -- captures -------------------------------------------------------------------------------


def test_a_capture_succeeds_and_credits_coins_and_bonus_once():
    r = rec(att())
    step = tr.on_answer(r, r.attempts[0], answer(O.CAPTURED, provider_ref="p", amount_minor=8500, currency="CNY"),
                        NOW, RULES, Source.ATTEMPT)
    assert step.status is R.SUCCEEDED and step.credit.coins == 960 and step.expect_status == tr.NONTERMINAL
    assert step.attempt.state is S.CAPTURED and step.expect_attempt == {S.STARTED}
    assert step.follow_up is KEEP, "a plain recharge writes no follow-up"
    assert [e.event for e in step.trail] == ["attempt_captured", "credited"]
    assert tr.next_move(applied(r, step), NOW, RULES).move is Move.STOP


@pytest.mark.parametrize("stated", [{"amount_minor": 8600}, {"currency": "PHP"}, {"amount_minor": 1, "currency": "X"}])
def test_a_capture_of_another_amount_parks_the_recharge_and_credits_nothing(stated):
    r = rec(att())
    step = tr.on_answer(r, r.attempts[0], answer(O.CAPTURED, **stated), NOW, RULES, Source.ATTEMPT)
    assert step.credit is None and step.status is R.PENDING and step.reason == tr.AMOUNT_MISMATCH
    assert step.attempt.state is S.CAPTURED, "the money was taken: nothing else may be tried"
    r = applied(r, step)
    assert tr.next_move(r, NOW + 3600, RULES).move is Move.STOP


def test_a_capture_stating_no_amount_is_taken_at_its_word():
    r = rec(att())
    assert tr.on_answer(r, r.attempts[0], answer(O.CAPTURED), NOW, RULES, Source.ATTEMPT).credit is not None


def test_a_capture_on_a_finished_recharge_is_refunded_at_once():
    for status in (R.FAILED, R.DECLINED, R.BLOCKED):
        r = rec(att(state=S.VOIDED, late_check_at=NOW + 100), status=status)
        step = tr.on_answer(r, r.attempts[0], answer(O.CAPTURED), NOW, RULES, Source.WEBHOOK, ("a", "e1"))
        assert step.attempt.state is S.REFUND_REQUESTED and step.credit is None and step.event == ("a", "e1")
        assert step.follow_up == NOW and step.attempt.late_check_at is None
        assert tr.next_move(applied(r, step), NOW, RULES).move is Move.REFUND


def test_a_second_capture_is_refunded_even_while_the_recharge_runs():
    r = rec(att(1, S.CAPTURED), att(2, S.UNKNOWN, "b"), status=R.PENDING, reason=tr.AMOUNT_MISMATCH)
    step = tr.on_answer(r, r.attempts[1], answer(O.CAPTURED), NOW, RULES, Source.INQUIRY)
    assert step.attempt.state is S.REFUND_REQUESTED


def test_a_late_capture_on_a_closed_attempt_of_a_running_recharge_is_kept_and_credited():
    r = rec(att(1, S.VOIDED, late_check_at=NOW), att(2, S.DECLINED, "b"))
    step = tr.on_answer(r, r.attempts[0], answer(O.CAPTURED), NOW, RULES, Source.LATE_CHECK)
    assert step.status is R.SUCCEEDED and step.credit is not None and step.attempt.late_check_at is None


def test_news_of_a_capture_already_known_changes_nothing():
    for state in (S.CAPTURED, S.REFUNDED):
        r = rec(att(state=state), status=R.SUCCEEDED)
        assert tr.on_answer(r, r.attempts[0], answer(O.CAPTURED), NOW, RULES, Source.INQUIRY) is None
    r = rec(att(state=S.CAPTURED), status=R.SUCCEEDED)
    ignored = tr.on_event(r, r.attempts[0], answer(O.PENDING), NOW, RULES, ("a", "old"))
    assert ignored.attempt is None and ignored.event == ("a", "old") and ignored.trail[0].event == "webhook_ignored"


# -- unknown outcomes: a 404 is no proof ----------------------------------------------------


def test_an_unknown_outcome_is_inquired_before_anything_else():
    r = rec(att())
    r = applied(r, tr.on_answer(r, r.attempts[0], answer(O.UNKNOWN), NOW, RULES, Source.ATTEMPT))
    assert r.attempts[0].state is S.UNKNOWN
    assert tr.next_move(r, NOW, RULES).move is Move.INQUIRE


@pytest.mark.parametrize("outcome", [O.UNKNOWN, O.NOT_PROCESSED])
def test_an_inquiry_that_finds_nothing_voids_and_never_fails_over(outcome):
    r = rec(att(state=S.UNKNOWN))
    nothing = answer(outcome, error="inquire answered 404")
    assert tr.after_inquiry(r, r.attempts[0], nothing, NOW, RULES, exhausted=False) is None
    step = tr.after_inquiry(r, r.attempts[0], nothing, NOW, RULES, exhausted=True)
    assert step.attempt.state is S.VOID_REQUESTED and step.status is None
    r = applied(r, step)
    assert tr.next_move(r, NOW, RULES).move is Move.VOID


def test_only_a_confirmed_void_lets_the_recharge_fail_over_and_schedules_a_late_check():
    r = rec(att(state=S.VOID_REQUESTED))
    assert tr.on_answer(r, r.attempts[0], answer(O.UNKNOWN), NOW, RULES, Source.VOID) is None
    assert tr.on_answer(r, r.attempts[0], answer(O.NOT_PROCESSED), NOW, RULES, Source.VOID) is None
    step = tr.on_answer(r, r.attempts[0], answer(O.VOIDED), NOW, RULES, Source.VOID)
    assert step.attempt.state is S.VOIDED and step.attempt.late_check_at == NOW + 120
    assert step.follow_up == NOW + 120
    r = applied(r, step)
    assert tr.next_move(r, NOW, RULES).move is Move.ATTEMPT


def test_a_void_answered_captured_is_a_capture():
    r = rec(att(state=S.VOID_REQUESTED))
    assert tr.on_answer(r, r.attempts[0], answer(O.CAPTURED), NOW, RULES, Source.VOID).credit is not None


def test_only_the_charges_own_refusal_proves_nothing_was_taken():
    r = rec(att())
    step = tr.on_answer(r, r.attempts[0], answer(O.NOT_PROCESSED), NOW, RULES, Source.ATTEMPT)
    assert step.attempt.state is S.NOT_PROCESSED and step.attempt.late_check_at is None
    r2 = rec(att(state=S.UNKNOWN))
    assert tr.on_answer(r2, r2.attempts[0], answer(O.NOT_PROCESSED), NOW, RULES, Source.INQUIRY) is None


# -- declines, pending, the deadline --------------------------------------------------------


def test_a_hard_decline_ends_the_recharge_and_a_soft_one_fails_over():
    r = rec(att())
    hard = tr.on_answer(r, r.attempts[0], answer(O.DECLINED, decline_code="stolen"), NOW, RULES, Source.ATTEMPT)
    assert hard.status is R.DECLINED and hard.decline_code == "stolen" and hard.reason == "hard_decline"
    soft = tr.on_answer(r, r.attempts[0], answer(O.DECLINED, decline_code="soft"), NOW, RULES, Source.ATTEMPT)
    assert soft.status is None and soft.attempt.state is S.DECLINED
    r = applied(r, soft)
    assert tr.next_move(r, NOW, RULES).move is Move.ATTEMPT
    gave_up = tr.give_up(r, "no_channel_available", NOW)
    assert gave_up.status is R.DECLINED and gave_up.decline_code == "soft"


def test_pending_is_polled_until_the_deadline_then_voided():
    r = rec(att())
    r = applied(r, tr.on_answer(r, r.attempts[0], answer(O.PENDING), NOW, RULES, Source.ATTEMPT))
    assert r.status is R.PENDING and r.reason == "awaiting_provider"
    assert tr.next_move(r, NOW, RULES).move is Move.INQUIRE
    late = tr.next_move(r, r.deadline_at, RULES)
    assert late.move is Move.WRITE and late.step.attempt.state is S.VOID_REQUESTED


def test_a_finished_recharge_with_an_attempt_left_open_settles_it():
    r = rec(att(1, S.PENDING, "a"), att(2, S.CAPTURED, "b"), status=R.SUCCEEDED)
    nxt = tr.next_move(r, NOW, RULES)
    assert nxt.move is Move.WRITE and nxt.step.attempt.reference == "rc_1.1"
    assert nxt.step.attempt.state is S.VOID_REQUESTED and nxt.step.follow_up is KEEP


def test_no_new_attempt_past_max_attempts_or_the_deadline():
    r = rec(att(1, S.NOT_PROCESSED), att(2, S.NOT_PROCESSED, "b"), att(3, S.NOT_PROCESSED, "c"))
    nxt = tr.next_move(r, NOW, RULES)
    assert nxt.step.status is R.FAILED and nxt.step.reason == "max_attempts_reached"
    nxt = tr.next_move(rec(), NOW + 60, RULES)
    assert nxt.step.status is R.FAILED and nxt.step.reason == "deadline_exceeded"


# -- refunds and late checks -----------------------------------------------------------------


def test_only_a_confirmed_refund_closes_a_refund():
    r = rec(att(state=S.REFUND_REQUESTED), status=R.FAILED)
    for outcome in (O.UNKNOWN, O.PENDING, O.CAPTURED, O.NOT_PROCESSED):
        assert tr.on_answer(r, r.attempts[0], answer(outcome, error="404"), NOW, RULES, Source.REFUND) is None
    step = tr.on_answer(r, r.attempts[0], answer(O.REFUNDED), NOW, RULES, Source.REFUND)
    assert step.attempt.state is S.REFUNDED and step.follow_up is None


def test_a_late_check_runs_once_the_recharge_is_finished_and_clears_when_it_finds_nothing():
    r = rec(att(1, S.VOIDED, late_check_at=NOW), att(2, S.DECLINED, "b", decline_code="stolen"), status=R.DECLINED)
    assert tr.next_move(r, NOW - 1, RULES).move is Move.STOP
    assert tr.next_move(r, NOW, RULES).move is Move.LATE_CHECK
    assert tr.on_answer(r, r.attempts[0], answer(O.UNKNOWN), NOW, RULES, Source.LATE_CHECK) is None
    step = tr.on_answer(r, r.attempts[0], answer(O.VOIDED), NOW, RULES, Source.LATE_CHECK)
    assert step.attempt.state is S.VOIDED and step.attempt.late_check_at is None and step.follow_up is None


def test_a_late_check_waits_out_the_clock_skew_another_instance_may_have():
    # Closed by an instance whose clock is 30 s behind, checked by one whose clock is
    # right: the check still comes late_capture_check_s after the close, in true time.
    skewed = replace(RULES, clock_skew_s=30)
    closer_now = NOW - 30
    r = rec(att(state=S.VOID_REQUESTED), status=R.FAILED)
    step = tr.on_answer(r, r.attempts[0], answer(O.VOIDED), closer_now, skewed, Source.VOID)
    assert step.attempt.late_check_at == closer_now + 120 + 30
    r = applied(r, step)
    true_close = NOW
    assert tr.next_move(r, true_close + 119, skewed).move is Move.STOP
    assert tr.next_move(r, true_close + 120, skewed).move is Move.LATE_CHECK


# -- the reducer ----------------------------------------------------------------------------


def test_the_guards_refuse_a_step_decided_on_a_state_that_moved():
    r = rec(att(state=S.UNKNOWN))
    step = tr.request_void(r, r.attempts[0], NOW, None)
    assert tr.admits(r, step)
    moved = rec(att(state=S.CAPTURED), status=R.SUCCEEDED)
    assert not tr.admits(moved, step)
    assert not tr.admits(rec(status=R.FAILED), tr.begin_attempt(rec(), "a", NOW))
    assert not tr.admits(r, replace(tr.begin_attempt(r, "b", NOW), attempt=replace(r.attempts[0], channel="b")))


def test_updated_at_moves_with_the_recharge_or_an_attempt_not_with_a_note():
    r = rec(att())
    tr.reduce(r, tr.on_event(rec(att(state=S.CAPTURED)), att(state=S.CAPTURED), answer(O.PENDING), NOW, RULES,
                             ("a", "e")))
    assert r.updated_at == NOW - 10
    tr.reduce(r, tr.on_answer(r, r.attempts[0], answer(O.UNKNOWN), NOW, RULES, Source.ATTEMPT))
    assert r.updated_at == NOW


# -- instant credit (SPEC 20) ---------------------------------------------------------------


def instant(*attempts: Attempt) -> Recharge:
    r = rec(*attempts)
    r.instant = True
    return r


def test_a_pending_payment_credits_at_once_only_when_the_recharge_allows_it():
    assert tr.on_answer(rec(att()), att(), answer(O.PENDING), NOW, RULES, Source.ATTEMPT).credit is None
    r = instant(att())
    step = tr.on_answer(r, r.attempts[0], answer(O.PENDING, provider_ref="p"), NOW, RULES, Source.ATTEMPT)
    assert (step.status, step.settlement, step.attempt.state, step.credit.coins) == (
        R.SUCCEEDED, Settlement.PENDING, S.PENDING, 960)
    assert not step.keeps_money, "a pending payment is no capture: only the lease holder credits it"
    late = instant(att())
    assert tr.on_answer(late, late.attempts[0], answer(O.PENDING), late.deadline_at, RULES,
                        Source.ATTEMPT).credit is None, "past its deadline it waits for the money as before"
    assert tr.on_answer(instant(att()), att(), answer(O.PENDING, amount_minor=1), NOW, RULES,
                        Source.ATTEMPT).credit is None, "a payment of another amount is not credited"


def test_an_instantly_credited_payment_is_inquired_every_reconcile_interval_and_never_voided():
    r = instant(att())
    r = applied(r, tr.on_answer(r, r.attempts[0], answer(O.PENDING), NOW, RULES, Source.ATTEMPT))
    assert r.terminal and tr.next_move(r, NOW + 1, RULES).move is Move.STOP
    later = NOW + RULES.reconcile_interval_s + 3600
    assert tr.next_move(r, later, RULES).move is Move.INQUIRE
    for outcome in (O.UNKNOWN, O.PENDING, O.NOT_PROCESSED):
        assert tr.after_inquiry(r, r.attempts[0], answer(outcome), later, RULES, exhausted=True) is None


def test_its_capture_settles_it_without_a_second_credit():
    r = instant(att())
    r = applied(r, tr.on_answer(r, r.attempts[0], answer(O.PENDING), NOW, RULES, Source.ATTEMPT))
    step = tr.on_answer(r, r.attempts[0], answer(O.CAPTURED, amount_minor=8500), NOW + 60, RULES, Source.WEBHOOK)
    assert step.credit is None and step.clawback is None and step.status is None
    r = applied(r, step)
    assert (r.settlement, r.attempts[0].state) == (Settlement.SETTLED, S.CAPTURED)
    assert tr.next_move(r, NOW + 3600, RULES).move is Move.STOP


@pytest.mark.parametrize(("news", "state"), [(answer(O.DECLINED, decline_code="insufficient_funds"), S.DECLINED),
                                             (answer(O.VOIDED), S.VOIDED),
                                             (answer(O.CAPTURED, amount_minor=9999), S.REFUND_REQUESTED)])
def test_its_failure_claws_the_coins_back_and_a_wrong_capture_is_refunded(news, state):
    r = instant(att())
    r = applied(r, tr.on_answer(r, r.attempts[0], answer(O.PENDING), NOW, RULES, Source.ATTEMPT))
    step = tr.on_answer(r, r.attempts[0], news, NOW + 60, RULES, Source.WEBHOOK)
    assert step.clawback is not None and step.clawback.coins == 960 and step.settlement is Settlement.FAILED
    r = applied(r, step)
    assert (r.status, r.settlement, r.attempts[0].state) == (R.SUCCEEDED, Settlement.FAILED, state)
    assert "clawed_back" in [e.event for e in step.trail]
    assert tr.on_answer(r, r.attempts[0], news, NOW + 61, RULES, Source.WEBHOOK) is None, "once"


# -- settlement reconciliation (SPEC 21) ----------------------------------------------------


def test_a_settled_payment_we_hold_closed_is_inquired_again_and_its_capture_refunded():
    r = rec(att(state=S.VOIDED), status=R.FAILED)
    step = tr.recheck(r, r.attempts[0], NOW)
    assert step.attempt.late_check_at == NOW and step.follow_up == NOW and step.expect_attempt == {S.VOIDED}
    assert [e.event for e in step.trail] == ["reconciliation_recheck"]
    r = applied(r, step)
    assert tr.next_move(r, NOW, RULES).move is Move.LATE_CHECK
    after = tr.on_answer(r, r.attempts[0], answer(O.CAPTURED), NOW, RULES, Source.LATE_CHECK)
    assert after.attempt.state is S.REFUND_REQUESTED and after.credit is None


def test_a_recheck_of_an_open_attempt_only_says_why_and_of_a_refunded_one_nothing():
    r = rec(att(state=S.UNKNOWN))
    step = tr.recheck(r, r.attempts[0], NOW)
    assert step.attempt is None and step.follow_up is KEEP and step.trail[0].event == "reconciliation_recheck"
    assert tr.recheck(rec(att(state=S.REFUNDED), status=R.FAILED), att(state=S.REFUNDED), NOW) is None
    assert tr.recheck(rec(att(state=S.CAPTURED), status=R.SUCCEEDED), att(state=S.CAPTURED), NOW) is None


# -- step-up (3-D Secure, SPEC 22) --------------------------------------------------------------

URL = "https://psp.example/challenge/rc_1.1"


def challenged(**kw: object) -> Recharge:
    """A recharge whose first attempt waits for the payer's step-up, as journaled."""
    r = rec(att(action_url=None, **kw))
    return applied(r, tr.on_answer(r, r.attempts[0], answer(O.REQUIRES_ACTION, action_url=URL), NOW, RULES,
                                   Source.ATTEMPT))


def test_a_step_up_answer_makes_the_recharge_wait_for_its_payer_with_a_next_action():
    r = challenged()
    a = r.attempts[0]
    assert r.status is R.REQUIRES_ACTION and a.state is S.REQUIRES_ACTION
    assert a.action_url == URL and a.action_expires_at == NOW + RULES.action_ttl_s
    assert r.next_action() == {"type": "redirect", "url": URL}
    assert r.deadline() == NOW + RULES.action_ttl_s, "the payer's window extends the recharge's deadline"
    assert tr.next_move(r, NOW + 1, RULES).move is Move.STOP, "nothing to ask before a reconcile interval"
    assert tr.next_move(r, NOW + 5, RULES).move is Move.INQUIRE


def test_the_payer_completing_it_credits_once():
    r = challenged()
    step = tr.on_answer(r, r.attempts[0], answer(O.CAPTURED), NOW + 30, RULES, Source.WEBHOOK, ("a", "e1"))
    assert step.status is R.SUCCEEDED and step.credit is not None and step.expect_attempt == {S.REQUIRES_ACTION}
    assert applied(r, step).next_action() is None


def test_the_payer_abandoning_it_fails_the_recharge_without_failover():
    r = challenged()
    step = tr.on_answer(r, r.attempts[0], answer(O.DECLINED, decline_code="action_abandoned"), NOW + 30, RULES,
                        Source.WEBHOOK, ("a", "e1"))
    assert step.status is R.FAILED and step.reason == "action_abandoned" and step.credit is None
    assert tr.next_move(applied(r, step), NOW + 31, RULES).move is Move.STOP


def test_a_lapsed_step_up_is_voided_then_fails_action_expired():
    r = challenged()
    expires = r.attempts[0].action_expires_at
    nxt = tr.next_move(r, expires - 0.001, RULES)
    assert nxt.move is not Move.WRITE
    nxt = tr.next_move(r, expires, RULES)
    assert nxt.move is Move.WRITE and nxt.step.attempt.state is S.VOID_REQUESTED
    assert nxt.step.trail[0].event == "action_expiring"
    applied(r, nxt.step)
    assert tr.next_move(r, expires, RULES).move is Move.VOID
    step = tr.on_answer(r, r.attempts[0], answer(O.VOIDED), expires + 1, RULES, Source.VOID)
    assert step.status is R.FAILED and step.reason == "action_expired"
    assert step.attempt.late_check_at is not None, "a voided challenge is checked once more for a late capture"


def test_the_providers_own_expiry_fails_it_at_once():
    r = challenged()
    step = tr.on_answer(r, r.attempts[0], answer(O.VOIDED, decline_code="action_expired"), NOW + 600, RULES,
                        Source.WEBHOOK, ("a", "e2"))
    assert step.status is R.FAILED and step.reason == "action_expired"


def test_a_capture_racing_the_expiry_void_is_still_credited():
    r = challenged()
    applied(r, tr.next_move(r, NOW + RULES.action_ttl_s, RULES).step)
    step = tr.on_answer(r, r.attempts[0], answer(O.CAPTURED), NOW + RULES.action_ttl_s + 1, RULES, Source.VOID)
    assert step.status is R.SUCCEEDED and step.credit is not None


def test_an_inquiry_that_fails_never_voids_a_challenge_in_progress():
    r = challenged()
    assert tr.after_inquiry(r, r.attempts[0], answer(O.UNKNOWN), NOW + 5, RULES, exhausted=True) is None
    assert tr.after_inquiry(r, r.attempts[0], answer(O.REQUIRES_ACTION, action_url=URL), NOW + 5, RULES,
                            exhausted=False) is None
    assert tr.park(r, r.attempts[0], "awaiting_provider", NOW + 5) is None, "its status already says what it waits for"


def test_a_soft_decline_after_the_challenge_fails_over_within_the_payers_window():
    r = challenged()
    step = tr.on_answer(r, r.attempts[0], answer(O.DECLINED, decline_code="soft"), NOW + 60, RULES, Source.WEBHOOK,
                        ("a", "e3"))
    assert step.status is None
    assert tr.next_move(applied(r, step), NOW + 61, RULES).move is Move.ATTEMPT


def test_a_step_up_webhook_before_the_charge_answer_is_the_same_news():
    r = rec(att())
    step = tr.on_event(r, r.attempts[0], answer(O.REQUIRES_ACTION, action_url=URL), NOW, RULES, ("a", "e0"))
    applied(r, step)
    assert r.status is R.REQUIRES_ACTION
    assert tr.on_answer(r, r.attempts[0], answer(O.REQUIRES_ACTION, action_url=URL), NOW + 1, RULES,
                        Source.ATTEMPT) is None


def test_a_pending_answer_during_a_step_up_is_no_news_and_never_credits_instantly():
    r = challenged()
    r.instant = True
    assert tr.on_answer(r, r.attempts[0], answer(O.PENDING), NOW + 2, RULES, Source.WEBHOOK, ("a", "e4")) is None
    step = tr.on_event(r, r.attempts[0], answer(O.PENDING), NOW + 2, RULES, ("a", "e4"))
    assert step.credit is None and step.trail[0].event == "webhook_ignored"
