"""Each user's succeeded recharges per currency (``user_recharge_totals``), kept by the
journal in the transaction that credits each success, so the history read on every
recharge is one primary-key range read of a few rows, not a walk of the user's recharges.

A row holds, for one user and currency, the count (``recharges``) and sum
(``amount_minor``) of the succeeded recharges, and ``month_recharges``: how many of them
were created in ``month_start``, the newest calendar month (UTC) any of them was created
in. A success created in a newer month starts that month's tally at 1; one created in an
older month (created before the turn of a month, succeeded after a newer one had) leaves
the tally alone. The month is the recharge's creation, never its success: "recharges
this month" has always counted by ``created_at``.

So the totals answer "how many were created at or after M", for M the start of a month:

- ``month_start == M``: ``month_recharges`` (none was created in a later month);
- ``month_start < M``: 0 (all were created before M);
- ``month_start > M``: the reader's clock is behind a recharge's creation (another
  instance's clock, around the turn of a month). The totals cannot tell, and the store
  counts that user's recharges one by one (``COUNT_SINCE``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.clock import month_of
from orchestrator.journal._protocol import UserTotals

__all__ = ["COUNT_SINCE", "KEPT_OF", "SUCCEEDED_OF", "TOTALS_COLUMNS", "backfill", "counted", "month_of", "recount", "totals_since"]

TOTALS_COLUMNS = "currency, recharges, amount_minor, month_start, month_recharges"

# The long way round, exact for any ``since``, for what the totals cannot tell
# (docs/history.md#user-totals). Parameters: since, user_id.
COUNT_SINCE = (
    "SELECT currency, COUNT(*), SUM(amount_minor), SUM(CASE WHEN created_at >= ? THEN 1 ELSE 0 END) "
    "FROM recharges WHERE user_id = ? AND status = 'succeeded' AND (settlement IS NULL OR settlement != 'failed') "
    "GROUP BY currency"
)
# An instant credit whose payment failed (SPEC 20) leaves the totals it joined: it was never
# paid. Rare, so the user's row in that currency is counted again from its recharges (a row
# cannot hold a count or a month's tally of 0). Parameters: user_id, currency.
KEPT_OF = (
    "SELECT amount_minor, created_at FROM recharges WHERE user_id = ? AND currency = ? AND status = 'succeeded' "
    "AND (settlement IS NULL OR settlement != 'failed')"
)

# A user's newest succeeded recharges (``Journal.succeeded_recharges``), the same ones the
# totals count: backwards along recharges_user (user_id, created_at), stopping at the
# limit, so the read costs what it returns. Parameters: user_id, limit.
SUCCEEDED_OF = (
    "SELECT amount_minor, currency, country, created_at FROM recharges WHERE user_id = ? AND status = 'succeeded' "
    "AND (settlement IS NULL OR settlement != 'failed') ORDER BY created_at DESC LIMIT ?"
)


def recount(rows: Iterable[Sequence[Any]]) -> tuple[int, int, int, int] | None:
    """A totals row (recharges, amount_minor, month_start, month_recharges) of the
    recharges ``rows`` (amount_minor, created_at); None when there are none."""
    months = [(month_of(created_at), int(amount)) for amount, created_at in rows]
    if not months:
        return None
    newest = max(m for m, _ in months)
    return len(months), sum(a for _, a in months), newest, sum(1 for m, _ in months if m == newest)


def backfill(integer: str) -> str:
    """The totals of the recharges already journaled (migration 7, both stores; ``integer``
    is the store's 64-bit integer type). Each row's month is that of its newest recharge,
    computed in SQL as ``month_of`` does: the creation time floored to the second, then
    days to the civil date (Howard Hinnant's civil_from_days) and back to the
    first of that month."""
    return """WITH newest AS (
            SELECT user_id, currency, COUNT(*) AS recharges, SUM(amount_minor) AS amount_minor,
                   MAX(created_at) AS created_at
            FROM recharges WHERE status = 'succeeded' GROUP BY user_id, currency
        ), in_days AS (
            SELECT user_id, currency, recharges, amount_minor,
                   (CAST(created_at AS {integer}) - CASE WHEN CAST(created_at AS {integer}) > created_at THEN 1 ELSE 0 END)
                   / 86400 + 719468 AS z
            FROM newest
        ), in_eras AS (
            SELECT user_id, currency, recharges, amount_minor, z, z % 146097 AS doe FROM in_days
        ), in_years AS (
            SELECT user_id, currency, recharges, amount_minor, z, doe,
                   (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365 AS yoe
            FROM in_eras
        ), in_year AS (
            SELECT user_id, currency, recharges, amount_minor, z, doe - (365 * yoe + yoe / 4 - yoe / 100) AS doy
            FROM in_years
        ), months AS (
            SELECT user_id, currency, recharges, amount_minor,
                   86400 * (z - 719468 - doy + (153 * ((5 * doy + 2) / 153) + 2) / 5) AS month_start
            FROM in_year
        )
        INSERT INTO user_recharge_totals(user_id, currency, recharges, amount_minor, month_start, month_recharges)
        SELECT m.user_id, m.currency, m.recharges, m.amount_minor, m.month_start,
               (SELECT COUNT(*) FROM recharges r WHERE r.user_id = m.user_id AND r.currency = m.currency
                AND r.status = 'succeeded' AND r.created_at >= m.month_start)
        FROM months m""".format(integer=integer)


def totals_since(rows: Iterable[Sequence[Any]], since: float) -> list[UserTotals] | None:
    """The totals of ``rows`` (``TOTALS_COLUMNS``), ``this_month`` counting those created
    at or after ``since``; None when the rows cannot tell (``since`` is not the start of
    a month, or a row's month is later than it) and ``COUNT_SINCE`` must."""
    if month_of(since) != since:
        return None
    out = []
    for currency, recharges, amount_minor, month_start, month_recharges in rows:
        if month_start > since:
            return None
        out.append(UserTotals(currency, int(recharges), int(amount_minor),
                              int(month_recharges) if month_start == since else 0))
    return out


def counted(rows: Iterable[Sequence[Any]]) -> list[UserTotals]:
    """``COUNT_SINCE``'s rows as totals."""
    return [UserTotals(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]
