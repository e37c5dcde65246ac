"""Recharge templates ("lightning recharge", SPEC 22): a user's saved amount, currency,
country, method and instrument, and a recharge made from one. Plain async functions over
explicit dependencies (``TemplateDeps``), returning domain objects or raising the errors
of ``orchestrator.errors``, as ``orchestrator.recharges`` does.

A template is one client's for one user: any other client or user hears
``template_not_found`` about it, as if it did not exist. It is checked as a recharge is
when it is made (a priced currency, an amount in the denomination range), and keeps the
instrument as a recharge stores it: the token, or the account number masked, and the
issuer if one was given. A recharge from a masked one brings the whole number again (the
provider needs it, and it is never stored); its mask must be the template's. The issuer is
the template's: one given beside it must be the same.

Errors (``TemplateRefused``, beside the ``PricingError`` of pricing the amount)::

    template_not_found      404   none, deleted, or another client's or user's
    template_limit_reached  409   the user has templates.max_per_user of this client's
    template_mismatch       422   a field given beside template_id is not the template's
    instrument_required     422   a masked template, and no account number to charge
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from config import TemplatesConfig
from orchestrator import recharges
from orchestrator.clock import Clock
from orchestrator.errors import IdempotencyConflict, TemplateRefused
from orchestrator.journal import Journal
from orchestrator.model import Template
from orchestrator.quotes import PricingService
from orchestrator.recharges import Created, Instrument, NewRecharge, RechargeDeps, mask

__all__ = ["NAME_MAX", "NewTemplate", "Owner", "TemplateDeps", "TemplateRecharge", "create", "delete", "fill", "get",
           "list_of", "new_template_id", "recharge"]

NAME_MAX = 64
# What a template fills in a recharge, each checked against what the request gives beside it.
_FILLED = ("amount_minor", "currency", "country", "method")


def new_template_id() -> str:
    return "tpl_" + secrets.token_hex(12)


def _not_found() -> TemplateRefused:
    return TemplateRefused("template_not_found", "no such template", "template_id")


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose templates: one client's, for one of its users."""

    client: str
    user_id: str

    def owns(self, t: Template | None) -> Template:
        if t is None or (t.client, t.user_id) != (self.client, self.user_id):
            raise _not_found()
        return t


@dataclass(frozen=True, slots=True)
class NewTemplate:
    owner: Owner
    name: str
    amount_minor: int
    currency: str
    country: str
    method: str
    instrument: Instrument


@dataclass(frozen=True, slots=True)
class TemplateDeps:
    journal: Journal
    pricing: PricingService
    clock: Clock
    config: Callable[[], TemplatesConfig]  # the running config's, at the time of the call
    new_id: Callable[[], str] = new_template_id


async def create(cmd: NewTemplate, deps: TemplateDeps) -> Template:
    """Check the template as a recharge of it would be priced, and keep it (within the
    user's cap, which the journal holds however many create at once)."""
    if not 1 <= len(cmd.name) <= NAME_MAX:
        raise TemplateRefused("invalid_field", f"name must be 1 to {NAME_MAX} characters", "name")
    # The currency and the denomination range, as a recharge is checked (a quote-free price).
    deps.pricing.price_now(cmd.amount_minor, cmd.currency, None)
    t = Template(deps.new_id(), cmd.owner.client, cmd.owner.user_id, cmd.name, cmd.amount_minor, cmd.currency,
                 cmd.country, cmd.method, cmd.instrument.stored(), deps.clock.now())
    cap = deps.config().max_per_user
    if not await deps.journal.create_template(t, cap):
        raise TemplateRefused("template_limit_reached",
                              f"user {cmd.owner.user_id} already has {cap} templates of this client, the most one "
                              "user may keep (templates.max_per_user); delete one first")
    return t


async def list_of(owner: Owner, deps: TemplateDeps) -> list[Template]:
    return await deps.journal.templates_of(owner.client, owner.user_id)


async def get(owner: Owner, template_id: str, deps: TemplateDeps) -> Template:
    return owner.owns(await deps.journal.get_template(template_id))


async def delete(owner: Owner, template_id: str, deps: TemplateDeps) -> None:
    if not await deps.journal.delete_template(owner.client, owner.user_id, template_id):
        raise _not_found()


# -- a recharge from a template ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateRecharge:
    """``POST /v1/recharges`` naming ``template_id``: any payment field given beside it
    must be the template's. ``document`` is the body as sent."""

    client: str
    idempotency_key: str
    user_id: str
    template_id: str
    document: Mapping[str, Any]
    amount_minor: int | None = None
    currency: str | None = None
    country: str | None = None
    method: str | None = None
    instrument: Instrument | None = None
    metadata: dict[str, Any] | None = None
    quote_id: str | None = None
    device_id: str | None = None
    ip_country: str | None = None


def fill(req: TemplateRecharge, t: Template) -> NewRecharge:
    """The recharge ``req`` asks for, filled from ``t`` (pure). Its fingerprint covers the
    request as sent and what the template filled in, so a key reused once the template
    differs can never pass for a replay."""
    for name in _FILLED:
        given = getattr(req, name)
        if given is not None and given != getattr(t, name):
            raise TemplateRefused("template_mismatch", f"{name} {given!r} is not the template's "
                                  f"({getattr(t, name)!r}); leave it out or send the template's", name)
    instrument = _instrument(req.instrument, t.instrument)
    filled = {name: getattr(t, name) for name in _FILLED}
    return NewRecharge(
        client=req.client, idempotency_key=req.idempotency_key, user_id=req.user_id, amount_minor=t.amount_minor,
        currency=t.currency, country=t.country, method=t.method, instrument=instrument,
        document={**req.document, "template": {**filled, "instrument": t.instrument}}, metadata=req.metadata,
        quote_id=req.quote_id, template_id=t.id, device_id=req.device_id, ip_country=req.ip_country)


def _instrument(given: Instrument | None, stored: Mapping[str, str]) -> Instrument:
    """The instrument to charge: the template's, with the whole number ``given`` for a
    masked one; an issuer given must be the template's (left out, the template's is used)."""
    issuer = stored.get("issuer")
    if "token" in stored:
        if given is not None and given.token != stored["token"]:
            raise TemplateRefused("template_mismatch", "instrument is not the template's; leave it out or send the "
                                  "template's token", "instrument")
        whole = Instrument(token=stored["token"], issuer=issuer)
    else:
        masked = stored["account_number_masked"]
        if given is None:
            raise TemplateRefused("instrument_required", f"the template keeps only the masked account number "
                                  f"{masked}; send the whole number in instrument.account_number",
                                  "instrument.account_number")
        if given.account_number is None or mask(given.account_number) != masked:
            raise TemplateRefused("template_mismatch", f"instrument is not the template's account number {masked}",
                                  "instrument.account_number")
        whole = Instrument(account_number=given.account_number, issuer=issuer)
    if given is not None and given.issuer is not None and given.issuer != issuer:
        kept = "has no issuer" if issuer is None else f"has issuer {issuer!r}"
        raise TemplateRefused("template_mismatch", f"instrument.issuer {given.issuer!r} is not the template's (it "
                              f"{kept}); leave it out or send the template's", "instrument.issuer")
    return whole


async def recharge(req: TemplateRecharge, deps: TemplateDeps, recharge_deps: RechargeDeps) -> Created:
    """Create (or replay) the recharge ``req`` names a template for. A template deleted
    since a recharge was made from it still lets that request's retry answer it."""
    t = await deps.journal.get_template(req.template_id)
    if t is None or (t.client, t.user_id) != (req.client, req.user_id):
        done = await _replay(req, recharge_deps)
        if done is None:
            raise _not_found()
        return done
    return await recharges.create(fill(req, t), recharge_deps)


async def _replay(req: TemplateRecharge, deps: RechargeDeps) -> Created | None:
    """The recharge the key already holds, if ``req`` (filled from what that recharge was
    made of) is the request that made it; IdempotencyConflict if it is another."""
    existing = await deps.journal.find(req.client, req.idempotency_key)
    if existing is None:
        return None
    as_made = Template(req.template_id, req.client, req.user_id, "", existing.amount_minor, existing.currency,
                       existing.country, existing.method, existing.instrument, existing.created_at)
    try:
        cmd = fill(req, as_made)
    except TemplateRefused:  # it was made of other fields: not this request
        raise IdempotencyConflict() from None
    return await recharges.replay(cmd, deps)
