"""The latency-against-offered-load plot (PNG) that `make bench` writes beside bench/RESULTS.md.

One line per server (p50 solid, p99 dashed), offered requests/s on the x axis, latency on a log axis:
where a line bends up is where that server's queue starts to build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Point:
    offered: float  # requests/s offered (open loop)
    achieved: float  # answers/s
    p50_ms: float
    p99_ms: float
    note: str = ""  # e.g. "generator fell behind"


def plot(series: dict[str, list[Point]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on a build machine
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for i, (name, points) in enumerate(series.items()):
        if not points:
            continue
        color = f"C{i}"
        xs = [p.offered for p in points]
        ax.plot(xs, [p.p50_ms for p in points], "-o", color=color, label=f"{name} p50")
        ax.plot(xs, [p.p99_ms for p in points], "--s", color=color, label=f"{name} p99", alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load, requests/s (open loop: 25/50/75/100 % of each server's measured peak)")
    ax.set_ylabel("latency, ms")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
