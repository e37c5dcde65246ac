"""What every store decides the same way about the double-entry ledger (SPEC 20), pure:
which pool a credit draws on, and the moves of a rebalancing pass.

Accounts are ``pool:<name>``, ``wallet:<user>`` and ``issuance``; a transfer moves coins
from its debit account to its credit account, so the balances always sum to zero.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.model import DEFAULT_POOL, Credit, pool_account

__all__ = ["POOLS_FROM", "POOLS_TO", "SETTLEMENT_FAILED", "choose_pool"]

# Every pool account sorts between these two keys: one range of the accounts' primary key.
POOLS_FROM, POOLS_TO = "pool:", "pool;"
# The note of a clawback whose instantly credited payment failed to settle.
SETTLEMENT_FAILED = "settlement_failed"


def choose_pool(credit: Credit, pools: Mapping[str, int]) -> tuple[str, str | None]:
    """The pool account a credit draws on, and why when it is not the user's own
    (``short:<pool>``). ``pools``: every pool account's balance. The user's pool when it
    holds the coins, else the pool with most coins (never refused: a captured payment is
    always credited, and a pool may go below zero; the note lets it be counted)."""
    if credit.pool is not None:
        local = pool_account(credit.pool)
        if pools.get(local, 0) >= credit.coins:
            return local, None
    if not pools:
        return pool_account(credit.pool or DEFAULT_POOL), None if credit.pool is None else f"short:{credit.pool}"
    fullest = max(pools, key=lambda account: (pools[account], account))
    return fullest, None if credit.pool is None else f"short:{credit.pool}"
