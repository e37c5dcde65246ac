"""Request schema of ``POST /v1/quotes``: strict and closed, like ``RechargeIn``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from config import is_known
from orchestrator.api.schemas import UserId, _Strict

__all__ = ["QuoteIn"]


class QuoteIn(_Strict):
    user_id: UserId
    amount_minor: int = Field(gt=0, le=10**12)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]

    @field_validator("currency")
    @classmethod
    def _known(cls, code: str) -> str:
        if not is_known(code):
            raise ValueError(f"unknown currency {code}")
        return code
