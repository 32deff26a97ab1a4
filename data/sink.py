"""Write a dataset of events into a projection's view: :func:`write_view` (a Ray Data ``Datasink``).

``write_view(dataset, ProjectionView(spec, config))`` runs the projection's handler over the
rows of a :func:`~raysource.data.source.read_events` dataset (``raw=True``: the stored payload
is decoded again with the spec's types and upcasters), in each write task, a block at a time in
``batch_size`` runs (``handle_batch``). Writes are as idempotent as the handler: a view written
through :class:`~raysource.readside.views.EffectivelyOnceView` (the example's) keeps its
per-aggregate watermark, so a write task that is retried (Ray retries a task whose worker died)
applies only what the first attempt did not, and an event the live stream also delivers is
applied once.

The effectively-once writer assumes one writer per aggregate at a time, in journal order. The
dataset gives it when every aggregate's events are in one read task (``read_events`` with
``time_ranges=1``: one task per slice) and the read is fused into the write task (Ray Data
fuses a read followed directly by a write with the same concurrency: ``ReadEvents->Write``).
Each write task checks it receives every read task's rows whole and in order (``part_row``),
and fails loudly otherwise (a shuffle, a repartition, a split between read and write).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Iterable
from typing import Any

from raysource.journal.api import TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.errors import ConfigError, JournalUnavailableError
from raysource.readside.errors import ProjectionError
from raysource.readside.projections import EventEnvelope, ProjectionSpec, batches_events

__all__ = ["ProjectionView", "write_view"]

_NEEDED = (
    "persistence_id",
    "sequence_nr",
    "timestamp",
    "offset_us",
    "serializer_id",
    "manifest",
    "payload",
    "part",
    "part_row",
)


class ProjectionView:
    """The Ray Data ``Datasink`` that applies events to ``spec``'s view (built lazily: the
    ``data`` extra). Picklable; each write task opens its own Cassandra session."""

    def __new__(cls, spec: ProjectionSpec, config: CassandraConfig) -> Any:
        return _sink_class()(spec, config)


@functools.cache
def _sink_class() -> type:
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class _ProjectionView(Datasink):
        def __init__(self, spec: ProjectionSpec, config: CassandraConfig) -> None:
            self.spec, self.config = spec, config
            self.write_returns: list[int] = []  # rows per write task (after the write)

        def get_name(self) -> str:
            return "ProjectionView"

        def on_write_start(self, schema: Any = None) -> None:
            if schema is not None:
                missing = [c for c in _NEEDED if c not in schema.names]
                if missing:
                    raise ConfigError(
                        f"write_view: the dataset lacks {missing} (read it with "
                        "read_events(..., raw=True))"
                    )

        def write(self, blocks: Iterable[Any], ctx: Any) -> int:
            tables = (BlockAccessor.for_block(b).to_arrow() for b in blocks)
            return asyncio.run(_apply(self.spec, self.config, tables))

        def on_write_complete(self, write_result: Any) -> None:
            self.write_returns = list(write_result.write_returns)

    return _ProjectionView


async def _apply(spec: ProjectionSpec, config: CassandraConfig, tables: Iterable[Any]) -> int:
    """Apply every row of ``tables`` through a fresh handler of ``spec``; returns the rows."""
    from raysource.journal.cassandra.session import CassandraSession

    ser = spec.serialization()
    n = 0
    next_row: dict[int, int] = {}  # read task -> the row it must continue with
    async with CassandraSession(config) as session:
        handler = spec.handler_factory(session, config)
        await handler.prepare()
        batching = batches_events(handler)
        size = spec.settings.batch_size
        for table in tables:
            if table.num_rows == 0:  # a read task with no events (no columns either)
                continue
            cols = {c: table.column(c).to_pylist() for c in _NEEDED}
            envs = []
            for i in range(table.num_rows):
                part, row = cols["part"][i], cols["part_row"][i]
                if row != next_row.get(part, 0):
                    raise ProjectionError(
                        f"write_view: read task {part}'s rows reached this write task from row "
                        f"{row}, not {next_row.get(part, 0)}: the dataset was split or reordered "
                        "between read and write (write read_events(...) directly, with the "
                        "same concurrency); an aggregate's events must stay in one write task"
                    )
                next_row[part] = row + 1
                pid, seq = cols["persistence_id"][i], cols["sequence_nr"][i]
                obj = ser.decode(
                    cols["serializer_id"][i],
                    cols["manifest"][i],
                    cols["payload"][i],
                    persistence_id=pid,
                    sequence_nr=seq,
                )
                offset = TagOffset(cols["offset_us"][i], pid, seq)
                envs.append(EventEnvelope(obj, pid, seq, cols["timestamp"][i], offset, spec.tag))
            for j in range(0, len(envs), size):
                await _with_retries(handler, batching, envs[j : j + size])
            n += len(envs)
    return n


_WRITE_ATTEMPTS = 8  # store errors in a row a write task rides out (then it fails)


async def _with_retries(handler: Any, batching: bool, run: list[EventEnvelope]) -> None:
    """Apply ``run`` (again after a ``JournalUnavailableError``, with backoff: the view's
    watermarks make a repeat apply only what the failed attempt did not)."""
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        try:
            if batching:
                await handler.handle_batch(run)
            else:
                for env in run:
                    result = handler.handle(env)
                    if inspect.isawaitable(result):
                        await result
            return
        except JournalUnavailableError:
            if attempt == _WRITE_ATTEMPTS:
                raise
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


def write_view(dataset: Any, view: Any, *, concurrency: int | None = None) -> None:
    """Write ``dataset`` (from :func:`~raysource.data.source.read_events`, read with the same
    ``concurrency``, so Ray Data fuses each read task with its write) into ``view`` (a
    :class:`ProjectionView`) with ``dataset.write_datasink``. A task whose worker dies is
    retried by Ray (the view's watermarks make the retry apply only what is missing). A
    dataset whose read tasks reach the write split or reordered is refused with
    ``ProjectionError`` (each write task checks it gets every read task's rows whole, in
    order), never written out of order."""
    dataset.write_datasink(view, concurrency=concurrency)
