"""Request schemas: strict, closed, bounded. A wrong type is a wrong type (no "8500"
for an integer, no 85.0 for minor units, no true for a number); an unknown key is an
error, so a misspelt field never silently falls back to a default."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from config import exponent, is_known
from orchestrator.api.errors import ApiError

__all__ = ["ISSUER_PATTERN", "DepositIn", "InstrumentIn", "RechargeIn", "RefundIn", "TemplateIn", "TemplateRechargeIn",
           "validate"]

_Printable = r"^[\x21-\x7e]+$"
ISSUER_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
"""An issuer code: the card's bank or the wallet, lower case (``icbc``, ``gcash``)."""
UserId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
# Optional signals for risk (SPEC 5, docs/risk.md): the payer's device and their IP's country.
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_Printable)]
IpCountry = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class InstrumentIn(_Strict):
    """A payment instrument: a token, or a card/account number, and optionally its issuer
    (kept and sent to the provider as given, so routing can segment on it). A number is
    masked (first 6 / last 4) before it is stored, logged or answered; only the provider
    sees it whole."""

    token: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_Printable)] | None = None
    account_number: Annotated[str, StringConstraints(pattern=r"^[0-9]{12,19}$")] | None = None
    issuer: Annotated[str, StringConstraints(pattern=ISSUER_PATTERN)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> InstrumentIn:
        if (self.token is None) == (self.account_number is None):
            raise ValueError("give exactly one of instrument.token or instrument.account_number")
        return self



class RechargeIn(_Strict):
    user_id: UserId
    amount_minor: int = Field(gt=0, le=10**12)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    method: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    instrument: InstrumentIn
    quote_id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_Printable)] | None = None
    device_id: DeviceId | None = None
    ip_country: IpCountry | None = None
    metadata: Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=40)], Any],
                        Field(max_length=20)] | None = None

    @field_validator("metadata")
    @classmethod
    def _flat_metadata(cls, meta: dict[str, Any] | None) -> dict[str, Any] | None:
        # Metadata is echoed back and stored: flat scalars only, strings bounded.
        for key, value in (meta or {}).items():
            if isinstance(value, str):
                if len(value) > 500:
                    raise ValueError(f"metadata.{key} must be at most 500 characters")
            elif value is not None and not isinstance(value, (bool, int, float)):
                raise ValueError(f"metadata.{key} must be a string, number, boolean or null")
        return meta

    @field_validator("currency")
    @classmethod
    def _known(cls, code: str) -> str:
        if not is_known(code):
            raise ValueError(f"unknown currency {code}")
        return code


# A recharge template's fields (SPEC 22), each as a recharge's.
_Amount = Annotated[int, Field(gt=0, le=10**12)]
_Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
_Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
_Method = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
TemplateId = Annotated[str, StringConstraints(pattern=r"^tpl_[0-9a-f]{1,64}$")]


class TemplateIn(_Strict):
    """A recharge template: what ``POST /v1/recharges`` takes, under a name of 1 to 64
    characters (no control characters: it is echoed back)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
    amount_minor: _Amount
    currency: _Currency
    country: _Country
    method: _Method
    instrument: InstrumentIn

    @field_validator("name")
    @classmethod
    def _not_blank(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("name must not be blank")
        return name

    @field_validator("currency")
    @classmethod
    def _known(cls, code: str) -> str:
        return RechargeIn._known(code)  # type: ignore[no-any-return]


class TemplateRechargeIn(_Strict):
    """``POST /v1/recharges`` naming a template: the payment fields may be left out (the
    template's are used) or given (then they must be the template's)."""

    user_id: UserId
    template_id: TemplateId
    amount_minor: _Amount | None = None
    currency: _Currency | None = None
    country: _Country | None = None
    method: _Method | None = None
    instrument: InstrumentIn | None = None
    quote_id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_Printable)] | None = None
    device_id: DeviceId | None = None
    ip_country: IpCountry | None = None
    metadata: Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=40)], Any],
                        Field(max_length=20)] | None = None

    @field_validator("currency")
    @classmethod
    def _known(cls, code: str | None) -> str | None:
        return None if code is None else RechargeIn._known(code)  # type: ignore[no-any-return]

    @field_validator("metadata")
    @classmethod
    def _flat_metadata(cls, meta: dict[str, Any] | None) -> dict[str, Any] | None:
        return RechargeIn._flat_metadata(meta)  # type: ignore[no-any-return]


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _code(kind: str) -> str:
    return {"missing": "missing_field", "extra_forbidden": "unknown_field"}.get(kind, "invalid_field")


def _message(err: Any, field: str, data: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        return f"{field} is not a known field"
    if kind == "int_type" or kind == "int_from_float":
        hint = ""
        if field == "amount_minor" and isinstance(data.get("currency"), str) and is_known(data["currency"]):
            exp = exponent(data["currency"])
            hint = f" ({data['currency']} has {exp} decimal place{'s' if exp != 1 else ''}: 85.00 is {85 * 10**exp})"
        return f"{field} must be an integer number of minor units{hint}" if field == "amount_minor" else f"{field} must be an integer"
    if kind == "greater_than":
        return f"{field} must be > {ctx['gt']}"
    if kind == "less_than_equal":
        return f"{field} must be <= {ctx['le']}"
    if kind == "string_type":
        return f"{field} must be a string"
    if kind == "string_too_long":
        return f"{field} must be at most {ctx['max_length']} characters"
    if kind == "string_too_short":
        return f"{field} must not be empty"
    if kind == "string_pattern_mismatch":
        return f"{field} has an invalid format"
    if kind == "too_long":
        return f"{field} has too many entries"
    if kind in ("dict_type", "model_type"):
        return f"{field} must be an object"
    if kind == "value_error":
        msg = str(ctx.get("error"))
        if not field:
            return msg
        return msg if msg.startswith(field) else f"{field}: {msg}"
    return f"{field}: {err['msg']}"


class RefundIn(_Strict):
    """A refund: ``amount_minor`` absent refunds all that is left."""

    amount_minor: int = Field(None, gt=0, le=10**12)  # type: ignore[assignment]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None


class DepositIn(_Strict):
    """Coins into a pool, idempotent by ``reference`` (a partner's transfer id, say)."""

    coins: int = Field(gt=0, le=10**15)
    reference: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_Printable)]


class ReconciliationIn(_Strict):
    """Reconcile a channel's settlement report of one day (SPEC 21)."""

    channel: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    date: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]


def validate(model: type[_Strict], data: Any) -> Any:
    """Validate a parsed JSON body; raise ApiError(422) naming the first bad field."""
    if not isinstance(data, dict):
        raise ApiError("validation_failed", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        details = []
        for err in errors:
            field = _path(err["loc"])
            code = _code(err["type"])
            if field == "currency" and err["type"] == "value_error":
                code = "unsupported_currency"
            details.append({"code": code, "field": field, "message": _message(err, field, data)})
        first = details[0]
        raise ApiError(first["code"], first["message"], field=first["field"], details=details) from None
