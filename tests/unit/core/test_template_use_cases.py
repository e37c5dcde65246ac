"""Recharge templates (SPEC 22) without HTTP: what a template fills in a recharge and what
it refuses (``templates.fill``, pure), and the use cases on the in-memory journal, with
SPEC 18's invariants checked after."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_recharge_use_case import running

from orchestrator import templates
from orchestrator.errors import IdempotencyConflict, PricingError, TemplateRefused
from orchestrator.model import RechargeStatus, Template
from orchestrator.recharges import Instrument

CARD = "6222020200112345679"
TOKEN_TPL = Template("tpl_1", "front", "u1", "pack", 8500, "CNY", "CN", "ewallet", {"token": "tok_1"}, 1.0)
CARD_TPL = Template("tpl_2", "front", "u1", "card", 8500, "CNY", "CN", "ewallet",
                    {"account_number_masked": "622202*********5679"}, 1.0)


def req(template_id: str = "tpl_1", key: str = "k1", **given: object) -> templates.TemplateRecharge:
    doc = {"user_id": "u1", "template_id": template_id, **given}
    if isinstance(given.get("instrument"), Instrument):
        inst: Instrument = given["instrument"]  # type: ignore[assignment]
        doc["instrument"] = {"token": inst.token} if inst.token else {"account_number": inst.account_number}
    return templates.TemplateRecharge("front", key, "u1", template_id, doc, **given)  # type: ignore[arg-type]


# -- fill (pure) ----------------------------------------------------------------------------


def test_a_template_fills_the_payment_fields_and_names_itself():
    cmd = templates.fill(req(metadata={"o": 1}), TOKEN_TPL)
    assert (cmd.amount_minor, cmd.currency, cmd.country, cmd.method) == (8500, "CNY", "CN", "ewallet")
    assert cmd.instrument == Instrument(token="tok_1") and cmd.template_id == "tpl_1" and cmd.metadata == {"o": 1}


@pytest.mark.parametrize("field,value", [("amount_minor", 9000), ("currency", "JPY"), ("country", "JP"),
                                         ("method", "bank")])
def test_a_field_given_beside_the_template_must_be_the_templates(field, value):
    with pytest.raises(TemplateRefused) as err:
        templates.fill(req(**{field: value}), TOKEN_TPL)
    assert (err.value.code, err.value.field) == ("template_mismatch", field)
    same = templates.fill(req(**{field: getattr(TOKEN_TPL, field)}), TOKEN_TPL)
    assert getattr(same, field) == getattr(TOKEN_TPL, field)


def test_a_token_template_takes_only_its_own_token():
    assert templates.fill(req(instrument=Instrument(token="tok_1")), TOKEN_TPL).instrument.token == "tok_1"
    for other in (Instrument(token="tok_2"), Instrument(account_number=CARD)):
        with pytest.raises(TemplateRefused) as err:
            templates.fill(req(instrument=other), TOKEN_TPL)
        assert (err.value.code, err.value.field) == ("template_mismatch", "instrument")


def test_a_masked_template_needs_the_whole_number_its_mask_names():
    with pytest.raises(TemplateRefused) as err:
        templates.fill(req("tpl_2"), CARD_TPL)
    assert (err.value.code, err.value.field) == ("instrument_required", "instrument.account_number")
    for wrong in (Instrument(account_number="6222020200112340001"), Instrument(token="tok_1")):
        with pytest.raises(TemplateRefused) as err:
            templates.fill(req("tpl_2", instrument=wrong), CARD_TPL)
        assert err.value.code == "template_mismatch"
    cmd = templates.fill(req("tpl_2", instrument=Instrument(account_number=CARD)), CARD_TPL)
    assert cmd.instrument.account_number == CARD and cmd.instrument.stored() == CARD_TPL.instrument


def test_the_fingerprint_covers_the_request_and_what_the_template_filled_never_the_number():
    a = templates.fill(req(), TOKEN_TPL)
    assert templates.fill(req(), TOKEN_TPL).fingerprint() == a.fingerprint(), "a replay"
    other_id = templates.fill(req("tpl_9"), replace(TOKEN_TPL, id="tpl_9"))
    assert other_id.fingerprint() != a.fingerprint(), "the same fields under another template id"
    assert templates.fill(req(), replace(TOKEN_TPL, amount_minor=9900)).fingerprint() != a.fingerprint(), "the same request, another template"
    with_card = templates.fill(req("tpl_2", instrument=Instrument(account_number=CARD)), CARD_TPL)
    assert CARD not in str(with_card.document["template"]), "the template part holds the mask only"


# -- the use cases, on the in-memory journal ------------------------------------------------


def new(user: str = "u1", name: str = "pack", **kw: object) -> templates.NewTemplate:
    fields: dict[str, object] = {"amount_minor": 8500, "currency": "CNY", "country": "CN", "method": "ewallet",
                                 "instrument": Instrument(token="tok_1"), **kw}
    return templates.NewTemplate(templates.Owner("front", user), name, **fields)  # type: ignore[arg-type]


async def test_templates_are_made_checked_capped_and_recharged_from_in_memory():
    async with running() as (svc, journal, channels):
        owner = templates.Owner("front", "u1")
        t = await templates.create(new(), svc.templates)
        assert t.id.startswith("tpl_") and await templates.list_of(owner, svc.templates) == [t]
        assert await templates.get(owner, t.id, svc.templates) == t
        with pytest.raises(TemplateRefused, match="no such template"):
            await templates.get(templates.Owner("front", "u2"), t.id, svc.templates)
        with pytest.raises(PricingError) as err:
            await templates.create(new(amount_minor=10**9), svc.templates)
        assert (err.value.code, err.value.field) == ("amount_out_of_range", "amount_minor")
        with pytest.raises(PricingError) as err:
            await templates.create(new(currency="EUR"), svc.templates)
        assert (err.value.code, err.value.field) == ("unsupported_currency", "currency")
        with pytest.raises(TemplateRefused) as refused:
            await templates.create(new(name=""), svc.templates)
        assert refused.value.field == "name"
        for i in range(9):
            await templates.create(new(name=f"t{i}"), svc.templates)
        with pytest.raises(TemplateRefused) as refused:
            await templates.create(new(), svc.templates)
        assert refused.value.code == "template_limit_reached"

        done = await templates.recharge(req(t.id), svc.templates, svc.recharges)
        assert done.recharge.status is RechargeStatus.SUCCEEDED and done.recharge.amount_minor == 8500
        assert (await journal.trail(done.recharge.id))[0].detail["template_id"] == t.id
        await templates.delete(owner, t.id, svc.templates)
        with pytest.raises(TemplateRefused):
            await templates.delete(owner, t.id, svc.templates)
        again = await templates.recharge(req(t.id), svc.templates, svc.recharges)
        assert again.replayed and again.recharge.id == done.recharge.id
        with pytest.raises(IdempotencyConflict):
            await templates.recharge(req(t.id, amount_minor=9000), svc.templates, svc.recharges)
        with pytest.raises(TemplateRefused) as refused:
            await templates.recharge(req(t.id, key="k2"), svc.templates, svc.recharges)
        assert refused.value.code == "template_not_found"
        assert len(channels["a"].ledger) == 1
