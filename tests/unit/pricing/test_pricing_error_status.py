"""The pricing errors in the API's one error table: each code answers with the status
the spec gives it (the quote endpoint over HTTP: tests/integration/pricing/test_quote_api.py)."""

from __future__ import annotations

from orchestrator.api.errors import STATUS


def test_every_pricing_code_has_a_status() -> None:
    assert {c: STATUS[c] for c in ("rates_stale", "amount_out_of_range", "quote_expired", "quote_not_found",
                                   "quote_mismatch", "unsupported_currency", "amount_too_small")} == {
        "rates_stale": 503, "amount_out_of_range": 422, "quote_expired": 409, "quote_not_found": 422,
        "quote_mismatch": 422, "unsupported_currency": 422, "amount_too_small": 422}
