"""The OpenAPI 3.1 document of the HTTP API, served at ``/v1/openapi.json``. A test
validates real responses against it, so it cannot drift from what the server answers."""

from __future__ import annotations

from typing import Any

from orchestrator.api.schemas import ISSUER_PATTERN

__all__ = ["OPENAPI"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": "#/components/responses/Error"} for c in codes}


_NULLABLE_STR = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                "message": {"type": "string", "minLength": 1},
                "field": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }},
    },
    "Instrument": {
        "type": "object", "additionalProperties": False,
        "description": "Exactly one of token or account_number (12-19 digits, masked before storage), and "
                       "optionally issuer: the card's bank or the wallet as a lower-case code (icbc, gcash), kept "
                       "with the recharge and sent to the provider. Null is the same as left out.",
        "oneOf": [{"required": ["token"], "properties": {"token": {"type": "string"}}},
                  {"required": ["account_number"], "properties": {"account_number": {"type": "string"}}}],
        "properties": {
            "token": {"type": ["string", "null"], "minLength": 1, "maxLength": 128},
            "account_number": {"type": ["string", "null"], "pattern": "^[0-9]{12,19}$"},
            "issuer": {"type": ["string", "null"], "pattern": ISSUER_PATTERN},
        },
    },
    "RechargeRequest": {
        "type": "object", "additionalProperties": False,
        "required": ["user_id", "amount_minor", "currency", "country", "method", "instrument"],
        "properties": {
            "user_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,64}$"},
            "amount_minor": {"type": "integer", "minimum": 1, "maximum": 10**12},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
            "method": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
            "instrument": _ref("Instrument"),
            "quote_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "metadata": {"type": "object", "maxProperties": 20},
            "device_id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$",
                          "description": "the payer's device, as the front service knows it (risk features)"},
            "ip_country": {"type": "string", "pattern": "^[A-Z]{2}$",
                           "description": "the country of the payer's IP address (risk features)"},
        },
    },
    "TemplateRechargeRequest": {
        "type": "object", "additionalProperties": False, "required": ["user_id", "template_id"],
        "description": "A recharge from a template (SPEC 22): the template fills amount_minor, currency, country, "
                       "method and instrument; any of them given must be the template's (else 422 "
                       "template_mismatch; an instrument.issuer too). A template keeping a masked account number "
                       "needs the whole number in instrument.account_number (else 422 instrument_required). Null is "
                       "the same as left out.",
        "properties": {
            "user_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,64}$"},
            "template_id": {"type": "string", "pattern": "^tpl_[0-9a-f]{1,64}$"},
            "amount_minor": {"type": ["integer", "null"], "minimum": 1, "maximum": 10**12},
            "currency": {"type": ["string", "null"], "pattern": "^[A-Z]{3}$"},
            "country": {"type": ["string", "null"], "pattern": "^[A-Z]{2}$"},
            "method": {"type": ["string", "null"], "pattern": "^[a-z][a-z0-9_]{0,31}$"},
            "instrument": {"anyOf": [_ref("Instrument"), {"type": "null"}]},
            "quote_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 64},
            "metadata": {"type": ["object", "null"], "maxProperties": 20},
            "device_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$"},
            "ip_country": {"type": ["string", "null"], "pattern": "^[A-Z]{2}$"},
        },
    },
    "TemplateRequest": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "amount_minor", "currency", "country", "method", "instrument"],
        "description": "Checked as a recharge is (a priced currency, an amount in the denomination range); an "
                       "account number is kept masked.",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^\\x00-\\x1f\\x7f]+$"},
            "amount_minor": {"type": "integer", "minimum": 1, "maximum": 10**12},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
            "method": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
            "instrument": _ref("Instrument"),
        },
    },
    "Suggestions": {
        "type": "object", "required": ["amounts", "basis"], "additionalProperties": False,
        "description": "The amounts the user is most likely to recharge next (SPEC 22), best first, each with the "
                       "model's probability that it is the one; the scores sum to at most 1. basis: history (the "
                       "user's own recharges in the currency), cohort (their country's, or the currency's), or "
                       "default (suggestions.defaults).",
        "properties": {
            "amounts": {"type": "array", "maxItems": 3, "items": {
                "type": "object", "required": ["amount_minor", "score"], "additionalProperties": False,
                "properties": {"amount_minor": {"type": "integer", "minimum": 1},
                               "score": {"type": "number", "minimum": 0, "maximum": 1}}}},
            "basis": {"enum": ["history", "cohort", "default"]},
        },
    },
    "Template": {
        "type": "object",
        "required": ["id", "user_id", "name", "amount_minor", "currency", "country", "method", "instrument",
                     "created_at"],
        "properties": {
            "id": {"type": "string", "pattern": "^tpl_[0-9a-f]+$"},
            "user_id": {"type": "string"},
            "name": {"type": "string", "minLength": 1},
            "amount_minor": {"type": "integer", "minimum": 1},
            "currency": {"type": "string"},
            "country": {"type": "string"},
            "method": {"type": "string"},
            "instrument": {"type": "object", "additionalProperties": False,
                           "oneOf": [{"required": ["token"]}, {"required": ["account_number_masked"]}],
                           "description": "as stored: the token, or the account number masked (first 6 / last 4); "
                                          "and the issuer, if one was given",
                           "properties": {"token": {"type": "string"},
                                          "account_number_masked": {"type": "string",
                                                                    "pattern": "^[0-9]{0,6}[*]+[0-9]{4}$"},
                                          "issuer": {"type": "string", "pattern": ISSUER_PATTERN}}},
            "created_at": _TIME,
        },
    },
    "QuoteRequest": {
        "type": "object", "additionalProperties": False, "required": ["user_id", "amount_minor", "currency"],
        "properties": {
            "user_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,64}$"},
            "amount_minor": {"type": "integer", "minimum": 1, "maximum": 10**12},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        },
    },
    "Quote": {
        "type": "object",
        "required": ["quote_id", "user_id", "amount_minor", "currency", "coins", "bonus_coins", "rate", "expires_at",
                     "promotions"],
        "properties": {
            "quote_id": {"type": "string", "minLength": 1},
            "user_id": {"type": "string"},
            "amount_minor": {"type": "integer"},
            "currency": {"type": "string"},
            "coins": {"type": "integer", "minimum": 0},
            "bonus_coins": {"type": "integer", "minimum": 0},
            "rate": {"type": "string"},
            "expires_at": _TIME,
            "promotions": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Attempt": {
        "type": "object", "required": ["channel", "reference", "outcome"],
        "properties": {
            "channel": {"type": "string"},
            "reference": {"type": "string"},
            "outcome": {"enum": ["captured", "pending", "requires_action", "declined", "not_processed", "unknown",
                                 "voided", "refunded"]},
            "latency_ms": {"type": ["number", "null"]},
            "decline_code": _NULLABLE_STR,
            "error": _NULLABLE_STR,
        },
    },
    "Recharge": {
        "type": "object",
        "required": ["id", "status", "user_id", "amount_minor", "currency", "coins", "bonus_coins", "channel",
                     "attempts", "decline_code", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string", "pattern": "^rc_[0-9a-f]+$"},
            "status": {"enum": ["processing", "requires_action", "pending", "succeeded", "declined", "failed",
                                "blocked"]},
            "user_id": {"type": "string"},
            "amount_minor": {"type": "integer"},
            "currency": {"type": "string"},
            "country": {"type": "string"},
            "method": {"type": "string"},
            "coins": {"type": "integer", "minimum": 0},
            "bonus_coins": {"type": "integer", "minimum": 0},
            "promotions": {"type": "array", "items": {"type": "object"}},
            "risk": {"type": "object", "required": ["action", "reasons"],
                     "properties": {"action": {"enum": ["allow", "review", "challenge", "block"]},
                                    "reasons": {"type": "array", "items": {"type": "string"}},
                                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                                    "model": {"type": "string", "description": "the risk model that scored it"}}},
            "next_action": {"type": "object", "required": ["type", "url"],
                            "properties": {"type": {"enum": ["redirect"]}, "url": {"type": "string"}},
                            "description": "while requires_action: where the payer completes the step-up (SPEC 22)"},
            "step_up": {"type": "boolean", "description": "risk challenged it: 3-D Secure step-up required"},
            "channel": _NULLABLE_STR,
            "attempts": {"type": "array", "items": _ref("Attempt")},
            "decline_code": _NULLABLE_STR,
            "reason": _NULLABLE_STR,
            "metadata": {"type": ["object", "null"]},
            "config_version": {"type": "string"},
            "created_at": _TIME,
            "updated_at": _TIME,
            "refunded_minor": {"type": "integer", "minimum": 0,
                               "description": "succeeded recharges only: the sum of its succeeded refunds"},
            "refunds": {"type": "array", "items": _ref("Refund")},
            "dispute": _ref("Dispute"),
            "settlement": {"enum": ["pending", "settled", "failed"],
                           "description": "instantly credited recharges only (SPEC 20): pending while the channel "
                                          "settles the payment; failed: the payment failed and the coins were clawed "
                                          "back"},
        },
    },
    "RefundRequest": {
        "type": "object", "additionalProperties": False,
        "description": "No amount_minor: all that is left to refund. The body may be omitted.",
        "properties": {
            "amount_minor": {"type": "integer", "minimum": 1, "maximum": 10**12},
            "reason": {"type": "string", "minLength": 1, "maxLength": 255},
        },
    },
    "Refund": {
        "type": "object",
        "required": ["id", "recharge_id", "amount_minor", "currency", "coins", "status", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string", "pattern": "^rf_[0-9a-f]+$"},
            "recharge_id": {"type": "string", "pattern": "^rc_[0-9a-f]+$"},
            "amount_minor": {"type": "integer", "minimum": 1},
            "currency": {"type": "string"},
            "coins": {"type": "integer", "minimum": 0},
            "status": {"enum": ["pending", "succeeded", "failed"]},
            "reason": _NULLABLE_STR,
            "error": _NULLABLE_STR,
            "created_at": _TIME,
            "updated_at": _TIME,
        },
    },
    "Dispute": {
        "type": "object", "required": ["status", "coins", "opened_at", "updated_at"],
        "properties": {"status": {"enum": ["open", "won", "lost"]}, "coins": {"type": "integer", "minimum": 0},
                       "opened_at": _TIME, "updated_at": _TIME},
    },
    "Notification": {
        "type": "object",
        "required": ["id", "client", "recharge_id", "type", "created_at", "state", "attempts", "event"],
        "properties": {
            "id": {"type": "string", "pattern": "^evt_[0-9a-f]+$"},
            "client": {"type": "string"}, "recharge_id": {"type": "string"}, "type": {"type": "string"},
            "created_at": _TIME, "state": {"enum": ["pending", "delivered", "dead"]},
            "attempts": {"type": "integer", "minimum": 0}, "next_at": {"type": ["string", "null"]},
            "last_error": _NULLABLE_STR, "delivered_at": {"type": ["string", "null"]},
            "event": {"type": "object", "required": ["id", "type", "created_at", "data"],
                      "description": "the body POSTed to the client, signed with X-Orchestrator-Signature"},
        },
    },
    "DepositRequest": {
        "type": "object", "additionalProperties": False, "required": ["coins", "reference"],
        "properties": {"coins": {"type": "integer", "minimum": 1, "maximum": 10**15},
                       "reference": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$"}},
    },
    "Transfer": {
        "type": "object", "required": ["id", "seq", "debit", "credit", "coins", "kind", "at"],
        "properties": {
            "id": {"type": "string", "pattern": "^tr_[0-9]+$"}, "seq": {"type": "integer", "minimum": 1},
            "debit": {"type": "string"}, "credit": {"type": "string"}, "coins": {"type": "integer", "minimum": 1},
            "kind": {"enum": ["deposit", "credit", "refund", "refund_reversal", "clawback", "rebalance"]},
            "recharge_id": _NULLABLE_STR, "ref": _NULLABLE_STR, "note": _NULLABLE_STR, "at": _TIME,
        },
    },
    "Pool": {
        "type": "object", "required": ["name", "countries", "balance", "target_coins", "low_water_coins", "low", "demand"],
        "properties": {"name": {"type": "string"}, "countries": {"type": "array", "items": {"type": "string"}},
                       "balance": {"type": "integer"}, "target_coins": {"type": ["integer", "null"]},
                       "low_water_coins": {"type": ["integer", "null"]}, "low": {"type": "boolean"},
                       "demand": {"type": "integer", "minimum": 0},
                       "shortfalls": {"type": "integer", "minimum": 0, "description": "credits of this pool's users "
                                      "another pool paid because this one was short"},
                       "lost_coins": {"type": "integer", "minimum": 0, "description": "coins the pool fronted on "
                                      "instant credits whose payment failed (its booked loss; clawed back "
                                      "from the wallets, which owe what they could not cover)"}},
    },
    "ReconciliationRequest": {
        "type": "object", "additionalProperties": False, "required": ["channel", "date"],
        "properties": {"channel": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
                       "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                                "description": "the UTC day of the report"}},
    },
    "Reconciliation": {
        "type": "object",
        "required": ["id", "channel", "date", "trigger", "status", "started_at", "report_items", "summary"],
        "properties": {
            "id": {"type": "string"}, "channel": {"type": "string"}, "date": {"type": "string"},
            "trigger": {"enum": ["manual", "schedule"]}, "status": {"enum": ["running", "completed", "failed"]},
            "reason": _NULLABLE_STR, "started_at": _TIME, "finished_at": {"type": ["string", "null"]},
            "report_items": {"type": "integer", "minimum": 0},
            "summary": {"type": ["object", "null"], "description": "classes: {kind: {count, amount_minor: {currency: n}}}, "
                        "discrepancies, currencies: {currency: {settled_minor, discrepant_minor, deviation_rate}}"},
            "discrepancies": {"type": "array", "items": {"type": "object", "required": ["seq", "reference", "kind",
                                                                                        "status"],
                              "properties": {"seq": {"type": "integer"}, "reference": {"type": "string"},
                                             "kind": {"enum": ["missing_in_report", "missing_in_journal",
                                                               "orphan_capture", "amount_mismatch",
                                                               "status_mismatch", "fee_mismatch"]},
                                             "status": {"enum": ["open", "resolving", "resolved"]},
                                             "resolution": _NULLABLE_STR, "recharge_id": _NULLABLE_STR,
                                             "amount_minor": {"type": ["integer", "null"]},
                                             "currency": _NULLABLE_STR, "expected": {"type": ["object", "null"]},
                                             "reported": {"type": ["object", "null"]}, "run_id": {"type": "string"},
                                             "updated_at": _TIME}}},
            "next_after": {"type": ["integer", "null"]},
        },
    },
    "Trail": {
        "type": "object", "required": ["recharge_id", "entries"],
        "properties": {
            "recharge_id": {"type": "string"},
            "entries": {"type": "array", "items": {
                "type": "object", "required": ["at", "event"],
                "properties": {"at": _TIME, "event": {"type": "string"}, "status": _NULLABLE_STR,
                               "reference": _NULLABLE_STR, "channel": _NULLABLE_STR,
                               "detail": {"type": ["object", "null"]}},
            }},
        },
    },
    "Wallet": {
        "type": "object", "required": ["user_id", "coins", "frozen_coins", "spendable_coins", "entries"],
        "properties": {
            "user_id": {"type": "string"},
            "coins": {"type": "integer", "description": "negative after a lost dispute: a debt"},
            "frozen_coins": {"type": "integer", "minimum": 0, "description": "held by open disputes"},
            "spendable_coins": {"type": "integer"},
            "entries": {"type": "array", "items": {
                "type": "object", "required": ["recharge_id", "kind", "coins", "balance_after", "created_at"],
                "properties": {"recharge_id": {"type": "string"},
                               "kind": {"enum": ["credit", "refund", "refund_reversal", "clawback"]},
                               "refund_id": _NULLABLE_STR, "coins": {"type": "integer"},
                               "balance_after": {"type": "integer"}, "created_at": _TIME},
            }},
        },
    },
    "WebhookEvent": {
        "type": "object", "required": ["event_id", "reference", "status"],
        "properties": {"event_id": {"type": "string"}, "reference": {"type": "string"},
                       "provider_ref": _NULLABLE_STR, "decline_code": _NULLABLE_STR,
                       "amount_minor": {"type": ["integer", "null"], "minimum": 0},
                       "currency": {"type": ["string", "null"], "pattern": "^[A-Z]{3}$"},
                       "refund_reference": {"type": "string"},
                       "status": {"enum": ["captured", "pending", "requires_action", "expired", "declined", "voided",
                                           "refunded", "failed", "disputed", "dispute_won", "dispute_lost"]}},
    },
    "ChannelHealth": {
        "type": "object", "required": ["config_version", "channels"],
        "properties": {"config_version": {"type": "string"}, "snapshot_version": {"type": "string"},
                       "channels": {"type": "array", "items": {
                           "type": "object", "required": ["channel", "kind", "breaker", "drained"],
                           "properties": {"channel": {"type": "string"}, "kind": {"type": "string"},
                                          "state": {"type": "string"}, "drained": {"type": "boolean"},
                                          "breaker": {"type": "object"}, "latency_ms": {"type": "object"},
                                          "success_rate": {"type": ["number", "null"]},
                                          "in_flight": {"type": "integer"}}}}},
    },
}

_bearer = [{"bearer": []}]
_key_header = {"name": "Idempotency-Key", "in": "header", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"}}
_rid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_user = {"name": "user_id", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,64}$"}}

PATHS: dict[str, Any] = {
    "/v1/recharges": {"post": {
        "summary": "Create a recharge (idempotent per client and Idempotency-Key)",
        "security": _bearer, "parameters": [_key_header],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "oneOf": [_ref("RechargeRequest"), _ref("TemplateRechargeRequest")]}}}},
        "responses": {"201": _json(_ref("Recharge"), "terminal within sync_wait_s"),
                      "202": _json(_ref("Recharge"), "still pending"),
                      **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
    }},
    "/v1/users/{user_id}/templates": {
        "post": {
            "summary": "Save a recharge template for a user (at most templates.max_per_user per user and client)",
            "security": _bearer, "parameters": [_user],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TemplateRequest")}}},
            "responses": {"201": _json(_ref("Template"), "the template"),
                          **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
        },
        "get": {
            "summary": "The user's templates (this client's), oldest first", "security": _bearer,
            "parameters": [_user],
            "responses": {"200": _json({"type": "object", "required": ["templates"],
                                        "properties": {"templates": {"type": "array", "items": _ref("Template")}}},
                                       "the templates"), **_errors(401, 403, 404, 422)},
        },
    },
    "/v1/users/{user_id}/templates/{id}": {
        "get": {
            "summary": "A template (another user's or client's is 404 template_not_found)", "security": _bearer,
            "parameters": [_user, _rid],
            "responses": {"200": _json(_ref("Template"), "the template"), **_errors(401, 403, 404, 422)},
        },
        "delete": {
            "summary": "Delete a template (recharges made from it keep replaying)", "security": _bearer,
            "parameters": [_user, _rid],
            "responses": {"204": {"description": "deleted"}, **_errors(401, 403, 404, 422)},
        },
    },
    "/v1/users/{user_id}/suggestions": {"get": {
        "summary": "Amounts the user is likely to recharge next, in a currency (only amounts they can buy)",
        "security": _bearer,
        "parameters": [_user,
                       {"name": "currency", "in": "query", "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Z]{3}$"}},
                       {"name": "country", "in": "query", "required": False,
                        "description": "the user's country, for a user with no history (else their own is used)",
                        "schema": {"type": "string", "pattern": "^[A-Z]{2}$"}}],
        "responses": {"200": _json(_ref("Suggestions"), "the suggestions"), **_errors(401, 403, 422, 429, 503)},
    }},
    "/v1/quotes": {"post": {
        "summary": "Fix the rate, coins and bonus of a recharge for quote_ttl_s (pass quote_id to the recharge)",
        "security": _bearer,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("QuoteRequest")}}},
        "responses": {"201": _json(_ref("Quote"), "the quote"), **_errors(400, 401, 403, 413, 415, 422, 429, 503)},
    }},
    "/v1/recharges/{id}": {"get": {
        "summary": "A recharge", "security": _bearer, "parameters": [_rid],
        "responses": {"200": _json(_ref("Recharge"), "the recharge"), **_errors(401, 403, 404)},
    }},
    "/v1/recharges/{id}/trail": {"get": {
        "summary": "Every transition and attempt, in order", "security": _bearer, "parameters": [_rid],
        "responses": {"200": _json(_ref("Trail"), "the trail"), **_errors(401, 403, 404)},
    }},
    "/v1/wallets/{user_id}": {"get": {
        "summary": "A user's coin wallet", "security": _bearer,
        "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
        "responses": {"200": _json(_ref("Wallet"), "the wallet"), **_errors(401, 403, 404, 422)},
    }},
    "/v1/webhooks/{channel}": {"post": {
        "summary": "Provider callback, authenticated by X-Provider-Signature",
        "parameters": [{"name": "channel", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "X-Provider-Signature", "in": "header", "required": True,
                        "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("WebhookEvent")}}},
        "responses": {"200": _json({"type": "object"}, "applied (or a no-op repeat)"), **_errors(401, 404, 413, 422)},
    }},
    "/v1/recharges/{id}/refunds": {"post": {
        "summary": "Refund a succeeded recharge, in part or whole (idempotent per client and Idempotency-Key); "
                   "its coins leave the wallet at once and come back if the provider fails it",
        "security": _bearer, "parameters": [_rid, _key_header],
        "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("RefundRequest")}}},
        "responses": {"201": _json(_ref("Refund"), "settled (succeeded or failed) already"),
                      "202": _json(_ref("Refund"), "pending at the provider"),
                      **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503)},
    }},
    "/v1/refunds/{id}": {"get": {
        "summary": "A refund", "security": _bearer, "parameters": [_rid],
        "responses": {"200": _json(_ref("Refund"), "the refund"), **_errors(401, 403, 404)},
    }},
    "/v1/admin/notifications": {"get": {
        "summary": "Notifications in the outbox by state (dead by default), oldest first", "security": _bearer,
        "parameters": [{"name": "state", "in": "query", "schema": {"enum": ["dead", "pending", "delivered"]}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                       {"name": "after", "in": "query", "schema": {"type": "string"}}],
        "responses": {"200": _json({"type": "object", "required": ["state", "notifications"],
                                    "properties": {"state": {"type": "string"},
                                                   "notifications": {"type": "array",
                                                                     "items": _ref("Notification")}}},
                                   "the notifications"), **_errors(401, 403, 422)},
    }},
    "/v1/admin/notifications/{id}/redeliver": {"post": {
        "summary": "Deliver a notification again (pending, due now, its retry window restarted)",
        "security": _bearer, "parameters": [_rid],
        "responses": {"202": _json(_ref("Notification"), "queued"), **_errors(401, 403, 404)},
    }},
    "/v1/admin/pools": {"get": {
        "summary": "The coin pools: balance, target, low water, demand since the last rebalancing pass",
        "security": _bearer,
        "responses": {"200": _json({"type": "object", "required": ["pools"],
                                    "properties": {"pools": {"type": "array", "items": _ref("Pool")},
                                                   "rebalance_interval_s": {"type": "number"}}}, "the pools"),
                      **_errors(401, 403, 422)},
    }},
    "/v1/admin/pools/{name}/deposits": {"post": {
        "summary": "Deposit coins into a pool from issuance (idempotent by reference)", "security": _bearer,
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("DepositRequest")}}},
        "responses": {"201": _json(_ref("Transfer"), "deposited"), "200": _json(_ref("Transfer"), "made before"),
                      **_errors(400, 401, 403, 404, 413, 415, 422)},
    }},
    "/v1/admin/ledger/transfers": {"get": {
        "summary": "Ledger transfers after a seq, oldest first (all, or one account's)", "security": _bearer,
        "parameters": [{"name": "account", "in": "query", "schema": {"type": "string"}},
                       {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
        "responses": {"200": _json({"type": "object", "required": ["transfers", "next_after"],
                                    "properties": {"transfers": {"type": "array", "items": _ref("Transfer")},
                                                   "next_after": {"type": "integer"}}}, "the transfers"),
                      **_errors(401, 403, 422)},
    }},
    "/v1/admin/reconciliations": {
        "post": {
            "summary": "Reconcile a channel's settlement report of one day (runs in the background)",
            "security": _bearer,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ReconciliationRequest")}}},
            "responses": {"202": _json(_ref("Reconciliation"), "started"), **_errors(400, 401, 403, 404, 413, 415, 422)},
        },
        "get": {
            "summary": "Reconciliation runs, newest first", "security": _bearer,
            "parameters": [{"name": "channel", "in": "query", "schema": {"type": "string"}},
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
            "responses": {"200": _json({"type": "object", "required": ["reconciliations"],
                                        "properties": {"reconciliations": {"type": "array",
                                                                           "items": _ref("Reconciliation")}}},
                                       "the runs"), **_errors(401, 403, 422)},
        },
    },
    "/v1/admin/reconciliations/{id}": {"get": {
        "summary": "A run: counts and amounts by class, the deviation rate, and its day's discrepancies",
        "security": _bearer,
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "status", "in": "query", "schema": {"enum": ["open", "resolving", "resolved"]}},
                       {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
        "responses": {"200": _json(_ref("Reconciliation"), "the run"), **_errors(401, 403, 404, 422)},
    }},
    "/healthz": {"get": {"summary": "Process alive", "responses": {"200": _json({"type": "object"}, "alive")}}},
    "/readyz": {"get": {"summary": "Journal writable, config loaded, a channel routable",
                        "responses": {"200": _json({"type": "object"}, "ready"),
                                      "503": _json({"type": "object"}, "not ready")}}},
    "/v1/health/channels": {"get": {"summary": "Per-channel health", "responses": {
        "200": _json(_ref("ChannelHealth"), "channels"), **_errors(401)}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
        "200": {"description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **_errors(401)}}},
    "/status": {"get": {"summary": "Status page for on-call", "responses": {
        "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}, **_errors(401)}}},
    "/v1/status": {"get": {"summary": "The status page's data", "responses": {
        "200": _json({"type": "object"}, "status"), **_errors(401)}}},
    "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI")}}},
    "/v1/admin/routing/explain": {"get": {
        "summary": "The routing decision for a transaction, each factor's contribution, filtered channels",
        "security": _bearer,
        "parameters": [*({"name": n, "in": "query", "required": n != "segment", "schema": {"type": "string"}}
                         for n in ("currency", "country", "method", "amount_minor", "segment", "issuer")),
                       {"name": "step_up", "in": "query", "schema": {"enum": ["true", "false"]}}],
        "responses": {"200": _json({"type": "object"}, "explanation"), **_errors(401, 403, 422)},
    }},
    "/v1/admin/risk/explain": {"get": {
        "summary": "How risk judged a recharge: action, score, the model's version, the features that moved it most",
        "security": _bearer,
        "parameters": [{"name": "recharge_id", "in": "query", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json({
            "type": "object", "required": ["recharge_id", "action", "reasons", "score", "model", "features"],
            "properties": {
                "recharge_id": {"type": "string"}, "status": {"type": "string"},
                "action": {"enum": ["allow", "review", "challenge", "block"]},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "model": _NULLABLE_STR,
                "features": {"type": "array", "items": {
                    "type": "object", "required": ["feature", "value", "contribution"],
                    "properties": {"feature": {"type": "string"}, "value": {"type": "number"},
                                   "contribution": {"type": "number",
                                                    "description": "added to the score's log-odds"}}}}}},
            "the explanation"), **_errors(401, 403, 404, 422)},
    }},
    "/v1/admin/config": {
        "get": {"summary": "Running config (secrets redacted) and version", "security": _bearer,
                "responses": {"200": _json({"type": "object"}, "config"), **_errors(401, 403)}},
        "put": {"summary": "Validate and apply a config (YAML or JSON); ?dry_run=1 diffs only", "security": _bearer,
                "parameters": [{"name": "dry_run", "in": "query", "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/yaml": {"schema": {"type": "string"}},
                                                              "application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _json({"type": "object"}, "applied or diffed"),
                              **_errors(400, 401, 403, 413, 415, 422)}},
    },
    "/v1/admin/config/history": {"get": {"summary": "Recent config versions", "security": _bearer,
                                         "responses": {"200": _json({"type": "object"}, "history"),
                                                       **_errors(401, 403)}}},
    "/v1/admin/config/rollback": {"post": {"summary": "Restore the previous config", "security": _bearer,
                                           "responses": {"200": _json({"type": "object"}, "rolled back"),
                                                         **_errors(401, 403, 409)}}},
    "/v1/admin/channels/{name}/drain": {"post": {
        "summary": "Take a channel out of routing now", "security": _bearer,
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json({"type": "object"}, "drained"), **_errors(401, 403, 404)}}},
    "/v1/admin/channels/{name}/enable": {"post": {
        "summary": "Put a drained channel back", "security": _bearer,
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json({"type": "object"}, "enabled"), **_errors(401, 403, 404)}}},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Recharge orchestrator", "version": "1.0.0",
             "description": "Smart-routing payment orchestrator for virtual-currency recharges (SPEC section 5)."},
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {"Error": _json(_ref("Error"), "an error, always in this shape")},
    },
}
