"""The PNG chart of a benchmark result (matplotlib, so it runs in the bench venv):

    python -m bench.chart RESULT.json OUT.png

Left: requests/s at saturation per app and configuration. Middle: p50 and p99 latency at
the fixed rate. Right: the agent throughput ladder, spans/s received against asked, with
CPU µs per span.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"bare": "#7f7f7f", "hooks": "#bcbd22", "otel": "#d62728", "spanprobe": "#1f77b4",
          "spanprobe-idle": "#17becf"}
LABELS = {"bare": "bare", "hooks": "empty hooks", "otel": "in-process OTel", "spanprobe": "spanprobe",
          "spanprobe-idle": "spanprobe, SCHED_IDLE"}


def draw(result: dict, out: str) -> None:
    summary = (result.get("overhead") or {}).get("summary", {})
    steps = (result.get("throughput") or {}).get("steps", [])
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    apps = list(summary)
    configs = [c for c in COLORS if any(c in summary[a] for a in apps)]
    width = 0.8 / max(1, len(configs))

    ax = axes[0]
    for i, c in enumerate(configs):
        xs = [a + (i - (len(configs) - 1) / 2) * width for a in range(len(apps))]
        ys = [summary[a].get(c, {}).get("rps") or 0 for a in apps]
        bars = ax.bar(xs, ys, width, color=COLORS[c], label=LABELS[c])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(apps)), apps)
    ax.set_ylabel("requests/s at saturation (median)")
    ax.set_title("Throughput (higher is better)")
    ax.legend()

    ax = axes[1]
    for i, c in enumerate(configs):
        xs = [a + (i - (len(configs) - 1) / 2) * width for a in range(len(apps))]
        p50 = [summary[a].get(c, {}).get("p50_ms") or float("nan") for a in apps]
        p99 = [summary[a].get(c, {}).get("p99_ms") or float("nan") for a in apps]
        ax.bar(xs, p99, width, color=COLORS[c], alpha=0.45, label=f"{LABELS[c]} p99")
        ax.bar(xs, p50, width, color=COLORS[c], label=f"{LABELS[c]} p50")
    ax.set_xticks(range(len(apps)), apps)
    ax.set_yscale("log")
    ax.set_ylabel("latency ms at half of bare saturation (median, log scale)")
    ax.set_title("Latency at a fixed rate (lower is better)")
    ax.legend(fontsize=7)

    ax = axes[2]
    if steps:
        asked = [s["rate_asked"] for s in steps]
        got = [s["spans_per_s"] for s in steps]
        ax.plot(asked, asked, ":", color="#999999", label="asked")
        ax.plot(asked, got, "-o", color=COLORS["spanprobe"], label="received spans/s")
        for s in steps:
            if not s["sustained"]:
                ax.plot([s["rate_asked"]], [s["spans_per_s"]], "x", color="#d62728", markersize=12)
        ax.axhline(30000, color="#2ca02c", linestyle="--", linewidth=1, label="target 30,000/s")
        ax.set_xlabel("asked spans/s (x = loss or lag)")
        ax.set_ylabel("spans/s received")
        ax2 = ax.twinx()
        ax2.plot(asked, [s["cpu_us_per_span"] or 0 for s in steps], "-s", color="#ff7f0e",
                 label="agent CPU µs/span")
        ax2.set_ylabel("agent CPU µs per span (incl. export)")
        ax2.set_ylim(bottom=0)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "throughput test not run", ha="center", va="center")
    ax.set_title("Agent throughput on one core")
    fig.suptitle(f"spanprobe benchmark, {result['mode']} run {result['started']} "
                 f"(load average {result['machine']['loadavg_start']})")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> int:
    if len(sys.argv) != 3:
        sys.stderr.write("usage: python -m bench.chart RESULT.json OUT.png\n")
        return 2
    with open(sys.argv[1]) as f:
        draw(json.load(f), sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
