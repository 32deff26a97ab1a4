"""deploy/grafana/raysource-dashboard.json against runtime/metrics.py (issue 28): every query
names only metrics raysource declares (as Ray's agent exports them: prefix ``ray_``, histograms
with ``_bucket``/``_sum``/``_count``), groups and filters only by labels those metrics carry,
and every declared metric is on some panel. Ray-free; the series themselves are scraped from a
real metrics agent in tests/service/test_service.py (test_prometheus_scrape_...)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from unit_guard import no_ray  # noqa: F401

from raysource.runtime.metrics import METRICS

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "raysource-dashboard.json"
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}
SERIES = re.compile(r"\bray_(raysource_[a-z0-9_]+)(\{[^}]*\})?")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def _resolve(name: str):
    """(declared spec, suffix) of an exported series name, or (None, name)."""
    for spec in METRICS.values():
        for suffix in SUFFIXES[spec.kind]:
            if name == spec.name + suffix:
                return spec, suffix
    return None, name


def queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def check(exprs: list[tuple[str, str]]) -> tuple[list[str], set[str]]:
    """(problems, names of the declared metrics the queries use)."""
    problems, used = [], set()
    for title, expr in exprs:
        found = SERIES.findall(expr)
        if not found:
            problems.append(f"{title}: no raysource series in {expr!r}")
        labels_here: set[str] = set()
        for name, matchers in found:
            spec, _ = _resolve(name)
            if spec is None:
                problems.append(f"{title}: ray_{name} is not a declared metric (or suffix)")
                continue
            used.add(spec.name)
            labels_here |= set(spec.labels) | ({"le"} if spec.kind == "histogram" else set())
            for label in re.findall(r"([a-zA-Z_]+)\s*=~?", matchers or ""):
                if label not in spec.labels:
                    problems.append(f"{title}: ray_{name} has no label {label!r}")
        for group in GROUPING.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                if label not in labels_here:
                    problems.append(f"{title}: grouping by {label!r}, not a label of its series")
    return problems, used


def test_every_query_names_declared_metrics_and_labels_and_covers_them_all() -> None:
    problems, used = check(queries())
    assert problems == []
    assert set(METRICS) - used == set(), "declared metrics no panel shows"


def test_the_check_catches_a_renamed_metric_a_wrong_label_and_a_wrong_suffix() -> None:
    bad = [
        ("a", "sum(rate(ray_raysource_command_total[1m]))"),  # renamed
        ("b", "sum by (node) (rate(ray_raysource_commands_total[1m]))"),  # no such label
        ("c", 'ray_raysource_active_aggregates{shard="1"}'),  # no such label
        ("d", "rate(ray_raysource_commands_total_bucket[1m])"),  # a counter has no buckets
    ]
    problems, _ = check(bad)
    assert [p.split(":")[0] for p in problems] == ["a", "b", "c", "d"], problems
