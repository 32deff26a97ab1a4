"""The event log as a Ray Dataset: :func:`read_events` (a Ray Data ``Datasource``).

``read_events(config, tag, types)`` reads every event of ``tag`` up to a **consistent cut** (a
:class:`~raysource.journal.api.TagOffset`; default :func:`stable_cut`, the newest offset the
journal's visibility guarantee covers now) as Ray Data read tasks, one per (slice, time range):

* **slice**: the persistence id's slice (:func:`~raysource.readside.projections.slice_of`, the
  projections' split), so one aggregate's events are in one task, in journal order. A write of
  the dataset into a view (:func:`raysource.data.sink.write_view`) relies on it.
* **time range**: ``time_ranges > 1`` splits ``(start, cut]`` by tag-write time into equal
  ranges (clustering slices of the tag's ``(tag, hour)`` partitions). More parallel reads for
  analytics; an aggregate's events may then span tasks (order per aggregate is still given by
  ``sequence_nr``), so a view write wants ``time_ranges=1``.

The cut is **read once** (:mod:`raysource.data.cut`): the driver reads the tag's index up to
the cut through the journal's tag query (:meth:`Journal.events_by_tag`: stable rows only, the
epoch-fenced log's readers' rules) when the dataset is planned, and splits it among the read
tasks as runs of sequence numbers per aggregate, which each task reads from the aggregates' own
logs (:meth:`Journal.replay`), never the tag. The tasks' union is every aggregate's events of
the tag up to the cut, each once, in order per aggregate (``raysource events`` lists the same).
The cut is what makes a rebuild and its live stream meet: an event whose tag offset is after
the cut (written during the read, say) is not in the dataset, and a projection worker resumed
at the cut reads exactly those (strictly after it). A tag row the journal re-wrote (a slow tag
write, at-least-once) can put an event in the dataset and again after the cut; an
effectively-once view applies it once.

Rows (Arrow blocks): ``persistence_id``, ``sequence_nr``, ``timestamp`` (the writer's clock,
UTC), ``offset_us`` (tag-write time, the offset's first field), ``tag``, ``slice``,
``event_type`` (the class name), the event's payload fields as columns (scalars as they are,
nested values as JSON text; a field named like a base column is prefixed ``event_``), and with
``raw=True`` (default) the stored ``serializer_id``/``manifest``/``payload``, which a view write
decodes again, and ``part``/``part_row`` (the read task and the row's place in it). Events
are decoded with the registered types and upcasters of ``types``.

Filter by aggregate type with ``aggregate_type="show"`` (events of that type in the tag: the
journal indexes events by tag, not by type, so a type is read through a tag its tagger writes).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import threading
import time
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from typing import Any

import msgspec

from raysource.data.cut import Part, read_chunks, read_cut, split_cut
from raysource.journal.api import StoredEvent, TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.errors import ConfigError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType

__all__ = ["EventLogSource", "read_events", "stable_cut", "BASE_COLUMNS"]

BASE_COLUMNS = (
    "persistence_id",
    "sequence_nr",
    "timestamp",
    "offset_us",
    "tag",
    "slice",
    "event_type",
)
RAW_COLUMNS = ("serializer_id", "manifest", "payload", "part", "part_row")


def stable_cut(config: CassandraConfig) -> TagOffset:
    """The newest cut the journal's tag query guarantees complete now: every event whose tag
    row is at or before it is readable (``now - eventual_consistency_delay``, the query's own
    cutoff); nothing that lands later can be at or before it (a slow tag write is re-written
    with a fresh, later offset)."""
    now_us = time.time_ns() // 1000
    return TagOffset(now_us - int(config.eventual_consistency_delay * 1_000_000), "", 0)


def _serialization(types: Sequence[AggregateType]) -> Serialization:
    ser = Serialization()
    for t in types:
        t.register_types(ser)
    return ser


def _columns(rows: list[dict[str, Any]]) -> Any:
    """An Arrow table of ``rows`` (dicts); a column whose values Arrow cannot type as one
    (a field of two event types with different types) becomes text."""
    import pyarrow as pa

    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    arrays, fields = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array([None if v is None else str(v) for v in values], pa.string())
        arrays.append(arr)
        fields.append(name)
    return pa.Table.from_arrays(arrays, names=fields)


def _fields(obj: Any) -> dict[str, Any]:
    """The event's payload fields as column values (scalars; nested values as JSON)."""
    try:
        data = msgspec.to_builtins(obj)
    except (TypeError, msgspec.MsgspecError):
        return {}
    if not isinstance(data, dict):
        return {"value": json.dumps(data)}
    out = {}
    for k, v in data.items():
        key = f"event_{k}" if k in BASE_COLUMNS or k in RAW_COLUMNS else k
        out[key] = v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v)
    return out


class EventLogSource:
    """The Ray Data ``Datasource`` of :func:`read_events` (built lazily: ``ray.data`` is the
    ``data`` extra). Picklable; each read task opens its own Cassandra session."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return _datasource_class()(*args, **kwargs)


@functools.cache
def _datasource_class() -> type:
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class _EventLogSource(Datasource):
        def __init__(
            self,
            config: CassandraConfig,
            tag: str,
            types: Sequence[AggregateType],
            *,
            until: TagOffset,
            after: TagOffset | None = None,
            slices: int = 1,
            time_ranges: int = 1,
            aggregate_type: str | None = None,
            raw: bool = True,
            block_rows: int = 5_000,
        ) -> None:
            super().__init__()
            self.config, self.tag, self.types = config, tag, tuple(types)
            self.until, self.after = until, after
            self.slices, self.time_ranges = slices, time_ranges
            self.aggregate_type, self.raw, self.block_rows = aggregate_type, raw, block_rows
            self._parts: list[Part] | None = None

        def get_name(self) -> str:
            return "Events"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def parts(self) -> list[Part]:
            """The read tasks' parts: the cut read once (here, in the driver, the first time
            it is asked), split by slice and time range (:mod:`raysource.data.cut`)."""
            if self._parts is None:
                index = _run(
                    read_cut(self.config, self.tag, self.after, self.until, self.aggregate_type)
                )
                self._parts = split_cut(index, self.slices, self.time_ranges)
            return self._parts

        def get_read_tasks(
            self,
            parallelism: int,
            per_task_row_limit: int | None = None,
            data_context: Any = None,
        ) -> list[Any]:
            tasks = []
            light = copy.copy(self)  # what a task carries: its own part, not every part
            light._parts = None
            for part in self.parts():
                meta = BlockMetadata(
                    num_rows=None, size_bytes=None, input_files=None, exec_stats=None
                )
                read = _ReadFn(light, part)
                tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
            return tasks

        def _read(self, part: Part) -> Iterator[Any]:
            # the reads run on an event loop of their own thread: the consumer of the blocks
            # may be inside an event loop (a fused write task applying them asynchronously)
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="read-events", daemon=True)
            thread.start()
            blocks = _read_part(self, part)
            try:
                while True:
                    try:
                        step = asyncio.run_coroutine_threadsafe(_next(blocks), loop)
                        rows = step.result()
                    except StopAsyncIteration:
                        return
                    yield _columns(rows)
            finally:
                asyncio.run_coroutine_threadsafe(blocks.aclose(), loop).result()
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()

    return _EventLogSource


class _ReadFn:
    """One read task's function: its part of the cut (Ray Data names a read function by its
    ``__name__``, which a ``functools.partial`` lacks)."""

    def __init__(self, source: Any, part: Part) -> None:
        self.source, self.part = source, part
        self.__name__ = f"read_events_part_{part.index}"

    def __call__(self) -> Iterator[Any]:
        return self.source._read(self.part)


async def _next(blocks: AsyncGenerator[list[dict[str, Any]], None]) -> list[dict[str, Any]]:
    return await blocks.__anext__()


def _run(coro: Any) -> Any:
    """Run ``coro`` to completion from sync code (planning runs in the driver, which may be
    inside an event loop: then in a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _read_part(src: Any, part: Part) -> AsyncGenerator[list[dict[str, Any]], None]:
    """The rows of one read task, in blocks of ``block_rows``: its chunks' events, read from
    the aggregates' logs (:func:`~raysource.data.cut.read_chunks`; never the tag)."""
    from raysource.journal.cassandra.journal import CassandraJournal

    ser = _serialization(src.types)
    n = 0  # rows of this part so far (part_row: a view write checks it got the part whole)
    rows: list[dict[str, Any]] = []
    journal = await CassandraJournal.connect(src.config)
    try:
        async for chunk, events in read_chunks(journal, src.tag, part.chunks):
            for e in events:
                row = _row(src, part, ser, e, chunk.offset_of(e.sequence_nr))
                if src.raw:
                    row.update(part=part.index, part_row=n)
                n += 1
                rows.append(row)
                if len(rows) >= src.block_rows:
                    yield rows
                    rows = []
        if rows:
            yield rows
    finally:
        await journal.close()


def _row(
    src: Any, part: Part, ser: Serialization, e: StoredEvent, offset_us: int
) -> dict[str, Any]:
    """The dataset row of one event."""
    pid, seq = e.persistence_id, e.sequence_nr
    obj = ser.decode(
        e.serializer_id, e.manifest, bytes(e.payload), persistence_id=pid, sequence_nr=seq
    )
    row: dict[str, Any] = {
        "persistence_id": pid,
        "sequence_nr": seq,
        "timestamp": e.timestamp,
        "offset_us": offset_us,
        "tag": src.tag,
        "slice": part.slice,
        "event_type": type(obj).__name__,
    }
    row.update(_fields(obj))
    if src.raw:
        row.update(serializer_id=e.serializer_id, manifest=e.manifest, payload=bytes(e.payload))
    return row


def read_events(
    config: CassandraConfig,
    tag: str,
    types: Iterable[AggregateType],
    *,
    until: TagOffset | None = None,
    after: TagOffset | None = None,
    slices: int = 1,
    time_ranges: int = 1,
    aggregate_type: str | None = None,
    raw: bool = True,
    block_rows: int = 5_000,
    concurrency: int | None = None,
) -> Any:
    """A Ray Dataset of the events of ``tag`` in ``(after, until]`` (``until`` default: the
    :func:`stable_cut` now), read by ``slices * time_ranges`` tasks (see the module
    docstring). ``ray.data.read_datasource`` under the hood: the dataset is lazy, the cut is
    fixed here. Needs ``pip install raysource[data]``."""
    import ray.data

    if slices < 1 or time_ranges < 1 or block_rows < 1:
        raise ConfigError("slices, time_ranges and block_rows must be >= 1")
    if not tag:
        raise ConfigError("read_events needs a tag")
    cut = until if until is not None else stable_cut(config)
    source = EventLogSource(
        config,
        tag,
        list(types),
        until=cut,
        after=after,
        slices=slices,
        time_ranges=time_ranges,
        aggregate_type=aggregate_type,
        raw=raw,
        block_rows=block_rows,
    )
    # one block stream per read task, not split further: a view write wants an aggregate's
    # events in one task (see raysource.data.sink)
    return ray.data.read_datasource(
        source, concurrency=concurrency, override_num_blocks=slices * time_ranges
    )
