"""``KeepUntilFinal`` on real Cassandra (issue 27, item 1): an account whose ``Closed`` event is
stored loses its history up to the snapshot taken on it, recovers to the same state (also when
every row went) and takes new events; a lagging projection still reads every tag row it had not
read; an open account, a closed one within its grace and the writer guard's rows are untouched;
two cleaners racing over the type delete exactly what one would; a cleaner killed after its
mark resumes and deletes exactly to it; ``verify`` proves it."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass

import pytest
from test_retention_cassandra import core, rows_of, session  # noqa: F401 (fixture)

from raysource.journal.api import TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.retention import RetentionCleaner
from raysource.journal.errors import ConfigError
from raysource.journal.retention import KeepUntilFinal
from raysource.readside.offsets import CassandraOffsetStore
from raysource.runtime.aggregate import (
    AggregateType,
    Effect,
    SnapshotPolicy,
    persist,
    reject,
    unknown_command,
)

pytestmark = pytest.mark.cassandra


@dataclass(frozen=True)
class Open:
    owner: str


@dataclass(frozen=True)
class Deposit:
    n: int


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Remark:
    text: str


@dataclass(frozen=True)
class Opened:
    owner: str


@dataclass(frozen=True)
class Deposited:
    n: int


@dataclass(frozen=True)
class Closed:
    pass


@dataclass(frozen=True)
class Remarked:
    text: str


@dataclass(frozen=True)
class Account:
    owner: str = ""
    balance: int = 0
    closed: bool = False
    remarks: int = 0


def _handle(state: Account, command: object) -> Effect:
    match command:
        case Open(owner):
            return persist(Opened(owner), reply=lambda s: s.balance)
        case Deposit(n):
            if state.closed:
                return reject("closed")
            return persist(Deposited(n), reply=lambda s: s.balance)
        case Close():
            return persist(Closed(), reply=lambda s: s.balance)
        case Remark(text):  # allowed after the close: events after the final snapshot
            return persist(Remarked(text), reply=lambda s: s.remarks)
        case _:
            unknown_command(command, "account")


def _apply(state: Account, event: object) -> Account:
    match event:
        case Opened(owner):
            return dataclasses.replace(state, owner=owner)
        case Deposited(n):
            return dataclasses.replace(state, balance=state.balance + n * (state.balance + 1))
        case Closed():
            return dataclasses.replace(state, closed=True)
        case Remarked():
            return dataclasses.replace(state, remarks=state.remarks + 1)
    return state


ACCOUNT: AggregateType = AggregateType(
    name="acct",
    initial_state=Account(),
    command_handler=_handle,
    event_handler=_apply,
    tagger=lambda _e: ("acct",),
    snapshot=SnapshotPolicy(every_n_events=5, predicate=lambda _s, e: isinstance(e, Closed)),
    events=(Opened, Deposited, Closed, Remarked),
    commands=(Open, Deposit, Close, Remark),
    retention=KeepUntilFinal((Closed,)),
)
GRACE = dataclasses.replace(ACCOUNT, name="graceacct", retention=KeepUntilFinal((Closed,), 3600))


def test_policy_is_plain_data_and_checked():
    p = KeepUntilFinal((Closed, "custom.Name"), grace_s=60)
    assert p.is_final(f"{__name__}.Closed#1") and p.is_final("pickle:custom.Name")
    assert p.is_final("acct.Closed#2", "acct") and not p.is_final("acct.Closed#2", "other")
    assert not p.is_final(f"{__name__}.Closed2#1") and not p.is_final(f"{__name__}.Opened#1")
    assert p.mark(13, 13, 61) == (13, "")
    assert p.mark(10, 13, 61) == (0, "no snapshot at or after the final event #13")
    assert p.mark(13, 13, 59)[0] == 0 and "grace" in p.mark(13, 13, 59)[1]
    assert p.mark(13, 0, 0)[0] == 0
    for bad in (Closed, (), (1,)):
        with pytest.raises(ConfigError):
            KeepUntilFinal(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        KeepUntilFinal((Closed,), grace_s=-1)
    with pytest.raises(ConfigError, match="takes no snapshots"):
        dataclasses.replace(ACCOUNT, snapshot=SnapshotPolicy())


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    return CassandraConfig.from_contact(
        cassandra_contact,
        keyspace=cassandra_keyspace,
        partition_size=4,
        request_timeout=30.0,
        eventual_consistency_delay=0.4,
    )


async def tag_keys(journal, after: TagOffset | None = None) -> list[tuple[str, int]]:
    return [
        (t.event.persistence_id, t.event.sequence_nr)
        async for t in journal.events_by_tag("acct", after)
    ]


async def write(agg, eid, session, config, deposits: int, close: bool, remarks: int = 0):
    c = core(agg, eid, session, config, "w1")
    await c.handle(Open(eid))
    for i in range(deposits):
        await c.handle(Deposit(i + 1))
    if close:
        await c.handle(Close())
    for i in range(remarks):
        await c.handle(Remark(f"r{i}"))
    state = c.state
    await c.stop()
    return state


class Killed(BaseException):
    pass


async def test_closed_accounts_lose_their_history(session, config):
    run = uuid.uuid4().hex[:6]
    agg = dataclasses.replace(ACCOUNT, name=f"acct{run}")
    grace = dataclasses.replace(GRACE, name=f"grace{run}")
    # a: #1 Opened, #2-12 Deposited, #13 Closed (snapshot: 13; also 5, 10), #14 Remarked
    a = await write(agg, "a", session, config, 11, True, remarks=1)
    e = await write(agg, "e", session, config, 3, True)  # #5 Closed: snapshot 5 = the end
    o = await write(agg, "o", session, config, 11, False)  # open: kept
    await write(grace, "g", session, config, 11, True)  # closed within its grace: kept
    pa, pe, po = (agg.persistence_id(x) for x in "aeo")
    pg = grace.persistence_id("g")
    journal = CassandraJournal(session, config)
    await asyncio.sleep(config.eventual_consistency_delay + 0.2)
    everything = [t async for t in journal.events_by_tag("acct")]
    lag_at = next(
        t.offset for t in everything if t.event.persistence_id == pa and t.event.sequence_nr == 4
    )
    await CassandraOffsetStore(session, config.keyspace).save_offset("lagging", "w0", lag_at)
    unread_before = await tag_keys(journal, lag_at)

    plan = await RetentionCleaner(journal, agg.name, agg.retention).run(dry_run=True)
    assert sorted((p.persistence_id, p.mark, p.rows) for p in plan.plans) == [
        (pa, 13, 13),
        (pe, 5, 5),
    ]
    held = await RetentionCleaner(journal, grace.name, grace.retention).run()
    assert held.rows_deleted == 0 and held.aggregates_seen == 1
    assert held.held_count == 1 and "within its grace (3600 s)" in "\n".join(held.lines())
    assert plan.held_count == 0  # the open account is not final: nothing to report
    # two cleaners of the type race (two hosts, or the CLI beside the background one)
    await asyncio.gather(
        RetentionCleaner(journal, agg.name, agg.retention).run(),
        RetentionCleaner(journal, agg.name, agg.retention, rows_per_s=200).run(),
    )
    assert await rows_of(session, config, pa) == [14]  # what follows the final snapshot
    assert await rows_of(session, config, pe) == []  # every row: the snapshot holds it all
    assert await rows_of(session, config, po) == list(range(1, 13))
    assert await rows_of(session, config, pg) == list(range(1, 14))
    for pid, last in ((pa, 14), (pe, 5)):  # the writer guard's rows and the metadata stay
        epochs = await session.select_all(
            f"SELECT epoch FROM {config.keyspace}.{config.epochs_table} WHERE persistence_id = ?",
            (pid,),
        )
        assert [r[0] for r in epochs] == [1]
        assert (await journal.epochs.fence(pid))[0] == 1
        assert await journal.highest_sequence_nr(pid) == last
    again = await RetentionCleaner(journal, agg.name, agg.retention).run()
    assert (again.rows_deleted, again.tombstones) == (0, 0)

    # recovery from the final snapshot, then new events after it (a new epoch)
    for eid, before, snap, replayed, last in (("a", a, 13, 1, 14), ("e", e, 5, 0, 5)):
        c = core(agg, eid, session, config, "w2")
        stats = await c.start()
        assert c.state == before
        assert (stats.snapshot_sequence_nr, stats.events_replayed, stats.sequence_nr) == (
            snap,
            replayed,
            last,
        )
        assert await c.handle(Remark("after")) == before.remarks + 1
        await c.stop()
        assert await journal.highest_sequence_nr(agg.persistence_id(eid)) == last + 1
    assert o.balance > 0

    # the lagging projection still reads every tag row it had not read; the rows it read of
    # deleted events go, the rest stay
    await asyncio.sleep(config.eventual_consistency_delay + 0.2)
    cleaner = RetentionCleaner(journal, agg.name, agg.retention)
    tags = await cleaner.clean_tags()
    unread_after = await tag_keys(journal, lag_at)
    # (a recovery re-writes its newest group's tag rows: a#14 may show twice, later)
    assert unread_after[: len(unread_before)] == unread_before
    assert set(unread_after) == {*unread_before, (pa, 15), (pe, 6)}
    remaining = await tag_keys(journal)
    assert sorted({s for pid, s in remaining if pid == pa}) == list(range(4, 16))
    assert tags.rows_deleted == 3  # a#1-3: a was written before e
    assert (await cleaner.verify()).ok

    # a cleaner killed right after writing its mark: a fresh one deletes exactly to it
    k = await write(agg, "k", session, config, 6, True, remarks=1)  # #8 Closed, #9
    pk = agg.persistence_id("k")

    async def kill(step: str, **info: object) -> None:
        if step == "mark.after" and info["pid"] == pk:
            raise Killed(step)

    with pytest.raises(Killed):
        await RetentionCleaner(journal, agg.name, agg.retention, hook=kill).run()
    assert await rows_of(session, config, pk) == list(range(1, 10))  # the mark only
    assert [x.sequence_nr async for x in journal.replay(pk)] == [9]
    await RetentionCleaner(journal, agg.name, agg.retention).run()
    assert await rows_of(session, config, pk) == [9]
    # what followed a purge stays (a#15 crossed a snapshot at 15, but no final event came)
    assert await rows_of(session, config, pa) == [14, 15]
    c = core(agg, "k", session, config, "w2")
    await c.start()
    assert c.state == k
    await c.stop()
    assert (await cleaner.verify()).ok
