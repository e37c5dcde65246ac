"""Providers that answer late, twice, with the wrong amount, or after the channel left
the config: the driver on a real journal (SQLite and PostgreSQL) keeps the money right.
Each test is one defect found from outside (issue 20), fixed."""

from __future__ import annotations

from dataclasses import replace

from harness import SETTINGS, Core, make_recharge

from channels import AttemptOutcome
from channels.memory import Action, MemoryChannel, Payment
from config import ChannelConfig
from orchestrator.channel_set import ChannelSet
from orchestrator.model import AttemptState, RechargeStatus, Step


def script(authorize: Action, **ops: Action):
    return lambda op, ref, n: authorize if op == "authorize" else ops.get(op, Action.OK)


async def test_a_charge_the_provider_lands_after_a_confirmed_void_is_found_and_refunded(store):
    """The late-capture check: an attempt closed after an unknown outcome is inquired
    once more ``late_capture_check_s`` later; a provider that broke its word (charged a
    reference it confirmed voided) is found out, and the charge refunded."""
    a, b = MemoryChannel("a", script(Action.LOST_BEFORE)), MemoryChannel("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "succeeded" and rec.channel == "b"
        first = rec.attempts[0]
        assert first.state is AttemptState.VOIDED and first.late_check_at is not None
        a.ledger[first.reference] = Payment(first.reference, rec.amount_minor, rec.currency, "captured", "pr_late",
                                            history=["voided", "captured"])
        await core.settle_all(rounds=3)
        assert a.ledger[first.reference].status == "captured", "not before the check is due"
        core.clock.advance(SETTINGS.late_capture_check_s)
        await core.settle_all(rounds=3)
        assert a.ledger[first.reference].status == "refunded"
        fresh = await core.journal.get(rec.id)
        assert fresh.attempts[0].state is AttemptState.REFUNDED and fresh.attempts[0].late_check_at is None
        events = [e.event for e in await core.journal.trail(rec.id)]
        assert "late_capture_refund_requested" in events and "late_capture_refunded" in events
        report = await core.check()
        assert report.ok and report.refunded == 1, report


async def test_a_late_check_that_finds_nothing_clears_and_asks_no_more(store):
    a, b = MemoryChannel("a", script(Action.LOST_BEFORE)), MemoryChannel("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        core.clock.advance(SETTINGS.late_capture_check_s)
        await core.settle_all(rounds=3)
        inquiries = [op for op, _ in a.calls].count("inquire")
        fresh = await core.journal.get(rec.id)
        assert fresh.attempts[0].late_check_at is None and fresh.attempts[0].state is AttemptState.VOIDED
        await core.settle_all(rounds=5)
        assert [op for op, _ in a.calls].count("inquire") == inquiries
        assert (await core.check()).ok


async def test_a_capture_webhook_for_a_finished_recharge_with_an_open_attempt_is_refunded(store):
    """It used to answer 500 (the success step's guard failed again and again) until the
    provider gave up, and the capture stayed with the provider."""
    a = MemoryChannel("a")
    async with Core(store, [a]) as core:
        rec, trail = make_recharge(core.clock, "k1")
        await core.journal.create(rec, trail)
        att = replace(core.driver._pick(rec, core.driver._plan(rec), core.clock.now()).step.attempt)
        await core.journal.apply(Step(rec.id, core.clock.now(), attempt=att, attempt_is_new=True))
        await core.journal.apply(Step(rec.id, core.clock.now(), status=RechargeStatus.FAILED,
                                      expect_status=frozenset({RechargeStatus.PROCESSING}), reason="operator"))
        a.ledger[att.reference] = Payment(att.reference, rec.amount_minor, rec.currency, "captured", "pr_1",
                                          history=["captured"])
        effect = await core.driver.on_event("a", "ev1", att.reference, AttemptOutcome.CAPTURED, "pr_1")
        assert effect == "late_capture_refunding"
        await core.idle()
        assert a.ledger[att.reference].status == "refunded"
        assert (await core.check()).ok


async def test_a_capture_of_another_amount_is_never_credited(store):
    class WrongAmount(MemoryChannel):
        async def authorize(self, request):
            result = await super().authorize(request)
            self.ledger[request.reference].amount_minor = request.amount_minor + 100
            return replace(result, amount_minor=request.amount_minor + 100)

    a, b = WrongAmount("a"), MemoryChannel("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "pending" and rec.reason == "amount_mismatch"
        assert b.calls == [], "money was taken: nothing else is tried"
        assert (await core.journal.wallet(rec.user_id)).coins == 0
        await core.settle_all(rounds=3)
        fresh = await core.journal.get(rec.id)
        assert fresh.status == "pending" and fresh.reason == "amount_mismatch", "parked for a person"
        assert "amount_mismatch" in [e.event for e in await core.journal.trail(rec.id)]
        assert (await core.check(settled=True)).ok


async def test_a_refund_answered_404_is_not_refunded(store):
    a, b = MemoryChannel("a", script(Action.LOST_BEFORE)), MemoryChannel("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        ref = rec.attempts[0].reference
        a.ledger[ref] = Payment(ref, rec.amount_minor, rec.currency, "captured", "pr_late", history=["captured"])
        await core.driver.on_event("a", "ev-late", ref, AttemptOutcome.CAPTURED)
        del a.ledger[ref]  # the refund endpoint cannot find it: 404
        await core.idle()
        assert (await core.journal.get(rec.id)).attempts[0].state is AttemptState.REFUND_REQUESTED
        a.ledger[ref] = Payment(ref, rec.amount_minor, rec.currency, "captured", "pr_late", history=["captured"])
        await core.settle_all(rounds=2)
        assert a.ledger[ref].status == "refunded"
        assert (await core.check()).ok


def _cfg(name: str) -> ChannelConfig:
    return ChannelConfig(name=name, kind="direct_api", base_url=f"http://127.0.0.1:1/{name}",
                         webhook_secret="whsec_test_1", currencies=["CNY"], countries=["CN"], methods=["ewallet"])


async def test_a_channel_removed_while_an_attempt_may_hold_money_outlives_restarts(store):
    """Removed by a reload, or from the file while no instance ran: any instance that
    starts later still settles the attempts on it (built from the journal's row when
    needed), then closes it; the row stays."""
    a = MemoryChannel("a")
    gone = MemoryChannel("gone", script(Action.LOST_AFTER_PEND, inquire=Action.FAIL, void=Action.FAIL))
    built: list[str] = []

    def factory(cfg: ChannelConfig) -> MemoryChannel:
        built.append(cfg.name)
        return {"a": a, "gone": gone}[cfg.name]

    async with Core(store, [gone, a]) as core:
        first = ChannelSet(factory, core.journal)
        await first.open([_cfg("a"), _cfg("gone")], core.clock.now())
        rec = await core.run("k1")
        assert rec.status == "pending" and rec.attempts[0].channel == "gone"
        # Edited out of the file while no instance ran: the next one still finds it.
        second = ChannelSet(factory, core.journal)
        await second.open([_cfg("a")], core.clock.now())
        assert set(second.live) == {"a"} and second.get("gone") is None, "no new attempt goes there"
        assert await second.find("gone", core.clock.now()) is gone and set(second.retired) == {"gone"}
        third = ChannelSet(factory, core.journal)
        await third.open([_cfg("a")], core.clock.now())
        assert await third.find("gone", core.clock.now()) is gone
        await third.close_idle(core.clock.now() + 3600, grace_s=15)
        assert set(third.retired) == {"gone"}, "busy: an attempt on it may hold money"
        gone.script = script(Action.LOST_AFTER_PEND)  # inquiries answer again
        core.driver._settle_channels = third.find
        gone.settle(rec.attempts[0].reference, "captured")
        await core.settle_all(rounds=3)
        assert (await core.journal.get(rec.id)).status == "succeeded"
        await third.close_idle(core.clock.now() + 3600, grace_s=15)
        assert third.retired == {} and [k.name for k in await core.journal.kept_channels()] == ["a", "gone"]
        assert (await core.check()).ok
