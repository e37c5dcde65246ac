"""Coin pools (SPEC 20): deposits, the pools' view, and rebalancing.

Every coin a wallet holds came out of a pool, and every coin a pool holds came from
``issuance`` by a deposit (``orchestrator.journal`` keeps the double-entry ledger; credits,
refunds and clawbacks are written with the changes they belong to). Rebalancing moves coins
between the configured pools toward targets in proportion to each one's demand since the
last pass (its credits, counted on its account), or to their configured ``target_coins``
when there was none:

    balances, demand --plan_rebalance (pure)--> targets, moves --journal.rebalance--> one transaction

The store applies a plan only while every pool still holds what the plan read, so two
instances rebalancing at once move the coins once: the second plans again, and finds
nothing to move.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from config import PoolConfig
from orchestrator.clock import Clock
from orchestrator.errors import NotFound, Refusal
from orchestrator.journal import Account, Journal
from orchestrator.metrics import Metrics
from orchestrator.model import TrailEntry, Transfer, pool_account

__all__ = ["Deposit", "PoolDeps", "PoolWatch", "Rebalancer", "deposit", "plan_rebalance", "pools_view"]

log = structlog.get_logger(__name__)

_PLAN_TRIES = 5  # credits keep moving the balances; a plan read a moment ago is planned again


@dataclass(slots=True)
class PoolDeps:
    journal: Journal
    clock: Clock
    metrics: Metrics
    pools: Callable[[], Sequence[PoolConfig]]  # the running config's
    interval_s: Callable[[], float]


@dataclass(frozen=True, slots=True)
class Deposit:
    pool: str
    coins: int
    reference: str


async def deposit(cmd: Deposit, deps: PoolDeps) -> tuple[Transfer, bool]:
    """Coins into a configured pool from issuance, idempotent by reference: the transfer,
    and whether it was made now (False: the reference's deposit, made before)."""
    if not any(p.name == cmd.pool for p in deps.pools()):
        raise NotFound(f"no pool {cmd.pool!r} in the config")
    now = deps.clock.now()
    entry = TrailEntry("", now, "pool_deposit", detail={"pool": cmd.pool, "coins": cmd.coins,
                                                        "reference": cmd.reference})
    kind, made = await deps.journal.deposit(cmd.pool, cmd.coins, cmd.reference, now, entry)
    if made is None:
        raise Refusal(f"reference {cmd.reference!r} already made a deposit of another pool or amount",
                      code="idempotency_key_reused", field="reference")
    if kind == "made":
        log.info("pool_deposit", pool=cmd.pool, coins=cmd.coins, reference=cmd.reference)
    return made, kind == "made"


async def pools_view(deps: PoolDeps) -> list[dict[str, Any]]:
    """Each configured pool: its balance, target, low-water mark, demand since the last
    rebalancing pass, how many of its users' credits another pool paid because it was short,
    and its loss on failed instant credits; then any other pool account (legacy, default)."""
    accounts = {a.account: a for a in await deps.journal.accounts("pool:")}
    demand = await deps.journal.pool_demand()
    out = []
    for p in deps.pools():
        account = pool_account(p.name)
        held = accounts.pop(account, None) or Account(account, 0)
        out.append({"name": p.name, "countries": list(p.countries), "balance": held.balance,
                    "target_coins": p.target_coins, "low_water_coins": p.low_water_coins,
                    "low": held.balance < p.low_water_coins, "demand": demand.get(account, 0),
                    "shortfalls": held.shortfalls, "lost_coins": held.lost})
    for account, held in sorted(accounts.items()):
        out.append({"name": account.removeprefix("pool:"), "countries": [], "balance": held.balance,
                    "target_coins": None, "low_water_coins": None, "low": held.balance < 0,
                    "demand": demand.get(account, 0), "shortfalls": held.shortfalls, "lost_coins": held.lost})
    return out


def plan_rebalance(balances: Mapping[str, int], weights: Mapping[str, int]) -> tuple[dict[str, int],
                                                                                      list[tuple[str, str, int]]]:
    """Targets for the pools of ``balances`` (name -> coins) in proportion to ``weights``
    (exact integers summing to the total: largest remainder), and the moves (from, to,
    coins) that reach them. Nothing to move when the total is not positive or no pool has
    weight: the total does not allow it."""
    total = sum(balances.values())
    weight = sum(max(0, weights.get(n, 0)) for n in balances)
    if total <= 0 or weight <= 0:
        return dict(balances), []
    shares = {n: total * max(0, weights.get(n, 0)) for n in balances}
    targets = {n: s // weight for n, s in shares.items()}
    left = total - sum(targets.values())
    for n in sorted(balances, key=lambda n: (-(shares[n] % weight), n))[:left]:
        targets[n] += 1
    surplus = sorted(((balances[n] - targets[n], n) for n in balances if balances[n] > targets[n]), reverse=True)
    deficit = sorted(((targets[n] - balances[n], n) for n in balances if balances[n] < targets[n]), reverse=True)
    moves: list[tuple[str, str, int]] = []
    s_left = [[c, n] for c, n in surplus]
    for need, target in deficit:
        while need > 0:
            source = s_left[0]
            coins = min(need, source[0])
            moves.append((source[1], target, coins))
            need -= coins
            source[0] -= coins
            if source[0] == 0:
                s_left.pop(0)
    return targets, moves


class Rebalancer:
    """Rebalances the configured pools every ``interval_s`` (any instance may; the store
    applies one plan per reading of the balances)."""

    def __init__(self, deps: PoolDeps) -> None:
        self._deps = deps

    async def run_forever(self) -> None:
        while True:
            await self._deps.clock.sleep(self._deps.interval_s())
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: the next interval
                log.warning("rebalance_failed", error=str(exc))

    async def pass_once(self) -> dict[str, int] | None:
        """One pass: the targets it reached (None: nothing to rebalance)."""
        deps = self._deps
        configured = [p for p in deps.pools()]
        if len(configured) < 2:
            return None
        await deps.journal.open_pools([p.name for p in configured], deps.clock.now())
        for _ in range(_PLAN_TRIES):
            now = deps.clock.now()
            expect = {a.account: a.balance for a in await deps.journal.accounts("pool:")}
            demand = await deps.journal.pool_demand()
            balances = {p.name: expect.get(pool_account(p.name), 0) for p in configured}
            weights = {p.name: demand.get(pool_account(p.name), 0) for p in configured}
            basis = "demand"
            if sum(weights.values()) == 0:
                weights, basis = {p.name: p.target_coins for p in configured}, "target_coins"
            targets, moves = plan_rebalance(balances, weights)
            entry = None if not moves else TrailEntry("", now, "pools_rebalanced", detail={
                "basis": basis, "targets": targets, "moves": [list(m) for m in moves]})
            # With nothing to move it still lands: the next interval's demand counts from here.
            if await deps.journal.rebalance(expect, moves, now, entry):
                if not moves:
                    return targets
                deps.metrics.pool_rebalances.inc()
                log.info("pools_rebalanced", basis=basis, targets=targets, moves=len(moves))
                return targets
        log.warning("rebalance_gave_up", reason="the balances kept moving under the plan")
        return None


class PoolWatch:
    """Reads the pools every few seconds for the metrics, the status page and the alert
    of a pool falling under its low-water mark (logged once as it crosses)."""

    PERIOD_S = 5.0

    def __init__(self, deps: PoolDeps) -> None:
        self._deps = deps
        self.last: list[dict[str, Any]] = []
        self._low: set[str] = set()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pool_watch_failed", error=str(exc))
            await self._deps.clock.sleep(self.PERIOD_S)

    async def once(self) -> list[dict[str, Any]]:
        view = await pools_view(self._deps)
        m = self._deps.metrics
        for p in view:
            m.pool_coins.labels(p["name"]).set(p["balance"])
            m.pool_low.labels(p["name"]).set(1 if p["low"] else 0)
            m.pool_shortfalls.labels(p["name"]).set(p["shortfalls"])
            m.pool_lost.labels(p["name"]).set(p["lost_coins"])
            before = next((q["shortfalls"] for q in self.last if q["name"] == p["name"]), p["shortfalls"])
            if p["shortfalls"] > before:
                log.warning("pool_short", pool=p["name"], credits=p["shortfalls"] - before, balance=p["balance"])
            if p["low"] and p["name"] not in self._low:
                log.warning("pool_below_low_water", pool=p["name"], balance=p["balance"],
                            low_water_coins=p["low_water_coins"])
        self._low = {p["name"] for p in view if p["low"]}
        self.last = view
        return view
