"""``make demo``: the product in three minutes, for a newcomer.

Starts the provider simulator (8 channels of three kinds, three currencies) and the
orchestrator on SQLite as child processes, sends a steady stream of recharges from many
users, and shows what routing does live. A third of the way in, the busiest channel goes
down and another browns out (x20 latency); both come back later. Along the way some
recharges are refunded (in part or whole) and some disputed at the provider, and a small
webhook receiver stands in for the front service: it verifies each signed notification
the orchestrator sends. Users keep to a favourite amount; returning users save a template
and recharge from it, others ask for amount suggestions first; the largest CNY amounts are
challenged (3-D Secure) and their payers complete, abandon or ignore the step-up. At the
end it checks, against the simulator's own ledger, that every recharge was charged at most
once and credited exactly once, refunds and disputes included, and that every notification
reached the receiver at least once.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import sqlite3
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from orchestrator.invariants import LedgerPayment, Report, SqliteFile, check
from orchestrator.launch import ROOT, Child, free_port

__all__ = ["main"]

FRONT_KEY = "front-web-demo-key"  # the example config's demo keys (stored there as hashes)
SRE_KEY = "sre-demo-key"
NOTIFY_SECRET = "whsec_demo_front_web_notifications"
REFUND_EVERY = 40  # one succeeded recharge in this many is refunded (every other one in part)
DISPUTES = 9  # disputes opened at the provider: a third won, a third lost, a third left open
MARKETS = [  # (currency, country, share, denominations in minor units)
    ("CNY", "CN", 0.6, [600, 3000, 6800, 12800, 32800, 64800]),
    ("PHP", "PH", 0.25, [5000, 10000, 25000, 50000]),
    ("MYR", "MY", 0.15, [500, 1000, 5000, 10000]),
]
# How users pay: mostly e-wallets (direct APIs, ~28 ms), some by bank transfer (a bank channel:
# ~4.8 s, often pending and settled by webhook) or in USDT (~1.2 s, sometimes pending).
METHODS = [("ewallet", 0.85), ("bank_transfer", 0.10), ("crypto", 0.05)]
USERS = 2000
RETURNING = 500  # users user_0..user_499 save their first succeeded recharge as a template
FAVOURITE = 0.7  # the share of a user's recharges at their favourite amount
SUGGEST_EVERY = 4  # one recharge in this many (not from a template) asks for suggestions first
ACTION_TTL_S = 10.0  # the demo's routing.action_ttl_s: a step-up its payer ignores ends in 10 s


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    first_channel: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=5000))
    latencies: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=20000))
    errors: Counter[str] = field(default_factory=Counter)
    failovers: int = 0
    refunds: Counter[str] = field(default_factory=Counter)
    disputes: Counter[str] = field(default_factory=Counter)
    notifications: int = 0  # deliveries the receiver verified and recorded
    sold: list[dict[str, Any]] = field(default_factory=list)
    templates: dict[str, str] = field(default_factory=dict)  # user -> their template's id
    from_template: Counter[str] = field(default_factory=Counter)  # statuses of recharges from templates
    suggested: Counter[str] = field(default_factory=Counter)  # asked, top1, top3, basis:<basis>

    def window(self, seconds: float) -> tuple[list[float], Counter[str]]:
        since = time.monotonic() - seconds
        lat = sorted(ms for t, ms in self.latencies if t >= since)
        share = Counter(ch for t, ch in self.first_channel if t >= since)
        return lat, share


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


class Demo:
    def __init__(self, workdir: Path, duration: float, rate: float, live: bool) -> None:
        self.dir = workdir
        self.duration = duration
        self.rate = rate
        self.live = live
        self.tally = Tally()
        self.health: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.phase = "starting"
        self.sim: Child | None = None
        self.orch: Child | None = None
        self.receiver: Child | None = None
        self.started = time.monotonic()
        self.deleted_ok = False
        self.step_ups_ok = False
        self.reconcile_s = 5.0
        self.outage: tuple[str, float, float] = ("", 0.0, 0.0)  # channel down, from, to (epoch s)

    # -- set-up -------------------------------------------------------------------------

    def _configs(self) -> tuple[Path, Path]:
        sim_port, orch_port = free_port(), free_port()
        sim_doc = yaml.safe_load((ROOT / "config" / "simulator.example.yaml").read_text())
        orch_doc = yaml.safe_load((ROOT / "config" / "orchestrator.example.yaml").read_text())
        fees = {}
        for ch in orch_doc["channels"]:
            ch["base_url"] = f"http://127.0.0.1:{sim_port}/{ch['name']}"
            fees[ch["name"]] = ch.get("fee") or {}
        for ch in sim_doc["channels"]:  # the providers charge the fees our config expects
            fee = fees.get(ch["name"], {})
            ch.setdefault("behaviour", {}).update(settlement_fee_percent=fee.get("percent", 0),
                                                  settlement_fee_fixed_minor=fee.get("fixed_minor", 0))
            if ch.get("behaviour", {}).get("three_ds"):  # the provider outwaits us: our expiry is what shows
                ch["behaviour"]["action_ttl_s"] = 3 * ACTION_TTL_S
            if ch["name"] == "wechat_direct":  # a provider that asks for a step-up on its own now and then
                ch["behaviour"]["requires_action_rate"] = 0.02
        orch_doc["routing"]["action_ttl_s"] = ACTION_TTL_S
        # 2,000 users at 100 recharges/s each recharge every 20 s or so: the behaviour model would
        # read every one as a velocity burst. It scores and explains each recharge, observing.
        orch_doc["risk"]["model"]["enforce"] = False
        self.reconcile_s = float(orch_doc["routing"].get("inquiry", {}).get("reconcile_interval_s", 5.0))
        orch_doc["server"]["port"] = orch_port
        orch_doc["storage"]["url"] = f"sqlite:///{self.dir / 'orchestrator.db'}"
        # Rebalanced a few times in the run, to watch the pools follow demand.
        orch_doc["pool_rebalance_interval_s"] = max(5.0, self.duration / 4)
        receiver_port = free_port()
        for client in orch_doc["clients"]:
            if client["name"] == "front-web":
                client["notify"] = {"url": f"http://127.0.0.1:{receiver_port}/notifications", "secret": NOTIFY_SECRET,
                                    "events": ["recharge.succeeded", "recharge.failed", "recharge.declined",
                                               "recharge.blocked", "recharge.pending", "recharge.requires_action",
                                               "recharge.settled",
                                               "recharge.settlement_failed", "refund.succeeded",
                                               "refund.failed", "dispute.opened", "dispute.won", "dispute.lost"]}
        sim_path, orch_path = self.dir / "simulator.yaml", self.dir / "orchestrator.yaml"
        sim_path.write_text(yaml.safe_dump(sim_doc))
        orch_path.write_text(yaml.safe_dump(orch_doc, sort_keys=False))
        self.sim = Child("simulator", ["orchestrator", "simulate", "--config", str(sim_path), "--port", str(sim_port)],
                         self.dir / "simulator.log", f"http://127.0.0.1:{sim_port}", "/_sim/stats")
        self.orch = Child("orchestrator", ["orchestrator", "serve", "--config", str(orch_path)],
                          self.dir / "orchestrator.log", f"http://127.0.0.1:{orch_port}", "/readyz")
        self.receiver = Child("receiver", ["orchestrator.receiver", "--secret", NOTIFY_SECRET, "--port",
                                           str(receiver_port), "--out", str(self.dir / "notifications.jsonl")],
                              self.dir / "receiver.log", f"http://127.0.0.1:{receiver_port}", "/_received")
        return sim_path, orch_path

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> int:
        self._configs()
        assert self.sim is not None and self.orch is not None and self.receiver is not None
        try:
            self.sim.start()
            self.receiver.start()
            await asyncio.gather(self.sim.wait_ready(), self.receiver.wait_ready())
            self.orch.start()
            await self.orch.wait_ready()
            await self._fund_pools()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session:
                self.started = time.monotonic()
                view = asyncio.create_task(self._view())
                watch = asyncio.create_task(self._watch(session))
                try:
                    await asyncio.gather(self._load(session), self._chaos(session), self._disputes(session))
                    deleted = await self._delete_templates(session)
                    self.phase = "settling: waiting for pending recharges"
                    await self._settle()
                    self.phase = "settling: waiting for refunds and notifications"
                    await self._settle_after_sale()
                finally:
                    for task in (view, watch):
                        task.cancel()
                    await asyncio.gather(view, watch, return_exceptions=True)
                report = await self._verify(session)
                notified = await self._notified(session)
                pools = await self._pools(session)
                self.phase = "reconciling today's settlement reports"
                reconciled = await self._reconcile(session)
            payer = self._payer_lines(deleted)
            return self._summary(report, notified, pools,
                                 payer + time_to_credit(self.dir / "orchestrator.db") + reconciled)
        finally:
            for child in (self.orch, self.receiver, self.sim):
                child.stop()

    async def _load(self, session: aiohttp.ClientSession) -> None:
        rng = random.Random(7)
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < self.duration:
            n += 1
            if len(tasks) < 2000:
                task = asyncio.create_task(self._one(session, n, rng))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, start + n / self.rate - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)

    async def _one(self, session: aiohttp.ClientSession, n: int, rng: random.Random) -> None:
        u = rng.randrange(USERS)
        user = f"user_{u}"
        habit = random.Random(u)  # a user's own market, method and favourite amount, the same every run
        currency, country, _, amounts = habit.choices(MARKETS, weights=[m[2] for m in MARKETS])[0]
        method = habit.choices([m for m, _ in METHODS], weights=[w for _, w in METHODS])[0]
        amount = habit.choice(amounts) if rng.random() < FAVOURITE else rng.choice(amounts)
        template = self.tally.templates.get(user)
        assert self.orch is not None
        if template:  # "lightning recharge": two clicks ("" while its save is in flight)
            body: dict[str, Any] = {"user_id": user, "template_id": template}
        else:
            if n % SUGGEST_EVERY == 0:
                await self._suggest(session, user, currency, amount)
            body = {"user_id": user, "amount_minor": amount, "currency": currency, "country": country,
                    "method": method, "instrument": {"token": f"tok_{u}_{habit.randrange(10**6)}"}}
        headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"demo-{n}"}
        self.tally.sent += 1
        t = time.monotonic()
        try:
            async with session.post(self.orch.url + "/v1/recharges", json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=30)) as r:
                rec = await r.json()
                if r.status not in (201, 202):
                    self.tally.errors[f"http_{r.status} {rec.get('error', {}).get('code', '')}".strip()] += 1
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.errors[type(exc).__name__] += 1
            return
        now = time.monotonic()
        self.tally.answered += 1
        self.tally.statuses[rec["status"]] += 1
        self.tally.latencies.append((now, (now - t) * 1000))
        if template:
            self.tally.from_template[rec["status"]] += 1
        if rec["attempts"]:
            self.tally.first_channel.append((now, rec["attempts"][0]["channel"]))
            self.tally.failovers += len(rec["attempts"]) - 1
        if rec["status"] == "succeeded":
            self.tally.sold.append(rec)
            if n % REFUND_EVERY == 0:
                await self._refund(session, rec, None if n % (2 * REFUND_EVERY) == 0 else rec["amount_minor"] // 3)
            if u < RETURNING and user not in self.tally.templates:
                await self._save_template(session, user, body)

    async def _suggest(self, session: aiohttp.ClientSession, user: str, currency: str, chosen: int) -> None:
        """The front service's recharge page asks which amounts to offer first."""
        assert self.orch is not None
        try:
            async with session.get(f"{self.orch.url}/v1/users/{user}/suggestions", params={"currency": currency},
                                   headers={"Authorization": f"Bearer {FRONT_KEY}"}) as r:
                doc = await r.json()
                if r.status != 200:
                    self.tally.errors[f"suggestions http_{r.status}"] += 1
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.errors[f"suggestions {type(exc).__name__}"] += 1
            return
        offered = [a["amount_minor"] for a in doc["amounts"]]
        self.tally.suggested["asked"] += 1
        self.tally.suggested[f"basis:{doc['basis']}"] += 1
        self.tally.suggested["top1"] += offered[:1] == [chosen]
        self.tally.suggested["top3"] += chosen in offered[:3]

    async def _save_template(self, session: aiohttp.ClientSession, user: str, body: dict[str, Any]) -> None:
        """A returning user saves the recharge that just succeeded as a template."""
        assert self.orch is not None
        self.tally.templates[user] = ""  # one save per user, even with two recharges answering at once
        doc = {k: v for k, v in body.items() if k != "user_id"} | {"name": "lightning"}
        async with session.post(f"{self.orch.url}/v1/users/{user}/templates", json=doc,
                                headers={"Authorization": f"Bearer {FRONT_KEY}"}) as r:
            got = await r.json()
            if r.status != 201:
                self.tally.errors[f"template http_{r.status}"] += 1
                del self.tally.templates[user]
                return
        self.tally.templates[user] = got["id"]

    async def _delete_templates(self, session: aiohttp.ClientSession) -> list[str]:
        """A few users delete their template; a recharge from a deleted one must be 404."""
        assert self.orch is not None
        headers = {"Authorization": f"Bearer {FRONT_KEY}"}
        saved = sorted((u, t) for u, t in self.tally.templates.items() if t)[:10]
        outcomes: list[str] = []
        for user, tpl in saved:
            async with session.delete(f"{self.orch.url}/v1/users/{user}/templates/{tpl}", headers=headers) as r:
                outcomes.append(f"delete {r.status}")
            async with session.post(self.orch.url + "/v1/recharges", json={"user_id": user, "template_id": tpl},
                                    headers={**headers, "Idempotency-Key": f"demo-deleted-{tpl}"}) as r:
                doc = await r.json()
                outcomes.append(f"recharge {r.status} {doc.get('error', {}).get('code', doc.get('status'))}")
        return outcomes

    async def _fund_pools(self) -> None:
        """Partners deposit into each pool (as they would, from their pre-deposit funds): three
        times its target, which a full run at 100/s does not exhaust (about 9 million coins)."""
        assert self.orch is not None
        doc = yaml.safe_load((self.dir / "orchestrator.yaml").read_text())
        async with aiohttp.ClientSession() as session:
            for pool in doc.get("pools", []):
                async with session.post(f"{self.orch.url}/v1/admin/pools/{pool['name']}/deposits",
                                        json={"coins": 3 * pool["target_coins"],
                                              "reference": f"demo-{pool['name']}"},
                                        headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
                    r.raise_for_status()

    async def _reconcile(self, session: aiohttp.ClientSession) -> list[str]:
        """Every channel's settlement report of today, matched against the journal (SPEC 21)."""
        assert self.orch is not None
        headers = {"Authorization": f"Bearer {SRE_KEY}"}
        day = time.strftime("%Y-%m-%d", time.gmtime())
        async with session.get(self.orch.url + "/v1/health/channels") as r:
            channels = [c["channel"] for c in (await r.json())["channels"]]
        runs = []
        for channel in channels:
            async with session.post(self.orch.url + "/v1/admin/reconciliations", json={"channel": channel, "date": day},
                                    headers=headers) as r:
                run = await r.json()
            for _ in range(300):
                if run.get("status") != "running":
                    break
                await asyncio.sleep(0.2)
                async with session.get(f"{self.orch.url}/v1/admin/reconciliations/{run['id']}", headers=headers) as r:
                    run = await r.json()
            runs.append(run)
        kinds: Counter[str] = Counter()
        for run in runs:
            for kind, c in ((run.get("summary") or {}).get("classes") or {}).items():
                kinds[kind] += c["count"]
        completed = sum(r.get("status") == "completed" for r in runs)
        return [f"settlement reconciliation of today's reports: {completed} of {len(runs)} channels completed, "
                f"{sum(r.get('report_items', 0) for r in runs):,} items settled, discrepancies: "
                + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items()) if n) or "none")]

    async def _pools(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        assert self.orch is not None
        async with session.get(f"{self.orch.url}/v1/admin/pools", headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
            return list((await r.json())["pools"])

    async def _refund(self, session: aiohttp.ClientSession, rec: dict[str, Any], amount: int | None) -> None:
        """A support agent refunds a recharge, in part or whole (the front service's call)."""
        assert self.orch is not None
        rec["refund_asked"] = True  # the payer has no reason left to dispute it
        headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"refund-{rec['id']}"}
        body = {"reason": "support case"} if amount is None else {"amount_minor": amount, "reason": "partial"}
        try:
            async with session.post(f"{self.orch.url}/v1/recharges/{rec['id']}/refunds", json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=30)) as r:
                doc = await r.json()
                self.tally.refunds[doc["status"] if r.status in (201, 202) else doc["error"]["code"]] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.errors[f"refund {type(exc).__name__}"] += 1

    async def _disputes(self, session: aiohttp.ClientSession) -> None:
        """Payers dispute a few payments at their providers (chargebacks), spread over the run."""
        assert self.sim is not None
        for n in range(DISPUTES):
            await asyncio.sleep(self.duration * 0.8 / DISPUTES)
            # A payment the provider captured (not an instant credit still settling when answered).
            candidates = [r for r in self.tally.sold[-200:]
                          if r.get("disputed") is None and not r.get("refund_asked") and any(
                              a["outcome"] == "captured" and a["channel"] == r["channel"] for a in r["attempts"])]
            if not candidates:
                continue
            rec = candidates[n * 7 % len(candidates)]
            rec["disputed"] = outcome = ("won", "lost", None)[n % 3]
            att = next(a for a in rec["attempts"] if a["outcome"] == "captured" and a["channel"] == rec["channel"])
            async with session.post(f"{self.sim.url}/_sim/{rec['channel']}/payments/{att['reference']}/dispute",
                                    json={"outcome": outcome}) as r:
                self.tally.disputes[outcome or "open" if r.status == 200 else "refused"] += 1

    async def _chaos(self, session: aiohttp.ClientSession) -> None:
        assert self.sim is not None
        self.phase = "steady traffic"
        await asyncio.sleep(self.duration * 0.35)
        _, share = self.tally.window(10)
        busiest = share.most_common(1)[0][0] if share else "alipay_direct"
        other = next((ch for ch, _ in share.most_common() if ch != busiest), "wechat_direct")
        await self._behave(session, busiest, outage=True, outage_mode="refuse")
        await self._behave(session, other, latency_multiplier=20)
        self.phase = f"OUTAGE of {busiest} + 20x BROWNOUT of {other}"
        self.events.append(f"{self._t():5.1f}s  {busiest} down, {other} browned out x20")
        self.outage = (busiest, time.time(), math.inf)
        await asyncio.sleep(self.duration * 0.35)
        await self._behave(session, busiest, outage=False)
        self.outage = (busiest, self.outage[1], time.time())
        await self._behave(session, other, latency_multiplier=1)
        self.phase = f"recovered: {busiest} and {other} back"
        self.events.append(f"{self._t():5.1f}s  {busiest} and {other} restored")

    async def _behave(self, session: aiohttp.ClientSession, channel: str, **changes: Any) -> None:
        assert self.sim is not None
        async with session.put(f"{self.sim.url}/_sim/{channel}/behaviour", json=changes) as r:
            r.raise_for_status()

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        assert self.orch is not None
        assert self.receiver is not None
        while True:
            try:
                async with session.get(self.orch.url + "/v1/health/channels") as r:
                    self.health = (await r.json())["channels"]
                async with session.get(self.receiver.url + "/_received") as r:
                    self.tally.notifications = (await r.json())["deliveries"]
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(1)

    async def _settle(self, limit_s: float = 60) -> None:
        db = self.dir / "orchestrator.db"
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                (open_,) = conn.execute("SELECT count(*) FROM recharges WHERE status IN ('processing','pending',"
                                        "'requires_action') OR settlement = 'pending'").fetchone()
            finally:
                conn.close()
            if open_ == 0:
                return
            self.phase = (f"settling: {open_} recharges (or instant credits) still pending at their providers "
                          "or waiting for their payers' step-up")
            await asyncio.sleep(1)

    async def _settle_after_sale(self, limit_s: float = 60) -> None:
        """Until no refund is pending at its provider and the outbox is empty."""
        db = self.dir / "orchestrator.db"
        deadline = time.monotonic() + limit_s
        await asyncio.sleep(2)  # the last dispute outcomes and refund webhooks land
        while time.monotonic() < deadline:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                (refunds,) = conn.execute("SELECT count(*) FROM refunds WHERE status = 'pending'").fetchone()
                (notices,) = conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()
            finally:
                conn.close()
            if refunds == notices == 0:
                return
            self.phase = f"settling: {refunds} refunds pending, {notices} notifications to deliver"
            await asyncio.sleep(1)

    async def _notified(self, session: aiohttp.ClientSession) -> tuple[int, int, int, list[str]]:
        """(notices written, of them received, deliveries, the ids never received)."""
        assert self.receiver is not None
        async with session.get(self.receiver.url + "/_received") as r:
            got = await r.json()
        received = {e["id"] for e in got["events"]}
        conn = sqlite3.connect(f"file:{self.dir / 'orchestrator.db'}?mode=ro", uri=True)
        try:
            written = [nid for (nid,) in conn.execute("SELECT id FROM outbox ORDER BY seq")]
        finally:
            conn.close()
        missing = [nid for nid in written if nid not in received]
        return len(written), len(written) - len(missing), got["deliveries"], missing

    async def _verify(self, session: aiohttp.ClientSession) -> Report:
        assert self.sim is not None
        async with session.get(self.sim.url + "/_sim/ledger") as r:
            payments = (await r.json())["payments"]
        ledger = [LedgerPayment(p["channel"], p["reference"], p["status"], p.get("amount_minor"), p.get("currency"),
                                p.get("refunded_minor"))
                  for p in payments]
        return await check(SqliteFile(self.dir / "orchestrator.db"), ledger, settled=True)

    def _t(self) -> float:
        return time.monotonic() - self.started

    # -- output -------------------------------------------------------------------------

    def _payer_lines(self, deleted: list[str]) -> list[str]:
        """Summary lines for the payer's side: templates, suggestions and step-ups (SPEC 22)."""
        t = self.tally
        slack = self.reconcile_s + 1.0  # past its action_ttl_s: one reconcile pass and one write
        conn = sqlite3.connect(f"file:{self.dir / 'orchestrator.db'}?mode=ro", uri=True)
        try:
            challenged = conn.execute("SELECT status, coalesce(reason, ''), count(*), max(updated_at - created_at) "
                                      "FROM recharges WHERE step_up = 1 GROUP BY 1, 2 ORDER BY 3 DESC").fetchall()
            demanded = conn.execute("SELECT r.status, coalesce(r.reason, ''), count(*), "
                                    "max(r.updated_at - r.created_at) FROM recharges r WHERE r.step_up = 0 AND EXISTS (SELECT 1 FROM attempts a "
                                    "WHERE a.recharge_id = r.id AND a.action_url IS NOT NULL) "
                                    "GROUP BY 1, 2 ORDER BY 3 DESC").fetchall()
            late_rows = conn.execute("SELECT a.channel, a.action_expires_at FROM recharges r JOIN attempts a ON "
                                     "a.recharge_id = r.id AND a.action_url IS NOT NULL WHERE CASE WHEN r.status IN "
                                     "('processing', 'requires_action', 'pending') THEN ? ELSE r.updated_at END "
                                     "> a.action_expires_at + ?", (time.time(), slack)).fetchall()
        finally:
            conn.close()
        self.deleted_ok = bool(deleted) and all(
            o in ("delete 204", "recharge 404 template_not_found") for o in deleted)
        asked = t.suggested["asked"]
        bases = ", ".join(f"{k.split(':')[1]} {v}" for k, v in sorted(t.suggested.items()) if k.startswith("basis:"))

        def ended(rows: list[tuple[str, str, int, float]]) -> str:
            return "; ".join(f"{status}{' ' + reason if reason else ''} {n} (the slowest after {slowest:.1f} s)"
                             for status, reason, n, slowest in rows) or "none"

        # Open past action_ttl_s + the reconcile interval only while its void cannot be confirmed:
        # its channel went down before the reconcile pass that would have voided it.
        down, since, until = self.outage
        late = Counter("outage" if ch == down and since - slack <= exp <= until else "unexplained"
                       for ch, exp in late_rows)
        self.step_ups_ok = not late["unexplained"]
        return [
            f"templates: {sum(1 for v in t.templates.values() if v)} saved by returning users, "
            f"{t.from_template.total()} recharges made from them ({dict(t.from_template) or 'none'}); "
            f"{len(deleted) // 2} deleted, then a recharge from each: "
            + ("404 template_not_found, as it must" if self.deleted_ok else f"FAILED: {deleted}"),
            f"amount suggestions: asked before {asked} recharges ({bases or 'none'}); the amount the user then chose "
            f"was the first suggested in {t.suggested['top1'] / max(1, asked):.0%}, among the three in "
            f"{t.suggested['top3'] / max(1, asked):.0%}",
            f"3-D Secure step-ups: {sum(r[2] for r in challenged)} recharges challenged by risk, ended: "
            f"{ended(challenged)}; {sum(r[2] for r in demanded)} step-ups demanded by a channel on its own, "
            f"ended: {ended(demanded)} (action_ttl_s {ACTION_TTL_S:.0f} s, reconcile interval "
            f"{self.reconcile_s:.0f} s: "
            + (f"{late['outage']} ended later, their void waiting for {down} to come back" if late["outage"]
               else "none ended later")
            + (f"; FAILED: {late['unexplained']} ended later, or not at all, with their channel up"
               if late["unexplained"] else "") + ")",
        ]

    async def _view(self) -> None:
        if self.live:
            from rich.live import Live

            with Live(self._render(), refresh_per_second=4, transient=False) as live:
                while True:
                    await asyncio.sleep(0.5)
                    live.update(self._render())
        else:
            every = min(5.0, max(1.0, self.duration / 8))
            while True:
                await asyncio.sleep(every)
                lat, share = self.tally.window(every)
                top = ", ".join(f"{ch} {n / max(1, sum(share.values())):.0%}" for ch, n in share.most_common(3))
                print(f"[{self._t():5.1f}s] {self.phase}: sent {self.tally.sent}, answered {self.tally.answered}, "
                      f"p50 {_pct(lat, .5):.0f} ms, p99 {_pct(lat, .99):.0f} ms, top channels: {top}; "
                      f"refunds {sum(self.tally.refunds.values())}, notifications received "
                      f"{self.tally.notifications}, recharges from templates {self.tally.from_template.total()}, "
                      f"step-ups {self.tally.statuses['requires_action']}", flush=True)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        lat, share = self.tally.window(5)
        total_share = max(1, sum(share.values()))
        t = self.tally
        head = Table.grid(padding=(0, 3))
        head.add_row(f"[b]{self._t():5.1f}s[/b] / {self.duration:.0f}s", f"[b]{self.phase}[/b]")
        head.add_row(f"sent {t.sent}  answered {t.answered}",
                     f"throughput {len(lat) / 5:.0f}/s  p50 {_pct(lat, .5):.0f} ms  p99 {_pct(lat, .99):.0f} ms")
        head.add_row(" ".join(f"{k} {v}" for k, v in sorted(t.statuses.items())),
                     f"failovers {t.failovers}  errors {sum(t.errors.values())}")
        head.add_row(f"refunds {sum(t.refunds.values())}  disputes {sum(t.disputes.values())}",
                     f"notifications received by the front service {t.notifications}")
        head.add_row(f"templates {sum(1 for v in t.templates.values() if v)}  used {t.from_template.total()}",
                     f"step-ups answered requires_action {t.statuses['requires_action']}  suggestions asked "
                     f"{t.suggested['asked']}")
        table = Table(title="channels (share of first attempts, last 5 s)", expand=True)
        for col in ("channel", "kind", "breaker", "state", "p50 ms", "p99 ms", "success", "share"):
            table.add_column(col, justify="right" if col in ("p50 ms", "p99 ms", "success", "share") else "left",
                             no_wrap=True, min_width=13 if col == "channel" else None)
        for ch in self.health:
            lat_ms = ch.get("latency_ms") or {}
            breaker = (ch.get("breaker") or {}).get("state", "?")
            colour = {"closed": "green", "half_open": "yellow", "open": "red"}.get(breaker, "white")
            sr = ch.get("success_rate")
            s = share.get(ch["channel"], 0) / total_share
            table.add_row(ch["channel"], ch.get("kind", ""), f"[{colour}]{breaker}[/{colour}]", str(ch.get("state", "")),
                          f"{lat_ms.get('p50') or 0:.0f}", f"{lat_ms.get('p99') or 0:.0f}",
                          "-" if sr is None else f"{sr:.1%}", f"{s:4.0%} " + "█" * int(s * 10))
        events = "\n".join(self.events) or "(the outage comes a third of the way in)"
        return Group(Panel(head, title="recharge orchestrator demo"), table, Panel(events, title="events"))

    def _summary(self, report: Report, notified: tuple[int, int, int, list[str]],
                 pools: list[dict[str, Any]], credit: list[str]) -> int:
        t = self.tally
        written, received, deliveries, missing = notified
        log = self.dir / "orchestrator.log"
        errors = sum('"level":"error"' in line for line in log.read_text().splitlines()) if log.exists() else 0
        ok = report.ok and t.answered == t.sent and not missing and errors == 0 and self.deleted_ok and self.step_ups_ok
        lines = [
            "",
            "== summary ==",
            f"database: {self.dir / 'orchestrator.db'}",
            f"logs:     {self.dir / 'orchestrator.log'}, {self.dir / 'simulator.log'}, {self.dir / 'receiver.log'}",
            f"config:   {self.dir / 'orchestrator.yaml'}, {self.dir / 'simulator.yaml'}",
            f"notifications as received: {self.dir / 'notifications.jsonl'}",
            f"recharges sent {t.sent}, answered {t.answered}, journal holds {report.recharges}: {report.by_status}",
            f"provider captures kept {report.captures_kept}, late captures refunded {report.refunded}, "
            f"wallet credits {report.credits}",
            f"failovers seen by clients: {t.failovers}; client errors: {dict(t.errors) or 'none'}",
            f"refunds: {dict(t.refunds) or 'none'}; disputes opened at the providers: {dict(t.disputes) or 'none'}",
            "coin pools (coins now, target, demand since the last rebalancing, credits it was short for, coins "
            "lost on failed instant credits): " + ", ".join(
                f"{p['name']} {p['balance']:,} ({p['target_coins'] if p['target_coins'] is not None else '-'}, "
                f"{p['demand']:,}, {p['shortfalls']}, {p['lost_coins']:,})" for p in pools),
            "exactly-once check (simulator ledger vs journal, wallets and the coin ledger, refunds and disputes "
            "included): "
            + ("PASSED: every recharge charged at most once, every success credited exactly once"
               if report.ok else "FAILED"),
        ]
        lines += credit
        lines += [f"  violation: {v}" for v in report.violations[:20]]
        lines.append("errors logged by the orchestrator: " + ("none" if errors == 0 else
                                                               f"FAILED: {errors} (see {log})"))
        lines.append(f"notifications: {written} written to the outbox, {received} received and verified by the front "
                     f"service's receiver ({deliveries} deliveries, repeats included): "
                     + ("every notification delivered at least once" if not missing
                        else f"FAILED: {len(missing)} never delivered, e.g. {missing[:3]}"))
        print("\n".join(lines), flush=True)
        return 0 if ok else 1


# Credits, when each recharge was made, and (instant credits) when its payment settled.
_CREDITS = (
    "SELECT t.at - r.created_at, r.settlement, (SELECT MIN(e.at) FROM trail e WHERE e.recharge_id = r.id AND "
    "e.event = 'settled') - r.created_at, r.coins + r.bonus_coins FROM transfers t JOIN recharges r "
    "ON r.id = t.recharge_id WHERE t.kind = 'credit'"
)
TARGET_S = 15.0  # the seeds' target: 99.2% of recharges credited within 15 s


def time_to_credit(db: Path) -> list[str]:
    """Summary lines: seconds from a recharge's creation to its coins, with instant credit
    as it ran, and without it (the same credits, each instant one counted when its payment
    settled; a failed one not credited at all)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(_CREDITS).fetchall()
    finally:
        conn.close()
    with_it = sorted(r[0] for r in rows)
    without = sorted(r[2] if r[1] == "settled" else r[0] for r in rows if r[1] in (None, "settled"))
    instant = Counter(r[1] for r in rows if r[1] is not None)
    clawed = sum(r[3] for r in rows if r[1] == "failed")

    def line(times: list[float]) -> str:
        if not times:
            return "no credits"
        within = sum(t <= TARGET_S for t in times) / len(times)
        return (f"p50 {_pct(times, .5):.2f} s, p90 {_pct(times, .9):.2f} s, p99 {_pct(times, .99):.2f} s, "
                f"max {times[-1]:.2f} s; {within:.2%} within {TARGET_S:.0f} s ({len(times)} credits)")

    return [f"time to credit (recharge made -> coins in the wallet), with instant credit: {line(with_it)}",
            f"  without it (each instant credit counted when its payment settled, a failed one never): "
            f"{line(without)}",
            f"  instant credits: {instant.total()} ({instant['settled']} settled, {instant['failed']} failed and "
            f"clawed back ({clawed:,} coins), {instant['pending']} still settling)"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="orchestrator demo")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--rate", type=float, default=100.0, help="recharges per second (default 100)")
    p.add_argument("--dir", default=str(ROOT / "data" / "demo"), help="where the database, logs and configs go")
    p.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    args = p.parse_args(argv)
    workdir = Path(args.dir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    demo = Demo(workdir, args.duration, args.rate, live=sys.stdout.isatty() and not args.plain)
    print(f"demo: simulator + orchestrator on SQLite, {args.rate:.0f} recharges/s for {args.duration:.0f}s "
          f"(files in {workdir})", flush=True)
    try:
        import uvloop

        return uvloop.run(demo.run())
    except KeyboardInterrupt:
        for child in (demo.orch, demo.receiver, demo.sim):
            if child is not None:
                child.stop()
        print("\ndemo stopped (Ctrl-C); everything it started is stopped too.", flush=True)
        return 130
