"""Plot the node-count sweep of ``mqttsn-bench --plot``: throughput and latency against nodes.

    python -m tests.bench.plot bench-results/results.json bench-results/scaling.png

Needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_sweep"]


def plot_sweep(sweep: dict[str, Any], path: Path) -> None:
    """Two panels: msgs per gateway CPU-s and wall msgs/s; latency p50 and p99 (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, lat_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"qos0": ("tab:blue", "QoS 0"), "qos1": ("tab:orange", "QoS 1")}
    for key, (color, name) in styles.items():
        points = [p for p in sweep.get(key, []) if p.get("msgs_per_cpu_s")]
        if not points:
            continue
        nodes = [p["nodes"] for p in points]
        rate_ax.plot(
            nodes,
            [p["msgs_per_cpu_s"] for p in points],
            "o-",
            color=color,
            label=f"{name}: msgs per gateway CPU-s",
        )
        rate_ax.plot(
            nodes, [p["msgs_per_s"] for p in points], "s--", color=color, label=f"{name}: msgs/s"
        )
        lat = [(p["nodes"], p["latency_ms"]) for p in points if p.get("latency_ms")]
        what = "PUBACK round trip" if key == "qos1" else "node to broker"
        lat_ax.plot(
            [n for n, _ in lat], [v["p50"] for _, v in lat], "o-", color=color, label=f"{name} p50"
        )
        lat_ax.plot(
            [n for n, _ in lat],
            [v["p99"] for _, v in lat],
            "^--",
            color=color,
            label=f"{name} p99 ({what})",
        )
    rate_ax.set(
        xscale="log", xlabel="nodes", ylabel="messages", title="Uplink throughput (32-byte payload)"
    )
    rate_ax.set_ylim(bottom=0)
    lat_ax.set(xscale="log", yscale="log", xlabel="nodes", ylabel="ms", title="Uplink latency")
    for ax in (rate_ax, lat_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(
        "mqttsn-gateway, aggregating mode, Mosquitto on loopback (QoS 0 saturating; "
        "QoS 1 one in flight per node)",
        fontsize="medium",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Re-plot from a results JSON written by ``mqttsn-bench --plot``."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.plot")
    parser.add_argument("results", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    sweep = json.loads(args.results.read_text()).get("sweep")
    if not sweep:
        parser.error(f"{args.results} has no sweep: run mqttsn-bench --plot")
    plot_sweep(sweep, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
