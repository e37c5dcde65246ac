"""How journal writes and their answers cross to the writer process and back.

A frame is a 4-byte big-endian length and an orjson document. The client sends
``[[id, op, args], ...]`` (everything it queued in one event-loop turn); the writer
answers each batch it committed with ``[batch size, seconds, [[id, ok, value], ...]]``.
Model objects travel as positional lists (``enc_*`` and their inverses), op by op. Floats survive exactly (orjson writes the
shortest repr that reads back to the same double), so the audit chain's hashes over
``at`` are the same on both sides.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import orjson

from orchestrator.model import KEEP, Attempt, AttemptState, Credit, FirstRecharge, Notice, Recharge, RechargeStatus, \
    Settlement, Step, TrailEntry

__all__ = ["HEADER", "enc_notice", "enc_trail", "notice", "trail", "decode_args", "decode_value", "encode", "encode_request", "encode_value", "frames", "pack"]

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
FRAME_BUDGET = 8 << 20  # a client splits what it sends into frames of about this size


def encode(doc: Any) -> bytes:
    return orjson.dumps(doc)


def pack(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def frames(buf: bytearray) -> Iterator[bytes]:
    """Complete frames at the front of ``buf``, removed from it as they are read."""
    pos = 0
    end = len(buf)
    while end - pos >= 4:
        (size,) = HEADER.unpack_from(buf, pos)
        if size > MAX_FRAME:
            raise ValueError(f"journal frame of {size} bytes")
        if end - pos - 4 < size:
            break
        yield bytes(buf[pos + 4:pos + 4 + size])
        pos += 4 + size
    del buf[:pos]


# -- model objects, as positional lists ---------------------------------------------------
# Cheaper to encode than orjson's dataclass walk (docs/performance.md#wire-encoding).


def enc_attempt(a: Attempt) -> list[Any]:
    return [a.reference, a.recharge_id, a.seq, a.channel, a.state, a.created_at, a.updated_at, a.provider_ref,
            a.decline_code, a.error, a.latency_ms, a.late_check_at, a.action_url, a.action_expires_at]


def attempt(v: list[Any]) -> Attempt:
    return Attempt(v[0], v[1], v[2], v[3], AttemptState(v[4]), v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
                   v[13])


def enc_trail(t: TrailEntry) -> list[Any]:
    return [t.recharge_id, t.at, t.event, t.status, t.reference, t.channel, t.detail]


def trail(v: list[Any]) -> TrailEntry:
    return TrailEntry(v[0], v[1], v[2], v[3], v[4], v[5], v[6])


def enc_recharge(r: Recharge) -> list[Any]:
    return [r.id, r.client, r.idempotency_key, r.fingerprint, r.user_id, r.amount_minor, r.currency, r.country,
            r.method, r.instrument, r.metadata, r.coins, r.bonus_coins, r.status, r.created_at, r.updated_at,
            r.deadline_at, r.config_version, r.channel, r.decline_code, r.reason,
            [enc_attempt(a) for a in r.attempts], r.instant, r.settlement, r.step_up]


def recharge(v: list[Any]) -> Recharge:
    return Recharge(
        id=v[0], client=v[1], idempotency_key=v[2], fingerprint=v[3], user_id=v[4], amount_minor=v[5],
        currency=v[6], country=v[7], method=v[8], instrument=v[9], metadata=v[10], coins=v[11], bonus_coins=v[12],
        status=RechargeStatus(v[13]), created_at=v[14], updated_at=v[15], deadline_at=v[16], config_version=v[17],
        channel=v[18], decline_code=v[19], reason=v[20], attempts=[attempt(a) for a in v[21]],
        instant=v[22], settlement=None if v[23] is None else Settlement(v[23]), step_up=v[24],
    )


def _enc_credit(c: Credit | None) -> list[Any] | None:
    return None if c is None else [c.recharge_id, c.user_id, c.coins, c.at, c.pool]


def _credit(v: list[Any] | None) -> Credit | None:
    return None if v is None else Credit(v[0], v[1], v[2], v[3], v[4])


def enc_step(s: Step) -> list[Any]:
    return [s.recharge_id, s.at, s.status, None if s.expect_status is None else list(s.expect_status), s.channel,
            s.decline_code, s.reason, None if s.attempt is None else enc_attempt(s.attempt), s.attempt_is_new,
            None if s.expect_attempt is None else list(s.expect_attempt),
            _enc_credit(s.credit), s.event,
            [enc_trail(t) for t in s.trail], None if s.follow_up is KEEP else [s.follow_up], s.lease,
            [enc_notice(n) for n in s.notices], s.settlement, _enc_credit(s.clawback)]


def step(v: list[Any]) -> Step:
    return Step(
        recharge_id=v[0], at=v[1], status=None if v[2] is None else RechargeStatus(v[2]),
        expect_status=None if v[3] is None else frozenset(RechargeStatus(x) for x in v[3]),
        channel=v[4], decline_code=v[5], reason=v[6], attempt=None if v[7] is None else attempt(v[7]),
        attempt_is_new=v[8], expect_attempt=None if v[9] is None else frozenset(AttemptState(x) for x in v[9]),
        credit=_credit(v[10]),
        event=None if v[11] is None else (v[11][0], v[11][1]),
        trail=tuple(trail(t) for t in v[12]),
        follow_up=KEEP if v[13] is None else v[13][0],
        lease=None if v[14] is None else (v[14][0], v[14][1]),
        notices=tuple(notice(n) for n in v[15]),
        settlement=None if v[16] is None else Settlement(v[16]), clawback=_credit(v[17]),
    )


def enc_notice(n: Notice) -> list[Any]:
    return [n.id, n.client, n.key, n.type, n.created_at, n.body]


def notice(v: list[Any]) -> Notice:
    return Notice(v[0], v[1], v[2], v[3], v[4], v[5])


def _enc_create(args: tuple[Any, ...]) -> list[Any]:
    rec, entry, lease, first, started, notices = args
    return [enc_recharge(rec), enc_trail(entry), lease,
            None if first is None else [first.bonus_without, first.detail_without],
            None if started is None else [enc_attempt(started[0]), enc_trail(started[1])],
            [enc_notice(n) for n in notices]]


def _dec_create(args: list[Any]) -> tuple[Any, ...]:
    rec, entry, lease, first, started, notices = args
    return (
        recharge(rec), trail(entry), None if lease is None else (lease[0], lease[1]),
        None if first is None else FirstRecharge(first[0], first[1]),
        None if started is None else (attempt(started[0]), trail(started[1])),
        tuple(notice(n) for n in notices),
    )


# A fleet blob is any bytes, which JSON cannot carry: it crosses as a latin-1 string, one
# character per byte, read back exactly. The blob is JSON text, which crosses almost
# unescaped: its decoding holds the writer a quarter of base64's time (3 ms for 1.8 MB).
_ENCODE_ARGS = {
    "create": _enc_create,
    "apply": lambda a: [enc_step(a[0])],
    "record": lambda a: [enc_trail(a[0])],
    "put_fleet_stats": lambda a: [a[0], a[1].decode("latin-1"), a[2]],
}
_DECODE_ARGS = {
    "create": _dec_create,
    "apply": lambda a: (step(a[0]),),
    "record": lambda a: (trail(a[0]),),
    "put_fleet_stats": lambda a: (a[0], a[1].encode("latin-1"), a[2]),
}


def encode_request(rid: int, op: str, args: tuple[Any, ...]) -> bytes:
    """The client's side: one request, ready to join a frame."""
    fn = _ENCODE_ARGS.get(op)
    return orjson.dumps([rid, op, args if fn is None else fn(args)])


def decode_args(op: str, args: list[Any]) -> tuple[Any, ...]:
    """The writer's side: an op's arguments as the model objects the op takes."""
    fn = _DECODE_ARGS.get(op)
    return tuple(args) if fn is None else fn(args)


def encode_value(op: str, value: Any) -> Any:
    """The writer's side: an op's answer, ready for orjson (the claims answer recharges)."""
    if op == "claim":
        return [[enc_recharge(r), token] for r, token in value]
    if op == "claim_follow_ups":
        return [enc_recharge(r) for r in value]
    return value


def decode_value(op: str, value: Any) -> Any:
    """The client's side: an op's answer."""
    if op == "claim":
        return [(recharge(r), token) for r, token in value]
    if op == "claim_follow_ups":
        return [recharge(r) for r in value]
    return value
