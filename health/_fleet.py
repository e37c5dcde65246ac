"""The fleet view: what the other instances on the same store measured (issue 26).

Each instance publishes its *own* measurements every few seconds as one blob (``export``)
and reads the others' (``FleetView.update``); routing adds the two, so a new instance
routes from the fleet's experience on its first request and an outage one instance sees
is avoided by all. Only local numbers are ever published: a sum is never re-shared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["FleetChannel", "FleetView", "decode_blob", "encode_blob"]

BLOB_VERSION = 1


@dataclass(frozen=True, slots=True)
class FleetChannel:
    """One channel as the other instances saw it, decayed to the moment it was read.

    ``probe_ok``/``probe_at`` are the most recent probe any of them made (wall seconds)."""

    instances: int = 0
    ejected_on: int = 0  # instances whose breaker has it open
    successes: float = 0.0
    failures: float = 0.0
    latency_ewma_ms: float | None = None
    probe_ok: bool | None = None
    probe_at: float | None = None
    segments: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def encode_blob(at: float, channels: Mapping[str, Mapping[str, Any]]) -> bytes:
    """One instance's measurements, as published: per channel ``breaker`` (its state there),
    ``s``/``f`` (decayed successes/failures; an ejected channel at least the ejecting volume), ``lat`` (latency EWMA, ms), ``probe`` ([ok, wall time]) and
    ``seg`` (segment -> [approved, declined])."""
    return orjson.dumps({"v": BLOB_VERSION, "at": at, "channels": channels})


def decode_blob(blob: bytes) -> dict[str, dict[str, Any]] | None:
    """The channels of a published blob, or None when it is not one this version reads."""
    try:
        doc = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != BLOB_VERSION or not isinstance(doc.get("channels"), dict):
        return None
    return doc["channels"]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value >= 0 else 0.0


class FleetView:
    """The other instances' measurements, merged per channel. ``work_half_life_s`` and
    ``approval_half_life_s`` age what was published by the time it is read, as the local
    tallies age."""

    def __init__(self, work_half_life_s: float, approval_half_life_s: float) -> None:
        self._work_half_life_s = work_half_life_s
        self._approval_half_life_s = approval_half_life_s
        self.channels: dict[str, FleetChannel] = {}
        self.instances: tuple[str, ...] = ()
        self.rejected = 0  # blobs that could not be read (another version, corrupt)
        self.read_at: float | None = None

    def update(self, published: Iterable[tuple[str, float, bytes]], me: str, now: float) -> None:
        """Replace the view with ``published`` (instance, wall time, blob), leaving out
        this instance's own blob."""
        merged: dict[str, dict[str, Any]] = {}
        instances: list[str] = []
        for instance, at, blob in published:
            if instance == me:
                continue
            channels = decode_blob(blob)
            if channels is None:
                self.rejected += 1
                continue
            instances.append(instance)
            age = max(0.0, now - at)
            work = 0.5 ** (age / self._work_half_life_s)
            appr = 0.5 ** (age / self._approval_half_life_s)
            for name, ch in channels.items():
                if not isinstance(ch, dict):
                    continue
                m = merged.setdefault(name, {"n": 0, "open": 0, "s": 0.0, "f": 0.0, "lat_w": 0.0, "lat": 0.0,
                                             "probe": None, "seg": {}})
                m["n"] += 1
                m["open"] += ch.get("breaker") == "open"
                s, f = _number(ch.get("s")) * work, _number(ch.get("f")) * work
                m["s"] += s
                m["f"] += f
                lat = ch.get("lat")
                if isinstance(lat, int | float) and math.isfinite(lat) and lat > 0:
                    weight = s + 1.0  # a latency measured on more traffic counts for more
                    m["lat"] += weight * lat
                    m["lat_w"] += weight
                probe = ch.get("probe")
                if (isinstance(probe, list) and len(probe) == 2 and isinstance(probe[0], bool)
                        and isinstance(probe[1], int | float)
                        and (m["probe"] is None or probe[1] > m["probe"][1])):
                    m["probe"] = (probe[0], float(probe[1]))
                segs = ch.get("seg")
                if isinstance(segs, dict):
                    for segment, pair in segs.items():
                        if isinstance(pair, list) and len(pair) == 2:
                            a, d = m["seg"].get(segment, (0.0, 0.0))
                            m["seg"][segment] = (a + _number(pair[0]) * appr, d + _number(pair[1]) * appr)
        self.channels = {
            name: FleetChannel(
                instances=m["n"], ejected_on=m["open"], successes=m["s"], failures=m["f"],
                latency_ewma_ms=m["lat"] / m["lat_w"] if m["lat_w"] else None,
                probe_ok=None if m["probe"] is None else m["probe"][0],
                probe_at=None if m["probe"] is None else m["probe"][1],
                segments=m["seg"],
            )
            for name, m in merged.items()
        }
        self.instances = tuple(instances)
        self.read_at = now
