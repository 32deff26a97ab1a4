"""Keeps Ray's expected crash reports out of the terminal while a benchmark kills on purpose.

When a benchmark removes a node on purpose (``sharding_bench``'s node loss), the agents of the
removed node publish "Raylet is terminated. Termination is unexpected ... Last 20 lines of the
Raylet logs" to the driver, and the GCS "The node with node id: ... has been marked dead", which
the driver prints (with or without ``log_to_driver``): two screens that read like a crash.
:func:`expected_raylet_deaths` says once, in one line, that a node is removed on purpose, and
holds back only those reports while it is active: raylet termination reports, and node-death
notices naming a node the benchmark declared (:meth:`Held.expect_node`). They are written to a
file (named in a one-line summary) instead. Every other message Ray publishes (another node's
death, a worker crash, an OOM kill, ...) and every exception still shows as before.
:func:`expected_reports` does the same for other reports named by a pattern (``service_bench``:
Ray Serve's shutdown kills its own controller, and Ray reports the controller's pending
``graceful_shutdown`` task as failed).

Uses Ray's private ``ray._private.worker.print_to_stdstream`` (the printer of the driver's
error listener thread, looked up at each call); if a Ray upgrade removes it, nothing is held
back and the reports show as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RAYLET_DEATH = "Raylet is terminated."
NODE_DEATH = "has been marked dead"


class Held(list):
    """The reports held back (their text); what to hold back: raylet termination reports (if
    ``raylet_deaths``), death notices of the node ids removed on purpose, and reports that
    contain one of ``patterns``."""

    def __init__(self, raylet_deaths: bool = False, patterns: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.raylet_deaths = raylet_deaths
        self.patterns = patterns
        self.node_ids: set[str] = set()

    def expect_node(self, node_id: str) -> None:
        """Declare ``node_id`` as removed on purpose: Ray's notice of its death is held back."""
        self.node_ids.add(node_id)

    def expected(self, data: dict[str, Any]) -> bool:
        text = "\n".join(str(line) for line in data.get("lines") or [])
        if data.get("pid") != "raylet":
            return False
        if self.raylet_deaths and text.startswith(RAYLET_DEATH):
            return True
        if any(p in text for p in self.patterns):
            return True
        return NODE_DEATH in text and any(n in text for n in self.node_ids)


@contextmanager
def expected_reports(
    what: str,
    log_file: str | Path,
    *,
    raylet_deaths: bool = False,
    patterns: tuple[str, ...] = (),
    say: Callable[[str], None] = print,
) -> Iterator[Held]:
    """While active: the reports Ray publishes to the driver that :class:`Held` expects are
    written to ``log_file`` instead of the terminal. ``what`` (e.g. "removes one of 3 nodes")
    is said once at the start; at the end one line says how many reports were held back and
    where they are. Yields the :class:`Held` list."""
    held = Held(raylet_deaths, patterns)
    try:
        import ray._private.worker as ray_worker

        original = ray_worker.print_to_stdstream
    except (ImportError, AttributeError):  # a Ray without it: show everything as before
        say(f"note: this benchmark {what} on purpose")
        yield held
        return

    def printer(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if held.expected(data):
            held.append("\n".join(str(line) for line in data.get("lines") or []))
            return
        original(data, *args, **kwargs)

    say(
        f"note: this benchmark {what} on purpose; Ray's reports of it are expected and go to "
        f"{log_file}, not here"
    )
    ray_worker.print_to_stdstream = printer
    try:
        yield held
    finally:
        ray_worker.print_to_stdstream = original
        if held:
            path = Path(log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n\n".join(held) + "\n")
            say(f"({len(held)} expected report(s) held back: {path})")


def expected_raylet_deaths(what: str, log_file: str | Path, say: Callable[[str], None] = print):  # noqa: ANN201
    """:func:`expected_reports` for a benchmark that removes nodes: raylet termination reports
    and the death notices of the nodes declared with :meth:`Held.expect_node`."""
    return expected_reports(what, log_file, raylet_deaths=True, say=say)
