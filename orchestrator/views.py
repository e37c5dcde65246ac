"""The API's objects (SPEC 5 and 19) made from the domain's: what a front service reads in
an answer and what it receives in a notification, one rendering for both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.clock import iso
from orchestrator.model import Dispute, Recharge, RechargeStatus, Refund, RefundStatus

__all__ = ["dispute_view", "recharge_view", "refund_view"]


def recharge_view(rec: Recharge, promotions: list[Any] | None = None, risk: dict[str, Any] | None = None,
                  refunds: Sequence[Refund] = (), dispute: Dispute | None = None) -> dict[str, Any]:
    """``promotions`` and ``risk`` as it was priced and assessed (None: not shown); a
    succeeded recharge shows what was refunded since, and its dispute once it has one."""
    doc: dict[str, Any] = {
        "id": rec.id,
        "status": rec.status.value,
        "user_id": rec.user_id,
        "amount_minor": rec.amount_minor,
        "currency": rec.currency,
        "country": rec.country,
        "method": rec.method,
        "coins": rec.coins,
        "bonus_coins": rec.bonus_coins,
    }
    if promotions is not None:
        doc["promotions"] = promotions
    if risk is not None:
        doc["risk"] = risk
    doc.update({
        "channel": rec.channel,
        "attempts": [a.to_api() for a in rec.attempts],
        "decline_code": rec.decline_code,
        "reason": rec.reason,
        "metadata": rec.metadata,
        "config_version": rec.config_version,
        "created_at": iso(rec.created_at),
        "updated_at": iso(rec.updated_at),
    })
    next_action = rec.next_action()
    if next_action is not None:  # the payer's step-up (SPEC 22)
        doc["next_action"] = next_action
    if rec.step_up:
        doc["step_up"] = True
    if rec.settlement is not None:  # credited instantly: how its payment settles (SPEC 20)
        doc["settlement"] = rec.settlement.value
    if rec.status is RechargeStatus.SUCCEEDED:
        doc["refunded_minor"] = sum(r.amount_minor for r in refunds if r.status is RefundStatus.SUCCEEDED)
        doc["refunds"] = [refund_view(r) for r in refunds]
        if dispute is not None:
            doc["dispute"] = dispute_view(dispute)
    return doc


def refund_view(r: Refund) -> dict[str, Any]:
    return {
        "id": r.id,
        "recharge_id": r.recharge_id,
        "amount_minor": r.amount_minor,
        "currency": r.currency,
        "coins": r.coins,
        "status": r.status.value,
        "reason": r.reason,
        "error": r.error if r.status is RefundStatus.FAILED else None,
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
    }


def dispute_view(d: Dispute) -> dict[str, Any]:
    return {"status": d.status.value, "coins": d.coins, "opened_at": iso(d.opened_at), "updated_at": iso(d.updated_at)}
