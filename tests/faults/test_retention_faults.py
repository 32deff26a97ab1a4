"""Fault-kit schedules for the retention cleaner (issue 27): the cleaner paused at its named
steps while a live writer appends and snapshots and a new activation recovers, and a recovery
paused at the epoch guard's steps while the cleaner runs a whole pass (real Cassandra). The
history checker (``raysource.testing.history``) then sees nothing acknowledged lost except what
the policy deleted (at or below the final mark, which never passes the 2nd newest snapshot),
a fresh activation recovers the fold of every acknowledged command, and ``verify`` passes."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass

import pytest

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.retention import RetentionCleaner
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.retention import KeepFromSnapshot, KeepUntilFinal
from raysource.runtime.aggregate import AggregateType, Effect, SnapshotPolicy, persist
from raysource.runtime.core import EntityCore
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.cassandra import CassandraSnapshotStore
from raysource.testing.history import History, check_history

pytestmark = pytest.mark.cassandra


@dataclass(frozen=True)
class Put:
    op_id: str
    n: int


@dataclass(frozen=True)
class Putted:
    op_id: str
    n: int


@dataclass(frozen=True)
class Tally:
    count: int = 0
    total: int = 0  # order-sensitive: each event weighs by its position


def _handle(state: Tally, command: Put) -> Effect:
    return persist(Putted(command.op_id, command.n), reply=lambda s: s.count)  # = its seq


def _apply(state: Tally, event: Putted) -> Tally:
    return Tally(state.count + 1, state.total + event.n * (state.count + 1))


TALLY = AggregateType(
    name="tally",
    initial_state=Tally(),
    command_handler=_handle,
    event_handler=_apply,
    tagger=lambda _e: ("tally",),
    snapshot=SnapshotPolicy(every_n_events=3, keep=2),
    retention=KeepFromSnapshot(2),
    events=(Putted,),
    commands=(Put,),
)
SER = serialization_for(TALLY, StoreSpec())
# every event final: the mark is the newest snapshot (the closest a policy comes to the log's
# live end), with a live writer appending behind it
FINAL = dataclasses.replace(TALLY, name="tallyf", retention=KeepUntilFinal((Putted,)))
SERS = {TALLY.name: SER, FINAL.name: serialization_for(FINAL, StoreSpec())}


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    return CassandraConfig.from_contact(
        cassandra_contact,
        keyspace=cassandra_keyspace,
        partition_size=4,
        request_timeout=30.0,
        eventual_consistency_delay=0.3,
    )


@pytest.fixture
async def session(config):
    s = await CassandraSession.open(config, create_schema=True)
    yield s
    await s.close()


class Writer:
    """A live writer: one activation at a time; ``handover`` starts the next one (a recovery)."""

    def __init__(self, session, config, eid: str, agg: AggregateType = TALLY) -> None:
        self.session, self.config, self.eid, self.agg = session, config, eid, agg
        self.history = History()
        self.sent: list[Put] = []
        self.gen = 0
        self.core: EntityCore | None = None
        self.journals: list[CassandraJournal] = []

    def activation(self, hook=None) -> EntityCore:
        self.gen += 1
        journal = CassandraJournal(self.session, self.config)
        journal.hook = hook
        self.journals.append(journal)
        return EntityCore(
            self.agg,
            self.eid,
            journal,
            CassandraSnapshotStore(self.session, self.config),
            SERS[self.agg.name],
            writer_id=f"w{self.gen}",
        )

    async def put(self, k: int) -> None:
        if self.core is None:
            self.core = self.activation()
        for _ in range(k):
            cmd = Put(f"op{len(self.sent) + 1}", len(self.sent) % 7 + 1)
            self.sent.append(cmd)
            await self.history.ask(cmd.op_id, self.core.handle(cmd), caller=f"w{self.gen}")

    async def handover(self, hook=None) -> None:
        if self.core is not None:
            await self.core.stop()
        self.core = self.activation(hook)
        await self.core.start()


async def _cleaner_paused_at(writer: Writer, cleaner_hook_step: str, journal) -> None:
    """The cleaner pauses at ``step``; meanwhile the writer appends (new snapshots), hands over
    to a new activation (a recovery), and appends again."""
    fired = False

    async def hook(step: str, **_info: object) -> None:
        nonlocal fired
        if step == cleaner_hook_step and not fired:
            fired = True
            await writer.put(4)
            await writer.handover()
            await writer.put(3)

    agg = writer.agg
    report = await RetentionCleaner(journal, agg.name, agg.retention, hook=hook).run()
    assert fired and report.aggregates_cleaned == 1


async def _recovery_paused_at(writer: Writer, journal_step: str, journal, cleaned: int) -> None:
    """A new activation's recovery pauses at the epoch guard's ``step`` while the cleaner
    runs a whole pass; then the recovery completes and the writer appends. Paused between its
    claim and its record, the aggregate has no stable view: the cleaner leaves it for a later
    run (``cleaned`` 0); after the record it cleans while the recovery has yet to replay."""
    paused, go = asyncio.Event(), asyncio.Event()

    async def hook(step: str, **_info: object) -> None:
        if step == journal_step and not paused.is_set():
            paused.set()
            await go.wait()

    recovery = asyncio.ensure_future(writer.handover(hook))
    await asyncio.wait_for(paused.wait(), 60)
    report = await RetentionCleaner(journal, writer.agg.name, writer.agg.retention).run()
    assert report.aggregates_cleaned == cleaned and len(report.skipped) == 1 - cleaned
    go.set()
    await recovery
    await writer.put(4)


SCHEDULES = {
    "cleaner after its mark": lambda w, j: _cleaner_paused_at(w, "mark.after", j),
    "cleaner after a partition delete": lambda w, j: _cleaner_paused_at(w, "deleted", j),
    "recovery after its claim": lambda w, j: _recovery_paused_at(w, "claim.after", j, 0),
    "recovery after its record": lambda w, j: _recovery_paused_at(w, "record.after", j, 1),
}


CASES = [(s, TALLY) for s in SCHEDULES] + [
    ("cleaner after its mark", FINAL),
    ("recovery after its record", FINAL),
]


@pytest.mark.parametrize(
    "schedule, agg", CASES, ids=[f"{s} ({a.retention.describe()[:12]})" for s, a in CASES]
)
async def test_cleaner_races_writer_and_recovery(session, config, schedule, agg):
    writer = Writer(session, config, f"t-{uuid.uuid4().hex[:6]}", agg)
    pid = agg.persistence_id(writer.eid)
    # snapshots at 3, 6, 9: the mark is 6; FINAL: 12 events, the last one final and
    # snapshotted, so its mark is 12 = the log's end (every row goes under a live writer)
    await writer.put(12 if agg is FINAL else 11)
    journal = CassandraJournal(session, config)
    await SCHEDULES[schedule](writer, journal)
    await RetentionCleaner(journal, agg.name, agg.retention).run()  # a final pass
    assert writer.core is not None
    await writer.core.stop()
    assert writer.history.counts() == {"ok": len(writer.sent)}

    deleted_to = (await journal._meta(pid))[0]
    snaps = await session.select_all(
        f"SELECT sequence_nr FROM {config.keyspace}.{config.snapshots_table} "
        f"WHERE persistence_id = ?",
        (pid,),
    )
    # something went, never past the policy's mark (the 2nd newest snapshot; the newest)
    assert (12 if agg is FINAL else 6) <= deleted_to <= snaps[0 if agg is FINAL else 1][0]
    await asyncio.sleep(config.eventual_consistency_delay + 0.2)
    violations = await check_history(
        writer.history,
        journal,
        aggregate_type=agg,
        serialization=SERS[agg.name],
        persistence_ids=[pid],
        command_of=lambda e: e.op_id,
        retention_deleted=lambda o: o.value <= deleted_to,
    )
    assert violations == [], "\n".join(map(str, violations))
    highest = await journal.highest_sequence_nr(pid)
    assert highest == len(writer.sent)
    assert [e.sequence_nr async for e in journal.replay(pid)] == list(
        range(deleted_to + 1, highest + 1)
    )
    expect = Tally()
    for cmd in writer.sent:
        expect = _apply(expect, Putted(cmd.op_id, cmd.n))
    fresh = writer.activation()
    await fresh.start()
    assert fresh.state == expect
    await fresh.stop()
    assert (await RetentionCleaner(journal, agg.name, agg.retention).verify()).ok
