"""A scenario's chart: latency, channel shares and the server's CPU and RSS over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def chart(name: str, doc: dict[str, Any], window: tuple[float, float] | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = doc["timeline"]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 3, 2]})
    ts = [p["t"] for p in tl]
    ax1.plot(ts, [p["p50"] for p in tl], label="p50")
    ax1.plot(ts, [p["p99"] for p in tl], label="p99")
    ax1.set_ylabel("end-to-end latency, ms")
    ax1.set_yscale("log")
    ax1.legend()
    channels = sorted({ch for p in tl for ch in p["share"] if ch})
    bottom = [0.0] * len(tl)
    for ch in channels:
        vals = [p["share"].get(ch, 0) for p in tl]
        ax2.bar(ts, vals, bottom=bottom, label=ch, width=1.0)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_ylabel("share of recharges")
    ax2.legend(loc="lower left", fontsize=8)
    res = doc.get("resources") or []
    if res:
        rts = [r["t"] for r in res]
        ax3.plot(rts, [r["cpu_percent"] for r in res], label="server CPU % (all its processes)")
        ax3.set_ylabel("CPU %")
        ax3b = ax3.twinx()
        ax3b.plot(rts, [r["rss_mb"] for r in res], color="tab:red", label="server RSS MB")
        ax3b.set_ylabel("RSS MB")
        ax3.legend(loc="upper left", fontsize=8)
        ax3b.legend(loc="upper right", fontsize=8)
    ax3.set_xlabel("seconds")
    for ax in (ax1, ax2, ax3):
        if window:
            ax.axvspan(*window, color="red", alpha=0.1)
    fig.suptitle(f"{name}: {doc.get('title', '')}")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
