"""Panic routing: when every channel that could serve a transaction is ejected, they are
tried anyway (a likely failure beats a certain one); drains and static filters still hold."""

from __future__ import annotations

import random

from routing_builders import CNY, healthy, market

from routing import decide, explain


def test_all_breakers_open_routes_in_panic_over_the_ejected_channels():
    snap = market(alipay_direct=healthy(breaker="open"), usdt_settle=healthy(1200.0, breaker="open"),
                  unionpay_bank=healthy(4800.0, breaker="open"))
    d = decide(snap, CNY, random.Random(1))
    assert d.panic is True
    assert set(d.candidates) == {"alipay_direct", "usdt_settle", "unionpay_bank"}
    assert explain(snap, CNY, random.Random(1))["panic"] is True


def test_one_healthy_channel_means_no_panic():
    snap = market(alipay_direct=healthy(breaker="open"), usdt_settle=healthy(1200.0, breaker="open"))
    d = decide(snap, CNY, random.Random(1))
    assert d.panic is False and d.candidates == ("unionpay_bank",)
    assert d.filtered["alipay_direct"] == "breaker open"


def test_panic_never_overrides_a_drain():
    snap = market(alipay_direct=healthy(breaker="open"), usdt_settle=healthy(1200.0, drained=True),
                  unionpay_bank=healthy(4800.0, drained=True))
    d = decide(snap, CNY, random.Random(1))
    assert d.panic is True and d.candidates == ("alipay_direct",)
    assert d.filtered == {"usdt_settle": "drained", "unionpay_bank": "drained"}


def test_nothing_ejected_and_nothing_eligible_is_no_panic():
    snap = market(alipay_direct=healthy(drained=True), usdt_settle=healthy(1200.0, drained=True),
                  unionpay_bank=healthy(4800.0, drained=True))
    d = decide(snap, CNY, random.Random(1))
    assert d.panic is False and d.candidates == ()
