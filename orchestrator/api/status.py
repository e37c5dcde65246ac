"""The on-call status page: one self-contained HTML document (no build step, nothing
fetched from outside) that polls ``/v1/status`` and redraws itself."""

from __future__ import annotations

from typing import Any

__all__ = ["STATUS_HTML", "status_view"]


def status_view(svc: Any) -> dict[str, Any]:
    """Everything the page shows, in one JSON document."""
    report = svc.health.report()
    activity = svc.activity.view()
    share = activity["share"]
    channels = []
    for cfg in svc.config.channels:
        rep = report.get(cfg.name, {})
        lat = rep.get("latency_ms") or {}
        probe = rep.get("last_probe") or {}
        channels.append({
            "channel": cfg.name,
            "kind": cfg.kind,
            "state": rep.get("state"),
            "breaker": (rep.get("breaker") or {}).get("state"),
            "drained": rep.get("drained", False),
            "p50_ms": lat.get("p50"),
            "p99_ms": lat.get("p99"),
            "success_rate": rep.get("success_rate"),
            "in_flight": rep.get("in_flight"),
            "share": share.get(cfg.name, 0.0),
            "last_probe": probe,
        })
    return {
        "config_version": svc.loaded.version,
        "now": svc.clock.now(),
        "recharges_in_flight": svc.driver.in_flight,
        "outcomes_per_min": activity["outcomes_per_min"],
        "failovers": activity["failovers"][:20],
        "window_s": activity["window_s"],
        "channels": channels,
        "notifications": svc.dispatcher.figures(),
        "pools": svc.pool_watch.last,
        "reconciliations": [{**run, "open": svc.reconciler.open.get(channel, 0)}
                            for channel, run in sorted(svc.reconciler.last.items())],
    }


STATUS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Recharge orchestrator: status</title>
<style>
 body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;background:#f6f8fa}
 h1{font-size:20px;margin:0 0 4px} .sub{color:#57606a;margin-bottom:16px}
 table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:20px;box-shadow:0 1px 2px #0001}
 th,td{padding:6px 10px;border-bottom:1px solid #eaeef2;text-align:left;white-space:nowrap}
 th{background:#f0f3f6;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
 .pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
 .closed,.healthy{background:#dafbe1;color:#116329} .half_open,.degraded,.recovering{background:#fff8c5;color:#7d4e00}
 .open,.ejected,.down,.drained{background:#ffebe9;color:#a40e26} .unknown{background:#eaeef2;color:#57606a}
 .bar{height:8px;background:#0969da;border-radius:4px} .cards{display:flex;gap:12px;margin-bottom:16px;flex-wrap:wrap}
 .card{background:#fff;padding:10px 14px;box-shadow:0 1px 2px #0001;min-width:120px}
 .card b{display:block;font-size:20px} #err{color:#a40e26}
</style></head><body>
<h1>Recharge orchestrator</h1>
<div class="sub">config <code id="version">-</code> &middot; updated <span id="updated">never</span> <span id="err"></span></div>
<div class="cards" id="cards"></div>
<h2>Channels</h2>
<table id="channels"><thead><tr><th>channel</th><th>kind</th><th>state</th><th>breaker</th>
<th>p50 ms</th><th>p99 ms</th><th>success</th><th>in flight</th><th>share</th><th></th><th>last probe</th></tr></thead>
<tbody></tbody></table>
<h2>Coin pools</h2>
<table id="pools"><thead><tr><th>pool</th><th>countries</th><th>coins</th><th>target</th><th>low water</th>
<th>demand (last interval)</th><th>short for</th><th>lost (failed instant credits)</th><th></th></tr></thead>
<tbody></tbody></table>
<h2>Settlement reconciliation (last run per channel)</h2>
<table id="reconciliations"><thead><tr><th>channel</th><th>day</th><th>status</th><th>report items</th>
<th>discrepancies</th><th>open now</th><th>finished</th></tr></thead><tbody></tbody></table>
<h2>Recent failovers</h2>
<table id="failovers"><thead><tr><th>when</th><th>recharge</th><th>from</th><th>to</th><th>why</th></tr></thead>
<tbody></tbody></table>
<script>
"use strict";
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const num = (v, d = 1) => v == null ? "-" : Number(v).toFixed(d);
const pill = s => `<span class="pill ${esc(s || "unknown")}">${esc(s || "unknown")}</span>`;
async function refresh() {
  try {
    const r = await fetch("/v1/status", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json();
    document.getElementById("version").textContent = d.config_version;
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    document.getElementById("err").textContent = "";
    const o = d.outcomes_per_min || {};
    const cards = [["in flight", d.recharges_in_flight], ["succeeded/min", num(o.succeeded || 0)],
      ["failed/min", num(o.failed || 0)], ["declined/min", num(o.declined || 0)], ["blocked/min", num(o.blocked || 0)]];
    const n = d.notifications || {};
    if (n.pending != null) cards.push(["notifications waiting", n.pending], ["oldest waiting s", num(n.oldest_pending_age_s, 0)],
      ["notifications dead", n.dead]);
    document.getElementById("cards").innerHTML = cards.map(([k, v]) => `<div class="card"><b>${esc(v)}</b>${esc(k)}</div>`).join("");
    document.querySelector("#channels tbody").innerHTML = d.channels.map(c => `<tr data-channel="${esc(c.channel)}">
      <td>${esc(c.channel)}</td><td>${esc(c.kind)}</td><td>${pill(c.drained ? "drained" : c.state)}</td>
      <td>${pill(c.breaker)}</td><td class="num">${num(c.p50_ms)}</td><td class="num">${num(c.p99_ms)}</td>
      <td class="num">${c.success_rate == null ? "-" : (100 * c.success_rate).toFixed(2) + "%"}</td>
      <td class="num">${esc(c.in_flight ?? 0)}</td><td class="num">${(100 * c.share).toFixed(1)}%</td>
      <td style="width:120px"><div class="bar" style="width:${Math.round(100 * c.share)}%"></div></td>
      <td>${c.last_probe && c.last_probe.ok != null ? (c.last_probe.ok ? "ok" : "failed") + " " + num(c.last_probe.age_s) + "s ago" : "-"}</td></tr>`).join("");
    document.querySelector("#pools tbody").innerHTML = (d.pools || []).map(p => `<tr data-pool="${esc(p.name)}">
      <td>${esc(p.name)}</td><td>${esc((p.countries || []).join(" "))}</td><td class="num">${esc(p.balance)}</td>
      <td class="num">${esc(p.target_coins ?? "-")}</td><td class="num">${esc(p.low_water_coins ?? "-")}</td>
      <td class="num">${esc(p.demand)}</td><td class="num">${esc(p.shortfalls ?? 0)}</td>
      <td class="num">${esc(p.lost_coins ?? 0)}</td><td>${p.low ? pill("low") : ""}</td></tr>`).join("")
      || '<tr><td colspan="9">no pools configured</td></tr>';
    document.querySelector("#reconciliations tbody").innerHTML = (d.reconciliations || []).map(r => `<tr
      data-channel="${esc(r.channel)}"><td>${esc(r.channel)}</td><td>${esc(r.date)}</td><td>${pill(r.status)}
      ${r.reason ? esc(r.reason) : ""}</td><td class="num">${esc(r.report_items)}</td>
      <td class="num">${esc((r.summary || {}).discrepancies ?? "-")}</td><td class="num">${esc(r.open)}</td>
      <td>${esc(r.finished_at ?? "-")}</td></tr>`).join("") || '<tr><td colspan="7">no run yet</td></tr>';
    document.querySelector("#failovers tbody").innerHTML = (d.failovers.length ? d.failovers : []).map(f => `<tr>
      <td>${num(f.age_s)} s ago</td>
      <td><code>${esc(f.recharge_id)}</code></td><td>${esc(f.from)}</td><td>${esc(f.to)}</td><td>${esc(f.reason)}</td></tr>`).join("")
      || '<tr><td colspan="5">none in the last window</td></tr>';
  } catch (e) {
    document.getElementById("err").textContent = "(refresh failed: " + e.message + ")";
  }
}
refresh();
setInterval(refresh, 2000);
</script></body></html>
"""
