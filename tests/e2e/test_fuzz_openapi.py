"""Schemathesis against the live server: the real orchestrator process (on the provider
simulator) is fuzzed through every operation of the OpenAPI 3.1 document it serves, with
a fixed seed and a bounded number of cases per operation.

Positive cases follow the schema (and, for the recharge and the quote, are often fully
valid requests that reach the provider); negative ones break it: wrong types, missing and
unknown fields, out-of-range numbers, bad patterns, missing required headers. On top of
what schemathesis draws, each case gets a drawn credential (the right key, one of the
wrong scope, an unknown or overlong key, none) and, where the operation takes a body, a
drawn damage to it (malformed JSON, invalid UTF-8, over the 64 KiB cap, the wrong
Content-Type); webhooks are sometimes correctly signed so that their bodies are read.

For every answer: no 5xx; the status, headers and body are what the document declares for
that operation; every 4xx is JSON in the spec's error shape; data the schema forbids is
never accepted; secured operations refuse a request without credentials. The cases run
per operation are printed in the run's summary (tests/conftest.py) and written to
``fuzz_report.json`` beside the server's log.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from procs import FRONT_KEY, SRE_KEY, checked_stack
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from channels import webhooks
from orchestrator.api.openapi import OPENAPI

pytestmark = pytest.mark.slow

SEED = 20_130_517
# Cases per operation and mode. Operations with neither parameters nor a body have
# nothing to break (no negative mode), and only a handful of distinct cases to draw.
CASES = {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 100}

CHANNEL = "fuzz_direct"
CHANNELS = [
    {"name": CHANNEL, "kind": "direct_api", "webhook_secret": "whsec_fuzz_direct",
     "behaviour": {"latency_ms": 1, "latency_jitter_ms": 0, "ping_latency_ms": 0, "pending_rate": 0}},
]
USER = "u_fuzz"

# What every answer is checked for; a damaged body is not the drawn case any more, so the
# checks that judge the case itself (was it invalid? did it carry credentials?) are left out.
ANSWER_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                 response_headers_conformance, response_schema_conformance]
CASE_CHECKS = [negative_data_rejection, missing_required_header, ignored_auth]


def error_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every 4xx is JSON in the spec's error shape: {"error": {"code", "message", "field"?}}."""
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])[0]
    assert ctype.startswith("application/json"), f"a {response.status_code} answered as {ctype!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body!r}"
    err = body["error"]
    assert isinstance(err.get("code"), str) and err["code"], f"no error code: {body!r}"
    assert isinstance(err.get("message"), str) and err["message"], f"no error message: {body!r}"
    assert set(err) <= {"code", "message", "field", "details"}, f"unexpected keys: {body!r}"
    if "field" in err:
        assert isinstance(err["field"], str), f"field is not a string: {body!r}"
    return True


# -- what is drawn beside schemathesis's case ----------------------------------------------


def _credentials(path: str) -> st.SearchStrategy[str | None]:
    """Mostly the right key (so that cases get past auth), sometimes a wrong one or none."""
    right, other = (SRE_KEY, FRONT_KEY) if path.startswith("/v1/admin") else (FRONT_KEY, SRE_KEY)
    return st.sampled_from([right] * 8 + [other, "not-a-key", "x" * 600, None])


# Damage to a body, as it goes on the wire; None sends the case as drawn.
DAMAGE = [None] * 6 + ["malformed_json", "not_utf8", "oversized", "wrong_content_type"]


def _amounts() -> st.SearchStrategy[int]:
    """Mostly inside the denomination limits (5 to 2,000 CNY-equivalent), sometimes not."""
    return st.one_of(st.integers(5_000, 100_000), st.integers(5_000, 100_000), st.integers(1, 10**12))


def _valid_recharge() -> st.SearchStrategy[dict[str, Any]]:
    instrument = st.one_of(st.builds(lambda t: {"token": t}, st.sampled_from(["tok_a", "tok_b"])),
                           st.builds(lambda n: {"account_number": n}, st.from_regex(r"\A[0-9]{12,19}\Z")))
    return st.fixed_dictionaries(
        {"user_id": st.sampled_from([USER, "u_fuzz_2"]), "amount_minor": _amounts(),
         "currency": st.sampled_from(["CNY", "PHP"]), "country": st.sampled_from(["CN", "PH"]),
         "method": st.just("ewallet"), "instrument": instrument},
        optional={"metadata": st.dictionaries(st.sampled_from(["order", "segment"]), st.text(max_size=20),
                                              max_size=2)},
    )


def _valid_quote() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"user_id": st.just(USER), "amount_minor": _amounts(),
                                  "currency": st.sampled_from(["CNY", "PHP"])})


def _valid_template() -> st.SearchStrategy[dict[str, Any]]:
    instrument = st.one_of(st.builds(lambda t: {"token": t}, st.sampled_from(["tok_a", "tok_b"])),
                           st.builds(lambda n: {"account_number": n}, st.from_regex(r"\A[0-9]{12,19}\Z")))
    return st.fixed_dictionaries(
        {"name": st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2fff), min_size=1, max_size=64),
         "amount_minor": _amounts(), "currency": st.sampled_from(["CNY", "PHP"]),
         "country": st.sampled_from(["CN", "PH"]), "method": st.just("ewallet"), "instrument": instrument})


def _valid_template_recharge(template_id: str) -> st.SearchStrategy[dict[str, Any]]:
    """A recharge from the fuzz user's token template (SPEC 22), sometimes naming its fields."""
    return st.fixed_dictionaries(
        {"user_id": st.just(USER), "template_id": st.just(template_id)},
        optional={"amount_minor": st.just(8500), "currency": st.just("CNY"), "instrument": st.just({"token": "tok_a"}),
                  "metadata": st.dictionaries(st.sampled_from(["order"]), st.text(max_size=20), max_size=1)},
    )


def _valid_bodies(template_id: str) -> dict[tuple[str, str], st.SearchStrategy[dict[str, Any]]]:
    return {("POST", "/v1/recharges"): st.one_of(_valid_recharge(), _valid_template_recharge(template_id)),
            ("POST", "/v1/quotes"): _valid_quote(), ("POST", "/v1/users/{user_id}/templates"): _valid_template()}


def _real_path_parameters(path: str, recharge_id: str, template_id: str) -> dict[str, str] | None:
    """Names that exist on the server, so that cases also reach past the 404."""
    if "/templates" in path:
        return {"user_id": USER, **({"id": template_id} if "{id}" in path else {})}
    if "{channel}" in path:
        return {"channel": CHANNEL}
    if "{name}" in path:
        return {"name": CHANNEL}
    if "{id}" in path:
        return {"id": recharge_id}
    if "{user_id}" in path:
        return {"user_id": USER}
    return None


def _cases(operation: Any, mode: GenerationMode, recharge_id: str,
           template_id: str) -> st.SearchStrategy[schemathesis.Case]:
    drawn = operation.as_strategy(generation_mode=mode)
    real = _real_path_parameters(operation.path, recharge_id, template_id)
    if real is None:
        return drawn
    return st.one_of(drawn, operation.as_strategy(generation_mode=mode, path_parameters=real))


def _code(response: requests.Response) -> str:
    try:
        return " " + response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""


def _damage(body: bytes, damage: str | None) -> tuple[bytes, str]:
    if damage == "malformed_json":
        return body[: max(1, len(body) // 2)] + b"{", "application/json"
    if damage == "not_utf8":
        return b'{"user_id": "\xff\xfe"}', "application/json"
    if damage == "oversized":
        return b'{"pad": "' + b"x" * (70 * 1024) + b'"}', "application/json"
    if damage == "wrong_content_type":
        return body, "text/plain"
    return body, "application/json"


# -- the run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with checked_stack(tmp, CHANNELS, limits={"per_client": {"rate_per_s": 100_000, "burst": 100_000}},
                       sync_wait_s=0.5) as orch:
        yield orch


def _modes(operation: Any) -> list[GenerationMode]:
    """Negative cases need something to break: a parameter or a body."""
    declared = OPENAPI["paths"][operation.path][operation.method.lower()]
    if declared.get("parameters") or declared.get("requestBody"):
        return list(CASES)
    return [GenerationMode.POSITIVE]


class Fuzz:
    def __init__(self, base_url: str, session: requests.Session, recharge_id: str,
                 templates: tuple[str, str]) -> None:
        self.base_url = base_url
        self.session = session
        self.recharge_id = recharge_id
        # One template named in paths (a DELETE may take it), one that recharges name.
        self.template_id, recharged = templates
        self.valid = _valid_bodies(recharged)
        self.cases: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()

    def send(self, case: schemathesis.Case, token: str | None, damage: str | None, signed: bool) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        extra: dict[str, Any] = {}
        if damage is not None or signed:
            body = case.body
            raw = b"" if isinstance(body, NotSet) else body if isinstance(body, bytes) else json.dumps(body).encode()
            raw, ctype = _damage(raw, damage)
            headers["Content-Type"] = ctype
            if signed:
                headers[webhooks.SIGNATURE_HEADER] = webhooks.sign(CHANNELS[0]["webhook_secret"], raw,
                                                                   int(time.time()))
            extra["data"] = raw
        label = f"{case.method.upper()} {case.operation.path}"
        self.cases[label] += 1
        response = case.call(base_url=self.base_url, session=self.session, headers=headers, timeout=15, **extra)
        self.statuses[f"{label} {response.status_code}{_code(response)}"] += 1
        # A query parameter drawn as an empty list or object is not on the wire at all: what was
        # sent is not the case drawn, so the checks that judge the case are left out.
        vanished = any(v in ({}, []) for v in (case.query or {}).values())
        checks = ANSWER_CHECKS + (CASE_CHECKS if damage is None and not vanished else [])
        case.validate_response(response, checks=checks, additional_checks=[error_shape], headers=headers,
                               transport_kwargs={"base_url": self.base_url, "session": self.session,
                                                 "headers": headers})

    def operation(self, operation: Any, mode: GenerationMode) -> None:
        has_body = "requestBody" in OPENAPI["paths"][operation.path][operation.method.lower()]
        valid = self.valid.get((operation.method.upper(), operation.path))
        # Positive recharges and quotes are mostly fully valid, so that they reach pricing,
        # risk and the provider; the rest keep schemathesis's body.
        valid_bodies = (st.none() if valid is None or mode is GenerationMode.NEGATIVE
                        else st.tuples(st.sampled_from([False, True, True, True]), valid)
                        .map(lambda use: use[1] if use[0] else None))
        is_webhook = operation.path.startswith("/v1/webhooks/")

        @seed(SEED)
        @settings(max_examples=CASES[mode], deadline=None, database=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                  verbosity=hypothesis.Verbosity.quiet)
        @given(case=_cases(operation, mode, self.recharge_id, self.template_id), token=_credentials(operation.path),
               damage=st.sampled_from(DAMAGE) if has_body else st.none(),
               signed=st.booleans() if is_webhook else st.just(False), body=valid_bodies)
        def run(case: schemathesis.Case, token: str | None, damage: str | None, signed: bool,
                body: dict[str, Any] | None) -> None:
            if body is not None:
                case.body = body
            self.send(case, token, damage, signed)

        run()


def _first_recharge(base_url: str) -> str:
    body = {"user_id": USER, "amount_minor": 8500, "currency": "CNY", "country": "CN", "method": "ewallet",
            "instrument": {"token": "tok_a"}}
    r = requests.post(base_url + "/v1/recharges", json=body, timeout=15,
                      headers={"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": "fuzz-first"})
    assert r.status_code in (201, 202), r.text
    return r.json()["id"]


def _templates(base_url: str) -> tuple[str, str]:
    made = []
    for name in ("fuzz path", "fuzz recharge"):
        body = {"name": name, "amount_minor": 8500, "currency": "CNY", "country": "CN", "method": "ewallet",
                "instrument": {"token": "tok_a"}}
        r = requests.post(f"{base_url}/v1/users/{USER}/templates", json=body, timeout=15,
                          headers={"Authorization": f"Bearer {FRONT_KEY}"})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
    return made[0], made[1]


def test_schemathesis_fuzzes_every_operation_of_the_live_server(live, fuzz_report):
    started = time.monotonic()
    # The document as the server serves it (from_url would leave out the document's own
    # operation, GET /v1/openapi.json, as the schema's location).
    served = requests.get(live.url + "/v1/openapi.json", timeout=10)
    assert served.status_code == 200, served.text
    schema = schemathesis.openapi.from_dict(served.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    declared = {f"{m.upper()} {p}" for p, ops in OPENAPI["paths"].items() for m in ops}
    assert {f"{op.method.upper()} {op.path}" for op in operations} == declared
    failures: list[str] = []
    with requests.Session() as session:
        fuzz = Fuzz(live.url, session, _first_recharge(live.url), _templates(live.url))
        for operation in operations:
            for mode in _modes(operation):
                try:
                    fuzz.operation(operation, mode)
                except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed; all failures reported
                    failures.append(f"{operation.method.upper()} {operation.path} [{mode.value}]: {exc}")
    report = {"schemathesis": schemathesis.__version__, "seed": SEED,
              "cases_per_operation": dict(sorted(fuzz.cases.items())), "total": sum(fuzz.cases.values()),
              "statuses": dict(sorted(fuzz.statuses.items())), "seconds": round(time.monotonic() - started, 1)}
    fuzz_report.update(report)
    (live.log_path.parent / "fuzz_report.json").write_text(json.dumps(report, indent=1))
    assert not failures, "\n\n".join(failures)
    never = declared - set(fuzz.cases)
    assert not never, f"operations never fuzzed: {sorted(never)}"
    assert "unhandled_error" not in live.tail(10**8), "the server logged an unhandled error"
