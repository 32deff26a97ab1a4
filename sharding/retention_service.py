"""The retention service: one Ray actor per system that applies the retention policies of its
aggregate types in the background (issue 27), the same cleaner ``raysource retention run``
runs (:class:`~raysource.journal.cassandra.retention.RetentionCleaner`).

Opt in with ``System.start(..., retention=RetentionSettings())`` (Cassandra stores only). The
actor is named ``<system>:retention`` and created get-or-create, so a cluster runs one however
many drivers start the system; if it does run twice (two systems over one keyspace, or the CLI
beside it) nothing goes wrong: every step of the cleaner is idempotent and computed from
durable state (``tests/journal/test_retention_final.py`` races two). Each pass walks every type
whose
policy deletes, at most ``max_aggregates`` aggregates per type, paced to ``rows_per_s``, then
(``tags``) the tag rows; the next pass starts ``every_s`` seconds after one ends and resumes the
walk where it stopped. A failed pass is logged, counted in ``info()`` and retried next time.
``System.shutdown`` stops it (the pass in flight ends at its next delete).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from raysource.journal.errors import ConfigError
from raysource.runtime.stores import open_stores
from raysource.sharding.region import SystemSpec

__all__ = ["RetentionSettings", "RetentionService", "get_or_create_retention_service"]

log = logging.getLogger(__name__)


def retention_service_name(system: str) -> str:
    """The retention service actor of a system (one per cluster)."""
    return f"{system}:retention"


@dataclass(frozen=True)
class RetentionSettings:
    """How the background cleaner works: a pass every ``every_s`` seconds (counted from the
    end of the previous one), at most ``max_aggregates`` aggregates per type per pass, at most
    ``rows_per_s`` rows deleted per second (None: unpaced), and the tag rows too (``tags``)."""

    every_s: float = 300.0
    rows_per_s: float | None = 1000.0
    max_aggregates: int | None = 10_000
    tags: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.every_s, (int, float)) or self.every_s <= 0:
            raise ConfigError(f"every_s must be > 0, got {self.every_s!r}")
        if self.rows_per_s is not None and self.rows_per_s <= 0:
            raise ConfigError(f"rows_per_s must be > 0 or None, got {self.rows_per_s!r}")
        if self.max_aggregates is not None and self.max_aggregates < 1:
            raise ConfigError(f"max_aggregates must be >= 1 or None, got {self.max_aggregates!r}")


class RetentionService:
    """The retention service actor (see the module docstring). Its passes run on their own
    thread and event loop; ``info`` and ``stop`` are answered meanwhile."""

    def __init__(self, spec: SystemSpec, settings: RetentionSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.types = [t for t in spec.types if t.retention.deletes]
        self.passes = 0
        self.failures = 0
        self.error: str | None = None
        self.rows_deleted: dict[str, int] = {t.name: 0 for t in self.types}
        self.tag_rows_deleted = 0
        self.last_pass_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="raysource-retention", daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._amain())
        except Exception as exc:  # reported by info(); the actor stays to say so
            log.exception("retention service of %s stopped", self.spec.name)
            self.error = repr(exc)
            self._ready.set()

    async def _amain(self) -> None:
        from raysource.journal.cassandra.journal import CassandraJournal
        from raysource.journal.cassandra.retention import RetentionCleaner

        self._loop = asyncio.get_running_loop()
        self._stop = stop = asyncio.Event()
        journal, snapshots = await open_stores(self.spec.store)
        if not isinstance(journal, CassandraJournal):
            raise ConfigError("the retention service needs a Cassandra store")
        s = self.settings
        cleaners = [
            RetentionCleaner(
                journal,
                t.name,
                t.retention,
                rows_per_s=s.rows_per_s,
                max_aggregates=s.max_aggregates,
            )
            for t in self.types
        ]
        self._ready.set()
        try:
            while not stop.is_set():
                pass_ = asyncio.ensure_future(self._pass(cleaners))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({pass_, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not pass_.done():  # stopping: the pass in flight ends here
                    pass_.cancel()
                    await asyncio.gather(pass_, return_exceptions=True)
                    break
                stopped.cancel()
                try:
                    await asyncio.wait_for(stop.wait(), s.every_s)
                except TimeoutError:
                    pass
        finally:
            await journal.close()
            await snapshots.close()

    async def _pass(self, cleaners: list[Any]) -> None:
        try:
            for cleaner in cleaners:
                report = await cleaner.run()
                self.rows_deleted[cleaner.type_name] += report.rows_deleted
                if self.settings.tags:
                    tags = await cleaner.clean_tags()
                    self.tag_rows_deleted += tags.rows_deleted
            self.passes += 1
            self.last_pass_at = time.time()
            self.error = None
        except Exception as exc:  # the next pass retries (the cleaner resumes)
            self.failures += 1
            self.error = repr(exc)
            log.warning("retention pass of %s failed: %r", self.spec.name, exc)

    def info(self) -> dict[str, Any]:
        """Completed passes, failed ones, the last error, rows deleted per type and tag rows
        deleted (since this actor started), and the types it cleans."""
        return {
            "types": [t.name for t in self.types],
            "passes": self.passes,
            "failures": self.failures,
            "error": self.error,
            "rows_deleted": dict(self.rows_deleted),
            "tag_rows_deleted": self.tag_rows_deleted,
            "last_pass_at": self.last_pass_at,
        }

    def stop(self) -> None:
        """End the loop (the pass in flight stops at its next await) and wait for it."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)


_RetentionServiceActor = ray.remote(RetentionService)


def get_or_create_retention_service(spec: SystemSpec, settings: RetentionSettings) -> Any:
    """The retention service of ``spec``'s system (created if missing: one per cluster)."""
    options: dict[str, Any] = {
        "name": retention_service_name(spec.name),
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,  # a lost node: Ray re-creates it elsewhere (the walk resumes)
        "max_concurrency": 4,
        "num_cpus": 0.01,
    }
    if spec.namespace is not None:
        options["namespace"] = spec.namespace
    return _RetentionServiceActor.options(**options).remote(spec, settings)
