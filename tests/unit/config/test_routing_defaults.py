"""The config schema's routing and learning defaults are the ones routing and health
use when built without a config (tests, the routing simulator): one set of numbers."""

from __future__ import annotations

import dataclasses

import health
import routing
from config._schema import ApprovalLearningConfig, SegmentsConfig, ValueConfig


def test_value_defaults_match_routing():
    assert ValueConfig().model_dump() == dataclasses.asdict(routing.ValueWeights())


def test_segment_defaults_match_routing():
    seg = routing.SegmentPolicy()
    assert SegmentsConfig().model_dump() == {"amount_bands": dict(seg.amount_bands), "issuer": seg.issuer}


def test_approval_defaults_match_health():
    cfg, own = ApprovalLearningConfig(), health.ApprovalConfig()
    assert (cfg.half_life_s, cfg.fast_half_life_s, cfg.change_z, cfg.max_segments) == (
        own.half_life_s, own.fast_half_life_s, own.change_z, own.max_keys)
