"""Behaviour features for the risk model, from bounded state kept as recharges happen.

``FeatureBook.features(signals)`` reads the state and answers one vector in ``FEATURES``
order (each documented in docs/risk.md); it changes nothing. ``record`` adds an accepted
recharge, ``blocked`` a refused one, and ``outcome`` its decline or failure once known,
so the next recharge sees them. No history is scanned: each user, instrument and device
holds one fixed-size ``array('d')`` of decayed counters, moments and a few hashed
"distinct" slots, updated in O(1).

Windows are exponentially decayed counts (time constant = the window): a count "in the
last hour" is sum(exp(-age / 3600)), which needs no event list and forgets smoothly.
Every input is a value (the wall time is ``Signals.at_s``): the book is pure state, and
the benchmark replays a day in seconds through the same code.

Memory is bounded by ``max_users`` / ``max_instruments`` / ``max_devices``: each kind
lives in a two-generation map (a full young generation becomes the old one, and the old
one is dropped), so the least recently seen keys go first and a lookup stays O(1).
"""

from __future__ import annotations

import math
import zlib
from array import array
from dataclasses import dataclass
from typing import Final

__all__ = ["FEATURES", "FeatureBook", "Signals"]


@dataclass(frozen=True, slots=True)
class Signals:
    """What one recharge tells risk, as plain values."""

    user_id: str
    amount_base: float  # in base-currency units
    country: str
    at_s: float  # wall time, epoch seconds
    instrument_key: str | None = None  # the token, or a keyed hash of the account number
    card_number: bool = False  # an account number was given (not a token)
    device_id: str | None = None
    ip_country: str | None = None
    history_count: int = 0  # the user's succeeded recharges, from the journal
    history_avg_base: float | None = None
    limit_base: float | None = None  # risk.max_amount_base, when configured


# -- the features, in the model's order --------------------------------------------------

FEATURES: Final[tuple[str, ...]] = (
    # the amount
    "amount_log", "amount_small", "amount_to_limit", "amount_near_limit", "amount_z_user",
    "amount_over_user_max", "amount_vs_history_avg", "amount_user_unknown",
    # the user's activity
    "user_count_1m", "user_count_10m", "user_count_1h", "user_count_24h",
    "user_amount_10m", "user_amount_1h", "user_amount_24h",
    "user_recharges", "user_first_recharge", "user_age_h", "since_last_s", "user_history",
    "user_declines_1h", "user_declines_24h", "user_blocked_24h", "user_decline_ratio_24h",
    # the hour against the user's habit
    "hour_off_habit", "hour_habit_strength",
    # what the user is paying with and from
    "user_instruments", "user_countries", "user_devices", "new_instrument_for_user",
    "new_device_for_user", "new_country_for_user", "user_new_instruments_1h",
    # the instrument
    "instrument_new", "instrument_users", "instrument_count_1h", "instrument_declines_24h",
    "instrument_age_h", "instrument_card_number",
    # the device
    "device_given", "device_new", "device_users", "device_instruments", "device_count_10m",
    "device_count_1h", "device_declines_1h",
    # where the request came from
    "ip_country_given", "ip_country_mismatch", "ip_country_new_for_user",
)

_MIN, _10MIN, _HOUR, _DAY = 60.0, 600.0, 3600.0, 86_400.0
_NEVER_S = math.log1p(30 * _DAY)  # since_last_s for a user never seen
_TWO_PI = 2 * math.pi

# -- state layouts: one array('d') per key -------------------------------------------------
# Time in the arrays is seconds since the book's epoch (its first signal), so doubles stay
# exact; hashed slots hold 52-bit key hashes (0: empty); a full set overwrites a slot picked by the hash.

# user
(U_T, U_FIRST, U_LAST, U_N, U_SUML, U_SUMSQ, U_MAXL, U_C1M, U_C10M, U_C1H, U_C24H, U_A10M, U_A1H,
 U_A24H, U_DECL1H, U_DECL24H, U_BLK24H, U_NEWI1H, U_HCOS, U_HSIN, U_NI, U_NC, U_ND) = range(23)
_U_INSTR, _U_CTRY, _U_DEV = 23, 29, 33  # 6 instrument slots, 4 country slots, 4 device slots
_U_LEN = 37
# instrument
I_T, I_FIRST, I_N, I_C1H, I_DECL24H, I_NU = range(6)
_I_USERS, _I_LEN = 6, 12  # 6 user slots
# device
D_T, D_FIRST, D_N, D_C10M, D_C1H, D_DECL1H, D_NU, D_NI = range(8)
_D_USERS, _D_INSTR, _D_LEN = 8, 14, 20  # 6 user slots, 6 instrument slots

_HASH_MASK = (1 << 52) - 1


def _h(key: str) -> float:
    # A stable hash (not the salted hash()): which key a full set overwrites, and so every
    # feature after it, must not depend on the process.
    return float(((zlib.crc32(key.encode()) << 20) ^ len(key)) & _HASH_MASK | 1)  # never 0, the empty slot


def _has(state: array, start: int, size: int, h: float) -> bool:
    for i in range(start, start + size):
        if state[i] == h:
            return True
    return False


def _add(state: array, start: int, size: int, count_at: int, h: float) -> bool:
    """Put ``h`` in the slots unless there; True if it was not. The count at ``count_at``
    saturates at ``size``: once full, a slot picked by the hash is overwritten, so a key
    evicted and coming back is not counted again (it is still "new" to the flags)."""
    if _has(state, start, size, h):
        return False
    n = int(state[count_at])
    if n < size:
        state[start + n] = h
        state[count_at] = n + 1
    else:
        state[start + int(h) % size] = h
    return True


class _Generations:
    """A map bounded to ``cap`` keys: a young and an old generation of ``cap / 2`` each;
    a key written while in the old one moves to the young one (reads move nothing)."""

    __slots__ = ("half", "old", "young")

    def __init__(self, cap: int) -> None:
        self.young: dict[str, array] = {}
        self.old: dict[str, array] = {}
        self.half = max(1, cap // 2)

    def get(self, key: str) -> array | None:
        state = self.young.get(key)
        if state is None:
            state = self.old.get(key)
        return state

    def take(self, key: str, size: int) -> tuple[array, bool]:
        """The key's state for writing (made if missing), and whether it is new."""
        state = self.young.get(key)
        if state is not None:
            return state, False
        state = self.old.pop(key, None)
        fresh = state is None
        if fresh:
            state = array("d", bytes(8 * size))
        if len(self.young) >= self.half:
            self.old, self.young = self.young, {}
        self.young[key] = state
        return state, fresh

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


def _decay(dt: float, tau: float) -> float:
    return math.exp(-dt / tau) if dt > 0 else 1.0


def _ln(x: float) -> float:
    return math.log1p(x) if x > 0 else 0.0


class FeatureBook:
    """Per-user, per-instrument and per-device state, and the features read from it."""

    def __init__(self, max_users: int = 1_000_000, max_instruments: int = 1_000_000,
                 max_devices: int = 500_000, max_pending: int = 1_000_000) -> None:
        self._users = _Generations(max_users)
        self._instruments = _Generations(max_instruments)
        self._devices = _Generations(max_devices)
        # Accepted recharges awaiting their outcome: recharge id -> its keys (bounded too: at
        # 1,200/s a decline reported more than about 7 minutes later is not counted).
        self._pending = _PendingKeys(max_pending)
        self._epoch: float | None = None

    def sizes(self) -> dict[str, int]:
        return {"users": len(self._users), "instruments": len(self._instruments),
                "devices": len(self._devices), "pending": len(self._pending)}

    def _t(self, at_s: float) -> float:
        if self._epoch is None:
            self._epoch = at_s - _DAY  # so a first signal is well after t=0
        return at_s - self._epoch

    # -- reading --------------------------------------------------------------------------

    def features(self, s: Signals) -> list[float]:
        """The vector for ``s`` in ``FEATURES`` order; the state is not changed."""
        t = self._t(s.at_s)
        amount = max(0.0, s.amount_base)
        la = math.log1p(amount)
        limit = s.limit_base
        to_limit = min(1.0, amount / limit) if limit else 0.0
        x = [la, 1.0 if amount < 1.0 else 0.0, to_limit, 1.0 if to_limit >= 0.8 else 0.0]
        x.extend(self._user_features(s, t, la))
        x.extend(self._instrument_features(s, t))
        x.extend(self._device_features(s, t))
        x.append(1.0 if s.ip_country else 0.0)
        x.append(1.0 if s.ip_country and s.ip_country != s.country else 0.0)
        u = self._users.get(s.user_id)
        x.append(1.0 if s.ip_country and u is not None and u[U_N] > 0
                 and not _has(u, _U_CTRY, 4, _h(s.ip_country)) else 0.0)
        return x

    def _user_features(self, s: Signals, t: float, la: float) -> list[float]:
        hist = [_ln(float(s.history_count))]
        avg = s.history_avg_base
        vs_avg = la - math.log1p(avg) if avg else 0.0
        u = self._users.get(s.user_id)
        if u is None:
            first = 1.0 if s.history_count == 0 else 0.0
            return ([0.0, 0.0, vs_avg, 1.0] + [0.0] * 7 + [0.0, first, 0.0, _NEVER_S] + hist
                    + [0.0] * 6 + [0.0] * 7)
        n = u[U_N]  # 0 for a user only ever blocked
        dt = t - u[U_T]
        d1m, d10m, d1h, d24h = _decay(dt, _MIN), _decay(dt, _10MIN), _decay(dt, _HOUR), _decay(dt, _DAY)
        mean = u[U_SUML] / n if n else la
        if n >= 2:
            std = math.sqrt(max(0.0, u[U_SUMSQ] / n - mean * mean))
            z = (la - mean) / max(std, 0.3)
        else:
            z = 0.0
        decl24 = u[U_DECL24H] * d24h
        c24 = u[U_C24H] * d24h
        strength = off = 0.0
        if n >= 3:
            mc, ms = u[U_HCOS] / n, u[U_HSIN] / n
            strength = math.hypot(mc, ms)
            if strength > 0:
                # 0 at the user's usual hour, 1 opposite it, weighted by how steady the habit is.
                # Only the hour against the habit: an absolute UTC hour mixes markets' days.
                angle = (s.at_s % _DAY) / _DAY * _TWO_PI
                off = strength * (1.0 - (math.cos(angle) * mc + math.sin(angle) * ms) / strength) / 2.0
        new_instr = (1.0 if n and s.instrument_key is not None
                     and not _has(u, _U_INSTR, 6, _h(s.instrument_key)) else 0.0)
        new_dev = 1.0 if n and s.device_id and not _has(u, _U_DEV, 4, _h(s.device_id)) else 0.0
        new_ctry = 1.0 if n and not _has(u, _U_CTRY, 4, _h(s.country)) else 0.0
        return [
            z, max(0.0, la - u[U_MAXL]) if n else 0.0, vs_avg, 0.0 if n >= 2 else 1.0,
            _ln(u[U_C1M] * d1m), _ln(u[U_C10M] * d10m), _ln(u[U_C1H] * d1h), _ln(c24),
            _ln(u[U_A10M] * d10m), _ln(u[U_A1H] * d1h), _ln(u[U_A24H] * d24h),
            _ln(n), 1.0 if n == 0 and s.history_count == 0 else 0.0,
            _ln((t - u[U_FIRST]) / _HOUR) if n else 0.0, _ln(t - u[U_LAST]) if n else _NEVER_S, *hist,
            _ln(u[U_DECL1H] * d1h), _ln(decl24), _ln(u[U_BLK24H] * d24h), decl24 / (c24 + decl24 + 1.0),
            off, strength,
            _ln(u[U_NI]), _ln(u[U_NC]), _ln(u[U_ND]), new_instr, new_dev, new_ctry, _ln(u[U_NEWI1H] * d1h),
        ]

    def _instrument_features(self, s: Signals, t: float) -> list[float]:
        card = 1.0 if s.card_number else 0.0
        st = self._instruments.get(s.instrument_key) if s.instrument_key is not None else None
        if st is None:
            given = 1.0 if s.instrument_key is not None else 0.0
            return [given, _ln(given), 0.0, 0.0, 0.0, card]
        dt = t - st[I_T]
        users = st[I_NU] + (0.0 if _has(st, _I_USERS, 6, _h(s.user_id)) else 1.0)
        return [0.0, _ln(users), _ln(st[I_C1H] * _decay(dt, _HOUR)), _ln(st[I_DECL24H] * _decay(dt, _DAY)),
                _ln((t - st[I_FIRST]) / _HOUR), card]

    def _device_features(self, s: Signals, t: float) -> list[float]:
        if not s.device_id:
            return [0.0] * 7
        st = self._devices.get(s.device_id)
        if st is None:
            return [1.0, 1.0, _ln(1.0), _ln(1.0 if s.instrument_key else 0.0), 0.0, 0.0, 0.0]
        dt = t - st[D_T]
        users = st[D_NU] + (0.0 if _has(st, _D_USERS, 6, _h(s.user_id)) else 1.0)
        instr = st[D_NI] + (1.0 if s.instrument_key and not _has(st, _D_INSTR, 6, _h(s.instrument_key)) else 0.0)
        return [1.0, 0.0, _ln(users), _ln(instr), _ln(st[D_C10M] * _decay(dt, _10MIN)),
                _ln(st[D_C1H] * _decay(dt, _HOUR)), _ln(st[D_DECL1H] * _decay(dt, _HOUR))]

    # -- writing --------------------------------------------------------------------------

    def record(self, s: Signals, recharge_id: str | None = None) -> None:
        """Count an accepted recharge; its outcome, if reported, is tied to ``recharge_id``."""
        t = self._t(s.at_s)
        amount = max(0.0, s.amount_base)
        la = math.log1p(amount)
        u, _ = self._users.take(s.user_id, _U_LEN)
        _age_user(u, t)
        if u[U_N] == 0:
            u[U_FIRST] = t
            u[U_MAXL] = la
        u[U_N] += 1
        u[U_LAST] = t
        u[U_SUML] += la
        u[U_SUMSQ] += la * la
        u[U_MAXL] = max(u[U_MAXL], la)
        for i in (U_C1M, U_C10M, U_C1H, U_C24H):
            u[i] += 1.0
        for i in (U_A10M, U_A1H, U_A24H):
            u[i] += amount
        angle = ((s.at_s % _DAY) / _DAY) * _TWO_PI
        u[U_HCOS] += math.cos(angle)
        u[U_HSIN] += math.sin(angle)
        if s.instrument_key is not None and _add(u, _U_INSTR, 6, U_NI, _h(s.instrument_key)) and u[U_N] > 1:
            u[U_NEWI1H] += 1.0
        _add(u, _U_CTRY, 4, U_NC, _h(s.country))
        if s.ip_country:
            _add(u, _U_CTRY, 4, U_NC, _h(s.ip_country))
        if s.device_id:
            _add(u, _U_DEV, 4, U_ND, _h(s.device_id))
        if s.instrument_key is not None:
            st, fresh = self._instruments.take(s.instrument_key, _I_LEN)
            if fresh:
                st[I_FIRST] = t
            _age(st, t, I_T, ((I_C1H, _HOUR), (I_DECL24H, _DAY)))
            st[I_N] += 1
            st[I_C1H] += 1.0
            _add(st, _I_USERS, 6, I_NU, _h(s.user_id))
        if s.device_id:
            st, fresh = self._devices.take(s.device_id, _D_LEN)
            if fresh:
                st[D_FIRST] = t
            _age(st, t, D_T, ((D_C10M, _10MIN), (D_C1H, _HOUR), (D_DECL1H, _HOUR)))
            st[D_N] += 1
            st[D_C10M] += 1.0
            st[D_C1H] += 1.0
            _add(st, _D_USERS, 6, D_NU, _h(s.user_id))
            if s.instrument_key is not None:
                _add(st, _D_INSTR, 6, D_NI, _h(s.instrument_key))
        if recharge_id is not None:
            self._pending.put(recharge_id, (s.user_id, s.instrument_key, s.device_id))

    def blocked(self, s: Signals) -> None:
        """A recharge refused outright: it counts against its user (not as activity)."""
        t = self._t(s.at_s)
        u, _ = self._users.take(s.user_id, _U_LEN)
        _age_user(u, t)
        u[U_BLK24H] += 1.0

    def outcome(self, recharge_id: str, declined: bool, at_s: float) -> None:
        """The end of a recharge ``record`` was told of: a decline or failure counts against
        its user, instrument and device; any end forgets the pending keys."""
        keys = self._pending.pop(recharge_id)
        if keys is None or not declined:
            return
        t = self._t(at_s)
        user_id, instrument_key, device_id = keys
        u = self._users.get(user_id)
        if u is not None:
            _age_user(u, t)
            u[U_DECL1H] += 1.0
            u[U_DECL24H] += 1.0
        st = self._instruments.get(instrument_key) if instrument_key is not None else None
        if st is not None:
            _age(st, t, I_T, ((I_C1H, _HOUR), (I_DECL24H, _DAY)))
            st[I_DECL24H] += 1.0
        st = self._devices.get(device_id) if device_id else None
        if st is not None:
            _age(st, t, D_T, ((D_C10M, _10MIN), (D_C1H, _HOUR), (D_DECL1H, _HOUR)))
            st[D_DECL1H] += 1.0


_USER_DECAYS = ((U_C1M, _MIN), (U_C10M, _10MIN), (U_C1H, _HOUR), (U_C24H, _DAY), (U_A10M, _10MIN),
                (U_A1H, _HOUR), (U_A24H, _DAY), (U_DECL1H, _HOUR), (U_DECL24H, _DAY), (U_BLK24H, _DAY),
                (U_NEWI1H, _HOUR))


def _age(state: array, t: float, at: int, decays: tuple[tuple[int, float], ...]) -> None:
    """Bring the decayed counters of ``state`` to time ``t``."""
    dt = t - state[at]
    if dt > 0:
        for i, tau in decays:
            if state[i]:
                state[i] *= math.exp(-dt / tau)
        state[at] = t


def _age_user(u: array, t: float) -> None:
    _age(u, t, U_T, _USER_DECAYS)


class _PendingKeys:
    """Recharge id -> (user, instrument, device) until its outcome, at most ``cap``."""

    __slots__ = ("half", "old", "young")

    def __init__(self, cap: int) -> None:
        self.young: dict[str, tuple[str, str | None, str | None]] = {}
        self.old: dict[str, tuple[str, str | None, str | None]] = {}
        self.half = max(1, cap // 2)

    def put(self, key: str, keys: tuple[str, str | None, str | None]) -> None:
        if len(self.young) >= self.half:
            self.old, self.young = self.young, {}
        self.young[key] = keys

    def pop(self, key: str) -> tuple[str, str | None, str | None] | None:
        found = self.young.pop(key, None)
        return found if found is not None else self.old.pop(key, None)

    def __len__(self) -> int:
        return len(self.young) + len(self.old)
