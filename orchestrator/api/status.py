"""The on-call status page: one self-contained HTML document (no build step, nothing
fetched from outside) that polls ``/v1/status`` and redraws itself, the last hour as
small inline SVG charts drawn by its own script from ``history`` (orchestrator.activity)."""

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
        "history": svc.activity.history(),
        # /v1/status is per process: with server.workers > 1, the answering worker's view.
        "worker": None if svc.cluster is None else {"index": svc.cluster.index, "of": svc.cluster.workers},
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
 .overall{display:flex;gap:12px;margin-bottom:12px;flex-wrap:wrap}
 figure{margin:0;background:#fff;padding:8px 10px;box-shadow:0 1px 2px #0001} figcaption{font-size:12px;color:#57606a}
 .legend{margin-left:8px} .legend span{margin-right:10px;white-space:nowrap}
 .legend i{display:inline-block;width:9px;height:9px;margin-right:3px;vertical-align:-1px}
 #history td{vertical-align:middle;padding:4px 10px} svg.chart{display:block}
 svg.chart text{font:10px system-ui,sans-serif;fill:#57606a} svg.chart .axis{stroke:#d0d7de;stroke-width:1}
 svg.chart .grid{stroke:#eaeef2;stroke-width:1}
</style></head><body>
<h1>Recharge orchestrator</h1>
<div class="sub">config <code id="version">-</code> &middot; updated <span id="updated">never</span> <span id="err"></span></div>
<div class="cards" id="cards"></div>
<h2>Last <span id="span">hour</span></h2>
<div class="sub" id="scope"></div>
<div class="overall">
<figure><figcaption>recharges finished, by outcome<span class="legend" id="legend"></span></figcaption>
<div id="chart-outcomes"></div></figure>
<figure><figcaption>failovers</figcaption><div id="chart-failovers"></div></figure>
</div>
<table id="history"><thead><tr><th>channel</th><th>approval rate (captured / decided answers)</th>
<th>p99 latency of attempts (timeouts included)</th><th>share of attempts</th></tr></thead><tbody></tbody></table>
<div class="sub" style="margin-top:-12px">A gap: no answer from the channel in that bucket (not routed to: breaker open, drained, or no
traffic). Red: approval under 80 %. The last bucket is still filling.</div>
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
// The last hour: small SVG charts drawn here from d.history (one point per bucket).
const OUTCOME_COLORS = {succeeded: "#2da44e", declined: "#d4a72c", failed: "#cf222e", blocked: "#6e7781"};
const CW = 330, WIDE = 590, CH = 76, ML = 40, MR = 6, MT = 6, MB = 16;
const pad2 = n => String(n).padStart(2, "0");
const clockAt = (epochS, secs) => { const t = new Date(epochS * 1000);
  return pad2(t.getHours()) + ":" + pad2(t.getMinutes()) + (secs ? ":" + pad2(t.getSeconds()) : ""); };
const spanText = s => s >= 3600 && s % 3600 === 0 ? (s / 3600 === 1 ? "hour" : s / 3600 + " hours")
  : s >= 60 && s % 60 === 0 ? s / 60 + " min" : s + " s";
const pct = v => (100 * v).toFixed(v === 1 || v === 0 ? 0 : 1) + "%";
const ms = v => v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s" : Math.round(v) + " ms";
const niceMax = v => { if (!(v > 0)) return 1; const e = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map(m => m * e).find(m => m >= v); };
function frame(kind, channel, t, top, plot, points, w = CW) {
  const x0 = ML, x1 = w - MR, y0 = MT, y1 = CH - MB, mid = (y0 + y1) / 2;
  return `<svg class="chart" data-chart="${kind}"${channel == null ? "" : ` data-channel="${esc(channel)}"`}
    data-points="${points}" width="${w}" height="${CH}" viewBox="0 0 ${w} ${CH}" role="img" aria-label="${kind}">
    <line class="grid" x1="${x0}" y1="${y0}" x2="${x1}" y2="${y0}"/><line class="grid" x1="${x0}" y1="${mid}" x2="${x1}" y2="${mid}"/>
    <line class="axis" x1="${x0}" y1="${y1}" x2="${x1}" y2="${y1}"/>
    <text x="${x0 - 4}" y="${y0 + 4}" text-anchor="end">${esc(top)}</text><text x="${x0 - 4}" y="${y1}" text-anchor="end">0</text>
    <text x="${x0}" y="${CH - 3}">${esc(t.label(0))}</text>
    <text x="${(x0 + x1) / 2}" y="${CH - 3}" text-anchor="middle">${esc(t.label(Math.floor(t.n / 2)))}</text>
    <text x="${x1}" y="${CH - 3}" text-anchor="end">now</text>${plot}</svg>`;
}
function lineChart(kind, channel, vals, t, {max, fmt, color, area = false, low = null}) {
  const sw = (CW - ML - MR) / vals.length, ph = CH - MT - MB, base = CH - MB;
  const x = i => (ML + (i + 0.5) * sw).toFixed(1), y = v => (MT + ph * (1 - Math.min(v, max) / max)).toFixed(1);
  const runs = []; let run = [], dots = "", n = 0;
  vals.forEach((v, i) => {
    if (v == null) { if (run.length) runs.push(run); run = []; return; }
    n++; run.push([x(i), y(v)]);
    const alarm = low !== null && v < low ? ' r="2.6" fill="#cf222e"' : ' r="1.7"';
    dots += `<circle cx="${x(i)}" cy="${y(v)}"${alarm} data-v="${v}"><title>${esc(t.label(i))}: ${esc(fmt(v))}</title></circle>`;
  });
  if (run.length) runs.push(run);
  const fill = area ? runs.map(r => `<polygon points="${r[0][0]},${base} ${r.map(p => p.join(",")).join(" ")} ${r[r.length - 1][0]},${base}"/>`).join("") : "";
  const lines = runs.map(r => `<polyline points="${r.map(p => p.join(",")).join(" ")}"/>`).join("");
  return frame(kind, channel, t, fmt(max), `<g fill="${color}" fill-opacity="0.15">${fill}</g>
    <g fill="none" stroke="${color}" stroke-width="1.5" stroke-linejoin="round">${lines}</g><g fill="${color}">${dots}</g>`, n);
}
function barChart(kind, stacks, colors, t, w = WIDE) {
  const sw = (w - ML - MR) / stacks.length, ph = CH - MT - MB;
  const max = niceMax(Math.max(0, ...stacks.map(s => Object.values(s).reduce((a, b) => a + b, 0))));
  let bars = "", n = 0;
  stacks.forEach((s, i) => {
    let y = CH - MB, total = 0;
    const partial = i === stacks.length - 1 ? ' opacity="0.55"' : "";
    for (const [key, color] of Object.entries(colors)) {
      const v = s[key] || 0; if (!v) continue;
      const h = ph * v / max; y -= h; total += v;
      bars += `<rect x="${(ML + i * sw + 0.5).toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(1, sw - 1).toFixed(1)}"
        height="${h.toFixed(1)}" fill="${color}" data-v="${v}"${partial}><title>${esc(t.label(i))}: ${v} ${esc(key)}</title></rect>`;
    }
    if (total) n++;
  });
  return frame(kind, null, t, String(max), bars, n, w);
}
function drawHistory(d) {
  const h = d.history, pts = h.points, secs = h.bucket_s < 60;
  const t = {n: pts.length, label: i => clockAt(d.now - pts[i].age_s, secs)};
  document.getElementById("span").textContent = spanText(h.bucket_s * h.buckets);
  document.getElementById("scope").textContent = `${h.buckets} buckets of ${h.bucket_s} s (server.status_bucket_s),`
    + " kept in this process's memory since it started" + (d.worker ? `; worker ${d.worker.index} of ${d.worker.of}`
    + " (X-Worker): this worker's traffic only, each worker keeps its own" : "");
  const kinds = new Set(pts.flatMap(p => Object.keys(p.outcomes)));
  const colors = {...OUTCOME_COLORS};
  for (const k of kinds) if (!(k in colors)) colors[k] = "#8250df";
  document.getElementById("legend").innerHTML = Object.entries(colors).map(([k, c]) =>
    `<span><i style="background:${c}"></i>${esc(k)}</span>`).join("");
  document.getElementById("chart-outcomes").innerHTML = barChart("outcomes", pts.map(p => p.outcomes), colors, t);
  document.getElementById("chart-failovers").innerHTML = barChart("failovers", pts.map(p => ({failovers: p.failovers})),
    {failovers: "#bc4c00"}, t);
  const names = d.channels.map(c => c.channel);
  for (const p of pts) for (const name of Object.keys(p.channels)) if (!names.includes(name)) names.push(name);
  const of = (name, key) => pts.map(p => (p.channels[name] || {})[key] ?? null);
  document.querySelector("#history tbody").innerHTML = names.map(name => {
    const p99 = of(name, "p99_ms");
    const share = pts.map(p => Object.keys(p.channels).length ? (p.channels[name] || {}).share ?? 0 : null);
    return `<tr data-series="${esc(name)}"><td>${esc(name)}</td>
      <td>${lineChart("approval", name, of(name, "approval"), t, {max: 1, fmt: pct, color: "#1a7f37", low: 0.8})}</td>
      <td>${lineChart("p99", name, p99, t, {max: niceMax(Math.max(0, ...p99.filter(v => v != null))), fmt: ms,
                                            color: "#0969da"})}</td>
      <td>${lineChart("share", name, share, t, {max: 1, fmt: pct, color: "#8250df", area: true})}</td></tr>`;
  }).join("");
}
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
    drawHistory(d);
  } catch (e) {
    document.getElementById("err").textContent = "(refresh failed: " + e.message + ")";
  }
}
refresh();
setInterval(refresh, 2000);
</script></body></html>
"""
