"""Draw the suite's chart: start time and restart latency per system, log scale.

Usage: PEER_VENV/bin/python benchmarks/chart.py results.json chart.png

Runs in the peers' virtual environment (matplotlib is not a dependency of hubvisor);
``suite.py`` calls it after a run.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = ["floor", "minimal", "hubvisor", "hubvisor-nocapture", "supervisord", "circus"]


def main() -> None:
    with open(sys.argv[1]) as f:
        data = json.load(f)
    summary, meta = data["summary"], data["meta"]
    ns = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = [
        ("start", 1.0, "start all N children (s)"),
        ("restart_p50", 1e3, "restart after SIGKILL, p50 (bar) and p99 (tick), ms"),
    ]
    width = 0.8 / max(1, len(ns))
    for ax, (metric, scale, title) in zip(axes, panels, strict=True):
        systems = [s for s in ORDER if any(s in summary[n] for n in ns)]
        for j, n in enumerate(ns):
            xs, ys, lo, hi, p99 = [], [], [], [], []
            for i, s in enumerate(systems):
                cell = summary[n].get(s, {}).get(metric)
                if cell is None:
                    continue
                xs.append(i + (j - (len(ns) - 1) / 2) * width)
                ys.append(cell["median"] * scale)
                lo.append((cell["median"] - cell["min"]) * scale)
                hi.append((cell["max"] - cell["median"]) * scale)
                p99cell = summary[n].get(s, {}).get("restart_p99")
                p99.append(p99cell["median"] * scale if p99cell else None)
            bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=f"N = {int(n):,}")
            for x, y in zip(xs, ys, strict=True):
                label = f"{y:,.0f}" if y >= 100 else f"{y:.3g}"
                ax.annotate(label, (x, y), ha="center", va="bottom", fontsize=6,
                            xytext=(0, 2), textcoords="offset points")  # fmt: skip
            if metric == "restart_p50":
                color = bars.patches[0].get_facecolor() if bars.patches else None
                ax.scatter(xs, p99, marker="_", s=200, color=color, zorder=3)
        ax.set_yscale("log")
        ax.set_xticks(range(len(systems)), systems, rotation=20)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{meta['date']} · {meta['machine']} · median of {meta['rounds']} rounds "
        "(whiskers: min-max)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
