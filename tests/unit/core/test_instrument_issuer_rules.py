"""``instrument.issuer`` without HTTP: what a recharge keeps and what the provider is sent
(``Instrument``), and what a template fills in and refuses (``templates.fill``, pure)."""

from __future__ import annotations

import pytest
from test_template_use_cases import CARD, CARD_TPL, TOKEN_TPL, req

from orchestrator import templates
from orchestrator.errors import TemplateRefused
from orchestrator.model import Template
from orchestrator.recharges import Instrument

MASKED = "622202*********5679"
ICBC_TOKEN_TPL = Template("tpl_3", "front", "u1", "icbc", 8500, "CNY", "CN", "ewallet",
                          {"token": "tok_1", "issuer": "icbc"}, 1.0)
ICBC_CARD_TPL = Template("tpl_4", "front", "u1", "icbc card", 8500, "CNY", "CN", "ewallet",
                         {"account_number_masked": MASKED, "issuer": "icbc"}, 1.0)


def test_the_issuer_is_kept_beside_the_token_or_the_mask_and_sent_beside_the_whole_number():
    assert Instrument(token="t", issuer="icbc").stored() == {"token": "t", "issuer": "icbc"}
    assert Instrument(account_number=CARD, issuer="icbc").stored() == {"account_number_masked": MASKED,
                                                                       "issuer": "icbc"}
    assert Instrument(account_number=CARD, issuer="icbc").whole() == {"account_number": CARD, "issuer": "icbc"}
    assert Instrument(token="t").stored() == Instrument(token="t").whole() == {"token": "t"}
    assert list(Instrument(token="t", issuer="icbc").stored()) == ["token", "issuer"], "the id comes first (risk)"


def test_the_issuer_enters_the_fingerprint():
    def fingerprint(issuer: str | None) -> str:
        return templates.fill(req(), TOKEN_TPL if issuer is None else ICBC_TOKEN_TPL).fingerprint()

    assert fingerprint("icbc") != fingerprint(None)


@pytest.mark.parametrize("given", [None, Instrument(token="tok_1"), Instrument(token="tok_1", issuer="icbc")])
def test_a_templates_issuer_is_used_whether_or_not_the_request_repeats_it(given):
    cmd = templates.fill(req("tpl_3", instrument=given) if given else req("tpl_3"), ICBC_TOKEN_TPL)
    assert cmd.instrument == Instrument(token="tok_1", issuer="icbc")


def test_a_masked_templates_issuer_goes_with_the_number_brought_again():
    cmd = templates.fill(req("tpl_4", instrument=Instrument(account_number=CARD)), ICBC_CARD_TPL)
    assert cmd.instrument == Instrument(account_number=CARD, issuer="icbc")
    assert templates.fill(req("tpl_2", instrument=Instrument(account_number=CARD)), CARD_TPL).instrument.issuer is None


@pytest.mark.parametrize(("template", "given"), [
    (ICBC_TOKEN_TPL, Instrument(token="tok_1", issuer="ccb")),
    (ICBC_CARD_TPL, Instrument(account_number=CARD, issuer="ccb")),
    (TOKEN_TPL, Instrument(token="tok_1", issuer="icbc")),
    (CARD_TPL, Instrument(account_number=CARD, issuer="icbc")),
])
def test_an_issuer_given_beside_a_template_must_be_the_templates(template, given):
    with pytest.raises(TemplateRefused) as err:
        templates.fill(req(template.id, instrument=given), template)
    assert (err.value.code, err.value.field) == ("template_mismatch", "instrument.issuer")
