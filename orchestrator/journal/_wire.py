"""How journal writes and their answers cross to the writer process and back.

A frame is a 4-byte big-endian length and an orjson document. The client sends
``[[id, op, args], ...]`` (everything it queued in one event-loop turn); the writer
answers each batch it committed with ``[batch size, seconds, [[id, ok, value], ...]]``.
orjson writes the model's dataclasses and enums natively; ``decode_args`` and
``decode_value`` rebuild them, op by op. Floats survive exactly (orjson writes the
shortest repr that reads back to the same double), so the audit chain's hashes over
``at`` are the same on both sides.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import orjson

from orchestrator.journal._protocol import FirstRecharge
from orchestrator.model import Attempt, AttemptState, Credit, Recharge, RechargeStatus, Step, TrailEntry

__all__ = ["HEADER", "decode_args", "decode_value", "encode", "frames", "pack"]

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20


def _default(obj: Any) -> Any:
    if isinstance(obj, frozenset | set):
        return sorted(obj)
    raise TypeError(f"cannot send {type(obj).__name__} to the journal writer")


def encode(doc: Any) -> bytes:
    return orjson.dumps(doc, default=_default)


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


# -- model objects ------------------------------------------------------------------------


def attempt(d: dict[str, Any]) -> Attempt:
    return Attempt(
        reference=d["reference"], recharge_id=d["recharge_id"], seq=d["seq"], channel=d["channel"],
        state=AttemptState(d["state"]), created_at=d["created_at"], updated_at=d["updated_at"],
        provider_ref=d["provider_ref"], decline_code=d["decline_code"], error=d["error"], latency_ms=d["latency_ms"],
    )


def trail(d: dict[str, Any]) -> TrailEntry:
    return TrailEntry(d["recharge_id"], d["at"], d["event"], d["status"], d["reference"], d["channel"], d["detail"])


def recharge(d: dict[str, Any]) -> Recharge:
    return Recharge(
        id=d["id"], client=d["client"], idempotency_key=d["idempotency_key"], fingerprint=d["fingerprint"],
        user_id=d["user_id"], amount_minor=d["amount_minor"], currency=d["currency"], country=d["country"],
        method=d["method"], instrument=d["instrument"], metadata=d["metadata"], coins=d["coins"],
        bonus_coins=d["bonus_coins"], status=RechargeStatus(d["status"]), created_at=d["created_at"],
        updated_at=d["updated_at"], deadline_at=d["deadline_at"], config_version=d["config_version"],
        channel=d["channel"], decline_code=d["decline_code"], reason=d["reason"],
        attempts=[attempt(a) for a in d["attempts"]],
    )


def step(d: dict[str, Any]) -> Step:
    expect_status = d["expect_status"]
    expect_attempt = d["expect_attempt"]
    credit = d["credit"]
    event = d["event"]
    return Step(
        recharge_id=d["recharge_id"], at=d["at"],
        status=None if d["status"] is None else RechargeStatus(d["status"]),
        expect_status=None if expect_status is None else frozenset(RechargeStatus(s) for s in expect_status),
        channel=d["channel"], decline_code=d["decline_code"], reason=d["reason"],
        attempt=None if d["attempt"] is None else attempt(d["attempt"]),
        attempt_is_new=d["attempt_is_new"],
        expect_attempt=None if expect_attempt is None else frozenset(AttemptState(s) for s in expect_attempt),
        credit=None if credit is None else Credit(credit["recharge_id"], credit["user_id"], credit["coins"],
                                                  credit["at"]),
        event=None if event is None else (event[0], event[1]),
        trail=tuple(trail(t) for t in d["trail"]),
    )


def _create(args: list[Any]) -> tuple[Any, ...]:
    rec, entry, lease, first, started = args
    return (
        recharge(rec), trail(entry), None if lease is None else (lease[0], lease[1]),
        None if first is None else FirstRecharge(first["bonus_without"], first["detail_without"]),
        None if started is None else (attempt(started[0]), trail(started[1])),
    )


_ARGS = {
    "create": _create,
    "apply": lambda a: (step(a[0]),),
    "record": lambda a: (trail(a[0]),),
}


def decode_args(op: str, args: list[Any]) -> tuple[Any, ...]:
    """The writer's side: an op's arguments as the model objects the op takes."""
    fn = _ARGS.get(op)
    return tuple(args) if fn is None else fn(args)


def decode_value(op: str, value: Any) -> Any:
    """The client's side: an op's answer (``claim`` answers recharges)."""
    if op == "claim":
        return [recharge(r) for r in value]
    return value
