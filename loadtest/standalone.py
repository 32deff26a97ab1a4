"""A load test as a command line runs it (``raysource loadtest``, ``raysource demo``): around
:func:`~raysource.loadtest.driver.run_loadtest`, selecting Cassandra (and stopping a node it
started), starting and stopping Ray, printing the summary; ``via="both"`` runs the workload
through references, then through HTTP, on the same Ray and Cassandra, and prints both figures
side by side (:func:`comparison_lines`)."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray

from raysource.loadtest.driver import (
    LoadExtension,
    LoadTestParams,
    LoadTestReport,
    Say,
    run_loadtest,
)
from raysource.loadtest.report import summary_lines

__all__ = ["comparison_lines", "run_standalone"]


def run_standalone(
    params: LoadTestParams,
    *,
    contact: str | None = None,
    keep: bool = False,
    say: Say = print,
    extension: LoadExtension | None = None,
    on_report: Callable[[LoadTestReport], None] | None = None,
) -> int:
    """Select Cassandra, start (or connect to) Ray, run, print the summary, the consistency
    check (and ``extension``'s lines) and the report paths; stop Ray and a Cassandra node it
    started (unless ``keep``). Returns the exit code: 0 if the consistency check (and the
    extension) passed and nothing was left running."""
    from raysource.devnode.select import select_cassandra

    if params.via == "both":
        return _run_both(params, contact=contact, keep=keep, say=say, extension=extension)
    t_all = time.perf_counter()
    source = select_cassandra(contact, stop_started_node=not keep, say=say)
    started_ray = False
    try:
        if not ray.is_initialized():
            t0 = time.perf_counter()
            kwargs: dict[str, Any] = {
                "address": params.address,
                "log_to_driver": False,
                "namespace": f"raysource-{uuid.uuid4().hex[:8]}",
                "logging_level": logging.WARNING,
            }
            if params.address is None:
                kwargs["include_dashboard"] = False
            ray.init(**kwargs)
            started_ray = True
            where = params.address or "local"
            say(
                f"ray: {where} ({int(ray.cluster_resources().get('CPU', 0))} CPUs, "
                f"{len(ray.nodes())} node(s)) up in {time.perf_counter() - t0:.1f} s"
            )
        report = run_loadtest(params, source.contact_point, say=say, extension=extension)
        if on_report is not None:
            on_report(report)
        for line in summary_lines(report.result):
            say(line)
        for line in report.consistency.lines():
            say(line)
        if extension is not None:
            for line in extension.lines():
                say(line)
        say(f"report: {report.json_path}")
        say(f"        {report.png_path}")
        if report.leftover_actors:
            say(f"WARNING: actors left running: {report.leftover_actors}")
        hot = report.consistency.sampled[0] if report.consistency.sampled else None
        if hot and (keep or source.kind != "local-started"):  # a started node is wiped
            app = "" if params.workload == "seats" else " --app raysource.examples.ledger:LEDGER"
            say(
                f"inspect: raysource events {report.result['aggregate_type']['name']} {hot} "
                f"--keyspace {params.keyspace} --cassandra {source.contact_point}{app}"
            )
        return 0 if report.ok and (extension is None or extension.ok) else 1
    finally:
        if started_ray:
            ray.shutdown()
        source.release()
        say(
            f"done in {time.perf_counter() - t_all:.1f} s"
            + (
                ""
                if source.kind != "local-started" or keep
                else " (stopped the Cassandra node it started)"
            )
        )


def _run_both(
    params: LoadTestParams,
    *,
    contact: str | None,
    keep: bool,
    say: Say,
    extension: LoadExtension | None,
) -> int:
    """The workload through references, then through HTTP, on one Ray and one Cassandra;
    prints both runs and then the two side by side (HTTP's cost as a ratio)."""
    from dataclasses import replace

    from raysource.devnode.select import select_cassandra

    source = select_cassandra(contact, stop_started_node=not keep, say=say)
    reports: dict[str, LoadTestReport] = {}
    started_ray = False
    try:
        if not ray.is_initialized():
            local: dict[str, Any] = {"include_dashboard": False} if params.address is None else {}
            ray.init(
                address=params.address,
                log_to_driver=False,
                namespace=f"raysource-{uuid.uuid4().hex[:8]}",
                logging_level=logging.WARNING,
                **local,
            )
            started_ray = True
        codes = []
        for via in ("refs", "http"):
            say(f"--- via {via}")
            codes.append(
                run_standalone(
                    replace(params, via=via),
                    contact=source.contact_point,
                    keep=True,
                    say=say,
                    extension=extension if via == "http" else None,
                    on_report=functools.partial(reports.__setitem__, via),
                )
            )
        for line in comparison_lines(reports):
            say(line)
        return max(codes)
    finally:
        if started_ray:
            ray.shutdown()
        source.release()


def comparison_lines(reports: dict[str, LoadTestReport]) -> list[str]:
    """The refs and HTTP runs side by side: commands/s, p50/p99, and HTTP / refs ratios."""
    lines = [
        f"{'via':<6}{'commands/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'accepted':>10}"
        f"{'rejected':>10}{'errors':>8}"
    ]
    figures = {via: r.result["figures"] for via, r in reports.items()}
    for via, f in figures.items():
        lines.append(
            f"{via:<6}{f['commands_per_s']:>12,.0f}{f['latency_ms']['p50']:>9.2f}"
            f"{f['latency_ms']['p99']:>9.2f}{f['accepted']:>10,}{f['rejected']:>10,}"
            f"{f['errors']:>8,}"
        )
    if {"refs", "http"} <= figures.keys() and figures["refs"]["commands_per_s"] > 0:
        refs, http = figures["refs"], figures["http"]
        lines.append(
            f"HTTP / refs: throughput x{http['commands_per_s'] / refs['commands_per_s']:.2f}, "
            f"p50 +{http['latency_ms']['p50'] - refs['latency_ms']['p50']:.2f} ms, "
            f"p99 +{http['latency_ms']['p99'] - refs['latency_ms']['p99']:.2f} ms (same run)"
        )
    return lines
