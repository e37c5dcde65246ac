"""The simulator's step-up decisions, pure (SPEC 16 and 22, ``_behaviour.py``): which fates a
step-up replaces, when ``requires_action_rate`` is drawn (never on a channel that does not use
it, so its seeds replay as before), what the automatic payer does, and the lazy expiry of a
challenge whose timer has not run yet."""

from __future__ import annotations

import random
import time

import pytest

from channels.simulator import Behaviour, BehaviourError, ChannelSpec, Fate, SimChannel
from channels.simulator._notifier import Notifier

STEPPED = {Fate.CAPTURE, Fate.PENDING, Fate.LATE_PROCESSING, Fate.TIMEOUT_AFTER_CAPTURE, Fate.RESET,
           Fate.ERROR_500_AFTER_CAPTURE}


@pytest.mark.parametrize("fate", list(Fate))
def test_required_steps_up_exactly_the_fates_that_would_record_a_charge(fate):
    rng = random.Random(1)
    assert Behaviour(three_ds=True).steps_up(fate, "required", rng) is (fate in STEPPED)
    assert not Behaviour().steps_up(fate, "required", rng)


@pytest.mark.parametrize("behaviour, asked", [
    (Behaviour(), None), (Behaviour(requires_action_rate=1.0), "if_available"),  # no three_ds
    (Behaviour(three_ds=True), None), (Behaviour(three_ds=True), "if_available"),  # rate 0
    (Behaviour(three_ds=True, requires_action_rate=1.0), "required"),  # required: nothing to draw
])
def test_step_up_draws_only_when_the_rate_decides(behaviour, asked):
    rng, untouched = random.Random(7), random.Random(7)
    for fate in Fate:
        behaviour.steps_up(fate, asked, rng)
    assert rng.random() == untouched.random()


def test_a_channel_that_does_not_challenge_draws_the_same_fates_as_before():
    before, after = Behaviour(decline_rate=0.3, pending_rate=0.2), Behaviour(decline_rate=0.3, pending_rate=0.2,
                                                                             three_ds=True)
    r1, r2 = random.Random(5), random.Random(5)
    fates = []
    for _ in range(200):
        fate = after.fate(r2)
        after.steps_up(fate, None, r2)
        fates.append(fate)
    assert fates == [before.fate(r1) for _ in range(200)]


def test_requires_action_rate_challenges_its_share():
    b, rng = Behaviour(three_ds=True, requires_action_rate=0.25), random.Random(3)
    share = sum(b.steps_up(Fate.CAPTURE, None, rng) for _ in range(4000)) / 4000
    assert 0.22 < share < 0.28


def test_the_automatic_payer_completes_abandons_or_never_acts_after_a_jittered_delay():
    b, rng = Behaviour(payer_complete_rate=0.5, payer_abandon_rate=0.3, payer_delay_ms=1000), random.Random(2)
    draws = [b.payer(rng) for _ in range(4000)]
    counts = {a: sum(1 for action, _ in draws if action == a) / 4000 for a in ("complete", "fail", None)}
    assert 0.47 < counts["complete"] < 0.53 and 0.27 < counts["fail"] < 0.33 and 0.17 < counts[None] < 0.23
    delays = [d for action, d in draws if action is not None]
    assert 0.75 <= min(delays) and max(delays) <= 1.25
    assert all(d == 0 for action, d in draws if action is None)


@pytest.mark.parametrize("changes, field", [
    ({"three_ds": 1}, "three_ds"), ({"action_ttl_s": 0}, "action_ttl_s"), ({"action_ttl_s": 1e9}, "action_ttl_s"),
    ({"requires_action_rate": -0.1}, "requires_action_rate"), ({"payer_abandon_rate": 2}, "payer_abandon_rate"),
    ({"payer_complete_rate": 0.6, "payer_abandon_rate": 0.6}, "payer_rates"),
    ({"payer_delay_ms": 1e9}, "payer_delay_ms"),
])
def test_bad_step_up_fields_are_refused_by_name(changes, field):
    with pytest.raises(BehaviourError) as caught:
        Behaviour().updated(changes)
    assert caught.value.field == field


async def test_a_challenge_past_its_deadline_expires_on_read_before_its_timer_runs():
    ch = SimChannel(ChannelSpec("t1", "direct_api", "whsec_test", Behaviour(three_ds=True, action_ttl_s=0.05), "1"))
    notifier = Notifier()  # no session: a payment without callback_url sends nothing
    payment = ch.record("s1", 100, "CNY", None)
    notifier.challenge(ch, payment, "http://sim/t1/challenge/s1")
    handle = ch.settlements[("challenge", "s1")]
    notifier.expire_if_due(ch)
    assert payment.status == "requires_action"  # not yet due
    time.sleep(0.06)  # blocks the loop: the timer cannot run
    notifier.expire_if_due(ch)
    assert (payment.status, payment.decline_code) == ("expired", None)
    assert handle.cancelled() and ch.challenges == {} and ch.settlements == {}
    assert payment.wire().get("action_url") is None
    assert not notifier.end_challenge(ch, payment, "complete")
    assert (ch.counters["step_ups"], ch.counters["step_ups_expired"], ch.counters["captures"]) == (1, 1, 0)
