"""Results of a load run: aggregate client records, print the summary, write JSON and PNG.

``aggregate`` folds every :class:`~raysource.loadtest.client.ClientResult` into one JSON-ready dict
(``figures``, the per-second ``series``, a log-spaced ``latency_histogram``); ``write`` stores
it as ``<results>/<run-id>/result.json`` and plots ``report.png`` (throughput over time and the
latency histogram) with matplotlib's Agg canvas — no display, no global backend switch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from raysource.loadtest.client import OUTCOMES, ClientResult

__all__ = ["aggregate", "summary_lines", "write"]

_HIST_BINS = 40


def _latency_figures(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(values.max()), 3),
        "mean": round(float(values.mean()), 3),
    }


def _histogram(values: np.ndarray) -> dict[str, list[float]]:
    if values.size == 0:
        return {"edges_ms": [], "counts": []}
    lo = max(float(values.min()), 0.01)
    hi = max(float(values.max()), lo * 1.01)
    edges = np.geomspace(lo, hi, _HIST_BINS + 1)
    edges[0], edges[-1] = min(edges[0], float(values.min())), float(values.max())
    counts, edges = np.histogram(values, bins=edges)
    return {"edges_ms": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def aggregate(results: Iterable[ClientResult], *, elapsed_s: float) -> dict[str, Any]:
    """Fold client records into ``figures``, ``series``, ``latency_histogram`` and per-client
    lines. Invariants (checked by the tests): ``sent == accepted + rejected + errors`` and the
    series sums to ``sent``."""
    results = list(results)
    by_kind: dict[str, dict[str, Any]] = {}
    all_lat: list[np.ndarray] = []
    totals = dict.fromkeys(OUTCOMES, 0)
    last_second = max((s for r in results for s in r.per_second), default=-1)
    series = {o: [0] * (last_second + 1) for o in OUTCOMES}
    for r in results:
        for kind, counts in r.outcomes.items():
            k = by_kind.setdefault(kind, {"count": 0, **dict.fromkeys(OUTCOMES, 0)})
            for o in OUTCOMES:
                k[o] += counts[o]
                k["count"] += counts[o]
                totals[o] += counts[o]
        for sec, in_second in r.per_second.items():
            for i, o in enumerate(OUTCOMES):
                series[o][sec] += in_second[i]
    for kind in by_kind:
        lat = np.concatenate(
            [np.asarray(r.latencies_ms.get(kind, []), dtype=float) for r in results]
        )
        by_kind[kind].update(_latency_figures(lat))
        all_lat.append(lat)
    latencies = np.concatenate(all_lat) if all_lat else np.zeros(0)
    sent = sum(r.sent for r in results)
    figures = {
        "sent": sent,
        **totals,
        "elapsed_s": round(elapsed_s, 3),
        "commands_per_s": round(sent / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "latency_ms": _latency_figures(latencies),
        "by_kind": dict(sorted(by_kind.items())),
        "prepare_s": round(max((r.prepare_s for r in results), default=0.0), 3),
    }
    return {
        "figures": figures,
        "series": {"second": list(range(last_second + 1)), **series},
        "latency_histogram": _histogram(latencies),
        "clients": [
            {
                "index": r.index,
                "node_id": r.node_id,
                "sent": r.sent,
                "prepare_s": round(r.prepare_s, 3),
            }
            for r in results
        ],
        "error_samples": [e for r in results for e in r.error_samples][:10],
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The human summary table of a result (parameters first, then figures)."""
    f = result["figures"]
    lat = f["latency_ms"]
    sent = max(f["sent"], 1)
    lines = ["parameters: " + "  ".join(f"{k}={v}" for k, v in result["parameters"].items())]
    lines += [
        f"{'commands':<22}{f['sent']:>10,}  in {f['elapsed_s']:.1f} s "
        f"(+{f['prepare_s']:.1f} s before the clock: clients join, host actors start)",
        f"{'throughput':<22}{f['commands_per_s']:>10,.1f}  commands/s",
        f"{'latency ms':<22}p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}"
        f"  max {lat['max']:.1f}",
        f"{'accepted':<22}{f['accepted']:>10,}  ({100 * f['accepted'] / sent:.1f}%)",
        f"{'rejected':<22}{f['rejected']:>10,}  ({100 * f['rejected'] / sent:.1f}%)",
        f"{'errors':<22}{f['errors']:>10,}  ({100 * f['errors'] / sent:.1f}%)",
        f"{'kind':<10}{'count':>9}{'accepted':>10}{'rejected':>10}{'errors':>8}"
        f"{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for kind, k in f["by_kind"].items():
        lines.append(
            f"{kind:<10}{k['count']:>9,}{k['accepted']:>10,}{k['rejected']:>10,}"
            f"{k['errors']:>8,}{k['p50']:>9.1f}{k['p99']:>9.1f}"
        )
    gc = f.get("group_commit")
    if gc and gc.get("writes"):
        lines.append(
            f"{'group commit':<22}{gc['commands']:,} commands in {gc['writes']:,} "
            f"journal writes ({gc['commands_per_write']:.2f} per write, "
            f"{gc['hosts']} host actors)"
        )
    return lines


def write(result: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write ``result.json`` and ``report.png`` into ``directory`` (created); returns both."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, png_path = directory / "result.json", directory / "report.png"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    _plot(result, png_path)
    return json_path, png_path


def _plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    s = result["series"]
    x = np.asarray(s["second"], dtype=float)
    bottom = np.zeros_like(x)
    colors: dict[str, str] = {
        "accepted": "tab:green",
        "rejected": "tab:orange",
        "errors": "tab:red",
    }
    for outcome in OUTCOMES:
        y = np.asarray(s[outcome], dtype=float)
        if y.any():
            ax1.bar(
                x, y, bottom=bottom, width=0.9, align="edge", color=colors[outcome], label=outcome
            )
        bottom = bottom + y
    ax1.set(
        title="throughput (commands completed per second)",
        xlabel="second of the run",
        ylabel="commands/s",
    )
    ax1.legend(loc="best")
    h = result["latency_histogram"]
    if h["counts"]:
        edges = np.asarray(h["edges_ms"])
        ax2.stairs(h["counts"], edges, fill=True, color="tab:blue", alpha=0.7)
        ax2.set_xscale("log")
        lat = result["figures"]["latency_ms"]
        for name, ls in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax2.axvline(lat[name], color="black", linestyle=ls, label=f"{name} {lat[name]:.1f} ms")
        ax2.legend()
    ax2.set(title="latency histogram", xlabel="latency (ms, log scale)", ylabel="commands")
    p = result["parameters"]
    fig.suptitle(
        f"raysource loadtest {result['run_id']}: {p.get('workload')}, "
        f"{p.get('entities')} entities, {p.get('clients')} clients, "
        f"{p.get('placement')}"
        + (f", via {p['via']}" if p.get("via", "refs") != "refs" else "")
        + f" — {result['figures']['commands_per_s']:,.0f} commands/s"
    )
    fig.tight_layout()
    fig.savefig(path, format="png")
