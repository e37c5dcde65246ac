"""Pending payments and refunds settling later, disputes deciding later, and the signed
webhooks that tell the orchestrator.

A pending payment settles after ``webhook_delay_ms`` (jittered) unless it was voided
first. The settlement decides, there and then, whether its webhook is dropped,
duplicated, or followed by a stale ``pending`` event (out of order), so the RNG sequence
does not depend on how long deliveries take. Each delivery is retried on a non-2xx answer
or a network error, with doubling backoff, at most ``webhook_max_attempts`` times.

Refunds and disputes send their events the same way, each event drawing its own drop,
duplicate and out-of-order chances:

    a pending refund     settles after ``webhook_delay_ms``: ``refunded`` or ``failed``, with its
                         ``refund_reference`` and its own ``amount_minor`` (no stale event: a
                         refund's ``pending`` is not one of its events)
    a dispute            ``disputed`` at once; with an outcome, ``dispute_won`` or ``dispute_lost``
                         after ``webhook_delay_ms``, and out of order means the ``disputed`` event
                         (the same event_id) arrives again after it, first if it was dropped
    a challenge          (step-up) ends when the payer completes it (``captured``) or abandons it
                         (``declined``, ``action_abandoned``), through the control API or the
                         automatic payer's timer, or when its ``action_ttl_s`` runs out
                         (``expired``: by its timer, or on the first read after the deadline if
                         that comes first); out of order, a stale ``requires_action`` follows. Its
                         drop, duplicate and out-of-order draws are made when the challenge begins,
                         so when the payer acts does not shift the RNG. A void ends it too, with no
                         webhook, as a void of a pending payment
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from channels.simulator._behaviour import Behaviour
from channels.simulator._ledger import ABANDONED, Challenge, Payment, Refund, SimChannel
from channels.webhooks import SIGNATURE_HEADER, WebhookEvent, event_body, sign

__all__ = ["Notifier"]

log = structlog.get_logger("simulator")

_DELIVERY_TIMEOUT = aiohttp.ClientTimeout(total=5)


_CHALLENGE_ENDS = {"complete": ("captured", None), "fail": ("declined", ABANDONED), "expire": ("expired", None)}
"""How the payer's action (or the clock) ends a challenge: the status and decline code."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one settlement's webhooks will look like, drawn when it settles."""

    drop: bool
    duplicate: bool
    out_of_order: bool


class Notifier:
    """Owns the webhook client session and every settlement and delivery in flight."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def lifespan(self, _app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx``: the session lives as long as the app."""
        self._session = aiohttp.ClientSession(timeout=_DELIVERY_TIMEOUT)
        try:
            yield
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._session.close()

    def schedule(self, channel: SimChannel, payment: Payment, behaviour: Behaviour | None = None) -> None:
        """Settle ``payment`` (now pending) later, captured or declined; ``behaviour`` is
        the one its charge met (its segment's decline codes), else the channel's."""
        b, rng = channel.behaviour if behaviour is None else behaviour, channel.rng
        delay = b.webhook_delay_s(rng)
        declined = b.chance("pending_decline_rate", rng)
        code = b.decline_code(rng) if declined else None

        def settle() -> None:
            if payment.status != "pending":  # voided meanwhile
                return
            channel.move(payment, "declined" if declined else "captured", code)
            self._notify(channel, payment.callback_url, lambda: _event(channel, payment, payment.status, code),
                         lambda final: replace(final, event_id=channel.new_id("evt"), status="pending",
                                               decline_code=None))

        _later(channel, ("payment", payment.reference), delay, settle)

    def schedule_refund(self, channel: SimChannel, payment: Payment, refund: Refund, failed: bool) -> None:
        """Settle ``refund`` (now pending) later, refunded or ``failed``."""
        def settle() -> None:
            channel.settle_refund(payment, refund, "failed" if failed else "refunded")
            self._notify(channel, payment.callback_url,
                         lambda: _event(channel, payment, refund.status, amount_minor=refund.amount_minor,
                                        refund_reference=refund.refund_reference))

        _later(channel, ("refund", refund.refund_reference), channel.behaviour.webhook_delay_s(channel.rng), settle)

    def dispute(self, channel: SimChannel, payment: Payment, outcome: str | None) -> None:
        """Open a dispute on ``payment`` (captured, checked) and tell; decide ``outcome``
        (won or lost) later, or leave it open."""
        channel.open_dispute(payment)
        opened = _event(channel, payment, "disputed")
        self._notify(channel, payment.callback_url, lambda: opened)
        if outcome is None:
            return

        def decide() -> None:
            channel.decide_dispute(payment, outcome)
            self._notify(channel, payment.callback_url, lambda: _event(channel, payment, f"dispute_{outcome}"),
                         lambda _final: opened)

        _later(channel, ("dispute", payment.reference), channel.behaviour.webhook_delay_s(channel.rng), decide)

    def challenge(self, channel: SimChannel, payment: Payment, action_url: str) -> None:
        """Challenge new ``payment`` (step-up): ``requires_action`` until the payer acts or
        ``action_ttl_s`` from its creation runs out, with the automatic payer drawn now."""
        b = channel.behaviour
        expires_at = payment.created_at + b.action_ttl_s
        action, delay = b.payer(channel.rng)
        channel.require_action(payment, Challenge(action_url, expires_at, _draw_plan(channel)))
        _later(channel, ("challenge", payment.reference), max(0.0, expires_at - time.time()),
               lambda: self.end_challenge(channel, payment, "expire"))
        if action is not None:
            _later(channel, ("payer", payment.reference), delay, lambda: self.end_challenge(channel, payment, action))

    def end_challenge(self, channel: SimChannel, payment: Payment, action: str) -> bool:
        """End ``payment``'s challenge by ``action`` (``"complete"``, ``"fail"`` or
        ``"expire"``) and tell; False, changing nothing, when it does not require action."""
        if payment.status != "requires_action":
            return False
        status, code = _CHALLENGE_ENDS[action]
        draws = payment.challenge.webhook_draws if payment.challenge is not None else None
        channel.end_challenge(payment, status, code)
        self._notify(channel, payment.callback_url, lambda: _event(channel, payment, status, code),
                     lambda final: replace(final, event_id=channel.new_id("evt"), status="requires_action",
                                           decline_code=None), None if draws is None else _Plan(*draws))
        return True

    def expire_if_due(self, channel: SimChannel, payment: Payment | None = None) -> None:
        """Expire ``payment``'s challenge (None: every one of the channel's) if its deadline
        passed, so that no read after it shows ``requires_action`` while its timer is late."""
        if not channel.challenges:
            return
        now = time.time()
        if payment is None:
            due = channel.due_challenges(now)
        elif payment.challenge is not None and payment.challenge.expires_at <= now:
            due = [payment]
        else:
            return
        for p in due:
            self.end_challenge(channel, p, "expire")  # a no-op on one whose challenge ended

    def _notify(self, channel: SimChannel, url: str | None, event: Callable[[], WebhookEvent],
                earlier: Callable[[WebhookEvent], WebhookEvent] | None = None, plan: _Plan | None = None) -> None:
        """Send ``event()`` to ``url`` as this event's draws say (drawn now, unless ``plan``
        was drawn before); out of order, ``earlier`` (given the event) follows it. Events are
        made only when sent, so a dropped one draws no id."""
        if plan is None:
            plan = _Plan(*_draw_plan(channel))
        if url is None or plan.drop:
            channel.counters["webhooks_dropped"] += 1
            return
        final = event()
        stale = earlier(final) if plan.out_of_order and earlier is not None else None
        self._spawn(self._send(channel, url, final, plan, stale))

    async def _send(self, channel: SimChannel, url: str, event: WebhookEvent, plan: _Plan,
                    stale: WebhookEvent | None) -> None:
        await self._deliver(channel, url, event)
        if plan.duplicate:
            channel.counters["webhooks_duplicated"] += 1
            await self._deliver(channel, url, event)
        if stale is not None:
            # The earlier state, arriving after the final one.
            channel.counters["webhooks_out_of_order"] += 1
            await self._deliver(channel, url, stale)

    async def _deliver(self, channel: SimChannel, url: str, event: WebhookEvent) -> None:
        body = event_body(event)
        b = channel.behaviour
        backoff = b.webhook_retry_ms / 1000
        for attempt in range(1, b.webhook_max_attempts + 1):
            channel.counters["webhooks_sent"] += 1
            if await self._post(channel, url, body):
                channel.counters["webhooks_delivered"] += 1
                return
            channel.counters["webhook_failures"] += 1
            if attempt < b.webhook_max_attempts:
                await asyncio.sleep(backoff)
                backoff *= 2
        channel.counters["webhooks_given_up"] += 1
        log.warning("webhook_given_up", channel=channel.name, reference=event.reference, event_id=event.event_id,
                    attempts=b.webhook_max_attempts)

    async def _post(self, channel: SimChannel, url: str, body: bytes) -> bool:
        """One delivery attempt, signed now (a retry carries a fresh timestamp)."""
        if self._session is None:
            raise RuntimeError("the notifier is not running (use build_app's cleanup_ctx)")
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(channel.spec.webhook_secret, body, int(time.time()))}
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("webhook_attempt_failed", channel=channel.name, url=url, error=type(exc).__name__)
            return False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _draw_plan(channel: SimChannel) -> tuple[bool, bool, bool]:
    """One webhook's drop, duplicate and out-of-order draws (``_Plan``'s fields)."""
    b, rng = channel.behaviour, channel.rng
    return (b.chance("webhook_drop_rate", rng), b.chance("duplicate_webhook_rate", rng),
            b.chance("out_of_order_webhook_rate", rng))


def _event(channel: SimChannel, payment: Payment, status: str, decline_code: str | None = None, *,
           amount_minor: int | None = None, refund_reference: str | None = None) -> WebhookEvent:
    """An event about ``payment`` with a new id; ``amount_minor`` is the payment's unless
    given (a refund's own)."""
    return WebhookEvent(channel.new_id("evt"), payment.reference, payment.provider_ref, status, decline_code,
                        payment.amount_minor if amount_minor is None else amount_minor, payment.currency,
                        refund_reference)


def _later(channel: SimChannel, key: tuple[str, str], delay_s: float, settle: Callable[[], None]) -> None:
    """Run ``settle`` in ``delay_s``, held in ``channel.settlements`` under ``key`` until then
    (so a void or a reset can cancel it)."""
    def run() -> None:
        channel.settlements.pop(key, None)
        settle()

    channel.settlements[key] = asyncio.get_running_loop().call_later(delay_s, run)
