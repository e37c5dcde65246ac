"""What the deploy tests share: Prometheus's own tools (missing is a failure, never a
skip: `make test` and .ci/run install them), the orchestrator's live exposition, and the
metric names a PromQL expression reads."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from channels.memory import Action, MemoryChannel
from config import parse
from orchestrator.api.app import build_app
from orchestrator.service import Service

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"

FRONT_KEY, SRE_KEY = "deploy-front-key", "deploy-sre-key"


def binary(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; the test fails when it is missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` and .ci/run install it as root (apt-get install "
                    f"prometheus, Debian's Prometheus 2.x); elsewhere put Prometheus 2.x's binaries on PATH")
    return found


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], input=None if stdin is None else stdin.decode(),
                          capture_output=True, text=True, cwd=cwd, timeout=120)


# -- the live exposition ----------------------------------------------------------------


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config_doc(db: Path) -> dict[str, Any]:
    """Two in-memory channels serving four markets, a coin pool: every family has samples."""
    def channel(name: str, currencies: list[str], countries: list[str]) -> dict[str, Any]:
        return {"name": name, "kind": "direct_api", "base_url": f"http://127.0.0.1:1/{name}",
                "webhook_secret": "whsec_secret_" + name, "currencies": currencies, "countries": countries,
                "methods": ["ewallet"]}

    return {
        "server": {"sync_wait_s": 5},
        "storage": {"url": f"sqlite:///{db}"},
        "clients": [{"name": "front", "key_sha256": _sha(FRONT_KEY), "scopes": ["recharge"]},
                    {"name": "sre", "key_sha256": _sha(SRE_KEY), "scopes": ["admin"]}],
        "channels": [channel("a", ["CNY"], ["CN"]), channel("b", ["CNY", "PHP"], ["CN", "PH"])],
        "routing": {"strategy": "priority"},  # a, then b: what each recharge meets is known
        "pools": [{"name": "cn", "countries": ["CN"], "target_coins": 1000, "low_water_coins": 100}],
        "pricing": {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404, "PHP": 0.0171}},
        "risk": {"max_amount_base": 100},
        "limits": {"per_user": {"rate_per_s": 1000, "burst": 1000}},
    }


class Running:
    """An orchestrator app over loopback HTTP on MemoryChannels (``channels`` by name)."""

    def __init__(self, client: TestClient, service: Service, channels: dict[str, MemoryChannel]) -> None:
        self.client = client
        self.service = service
        self.channels = channels

    async def recharge(self, key: str, amount_minor: int = 8500, user: str = "u_1") -> tuple[int, dict[str, Any]]:
        body = {"user_id": user, "amount_minor": amount_minor, "currency": "CNY", "country": "CN",
                "method": "ewallet", "instrument": {"token": "tok_abc"}}
        resp = await self.client.post("/v1/recharges", json=body,
                                      headers={"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": key})
        return resp.status, await resp.json()

    async def scrape(self) -> str:
        """``GET /metrics``, after the periodic readers of the store ran once."""
        await self.service.backlog_watch.once()
        await self.service.pool_watch.once()
        await self.service.dispatcher.gauges()
        resp = await self.client.get("/metrics")
        assert resp.status == 200
        return await resp.text()


@contextlib.asynccontextmanager
async def running(tmp: Path, doc: dict[str, Any] | None = None) -> AsyncIterator[Running]:
    channels: dict[str, MemoryChannel] = {}

    def factory(cfg: Any) -> MemoryChannel:
        channels[cfg.name] = MemoryChannel(cfg.name)
        return channels[cfg.name]

    service = Service(parse(doc or config_doc(tmp / "j.db")), channel_factory=factory, reconcile=False)
    client = TestClient(TestServer(build_app(service), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Running(client, service, channels)
    finally:
        await client.close()


async def traffic(app: Running) -> None:
    """Recharges that succeed, fail over, are blocked, and a few client errors: most
    label sets the product exports get a sample."""
    failing = iter(range(2))  # a's first two answers: not processed (each recharge fails over to b)

    def script(op: str, ref: str, n: int) -> Action:
        if op != "authorize":
            return Action.OK
        return Action.NOT_PROCESSED if next(failing, None) is not None else Action.CAPTURE

    app.channels["a"].script = script
    for i in range(12):
        status, body = await app.recharge(f"k{i}", user=f"u{i}")
        assert status == 201 and body["status"] == "succeeded", body
    status, body = await app.recharge("blocked", amount_minor=150_000)  # 210 USD: over risk's 100
    assert status == 201 and body["status"] == "blocked", body
    resp = await app.client.get("/v1/recharges/rc_0", headers={"Authorization": f"Bearer {FRONT_KEY}"})
    assert resp.status == 404
    resp = await app.client.post("/v1/recharges", data=b"{", headers={"Idempotency-Key": "x"})
    assert resp.status == 401


# -- names in expositions and in PromQL -----------------------------------------------------

_TYPE = re.compile(r"^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$", re.M)
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def exposed_names(text: str) -> set[str]:
    """Every series name an exposition declares (with or without samples yet), as
    Prometheus stores it: a histogram's ``_bucket``, ``_sum`` and ``_count``."""
    names = set()
    for name, kind in _TYPE.findall(text):
        names.update(name + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


# PromQL's functions and keywords: an identifier that is neither is a metric's name.
_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "count_over_time", "day_of_month", "day_of_week", "delta", "deriv", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "max_over_time", "min_over_time", "minute", "month", "predict_linear", "present_over_time",
    "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "time", "timestamp", "vector", "year",
}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                 "quantile"}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = _STRING.sub('""', expr)
    expr = re.sub(r"#[^\n]*", "", expr)  # comments
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = _LABEL_LISTS.sub("", expr)
    expr = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?(ms|s|m|h|d|w|y)?\b", "", expr)  # numbers, durations
    names = set()
    for m in _IDENT.finditer(expr):
        word = m.group(1)
        if word.lower() in _KEYWORDS or word in _FUNCTIONS or word in _AGGREGATIONS:
            continue
        names.add(word)
    return names
