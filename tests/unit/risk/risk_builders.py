"""Shared builders for the risk tests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from config import parse
from config._schema import RiskConfig
from orchestrator.clock import VirtualClock
from orchestrator.risk import RiskEngine, RiskInput

VALID_CARD = "4111111111111111"
T0 = 1_800_000_000.0


def risk_config(**doc: Any) -> RiskConfig:
    return parse({"risk": doc}).config.risk


def engine(**doc: Any) -> tuple[RiskEngine, VirtualClock]:
    clock = VirtualClock(T0)
    return RiskEngine(risk_config(**doc), clock), clock


def txn(user: str = "u1", amount: str | int = 10, country: str = "CN", instrument: str | None = "tok_1",
        account_number: str | None = None, **kw: Any) -> RiskInput:
    return RiskInput(user_id=user, amount_base=Decimal(amount), country=country, instrument_id=instrument,
                     account_number=account_number, **kw)
