"""Crypto-shredding on a real Cassandra node (issue 27, "Done when"): one event names two
people (a customer and a guest); after ``forget(customer)`` the customer's name is absent from
every reader (events CLI, replay, recovery, snapshots, the projection worker and its view, the
live-state scrub) while the guest in the same event stays readable; ``forget --verify`` proves
it with a bounded scan, and finds plaintext where it remains."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from raysource.cli.main import main
from raysource.examples.reservations_view import names_of, reservations_projection
from raysource.examples.seats import SHOW, GetShow, ReserveSeat, SeatReserved
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.keystore import key_ring
from raysource.journal.cassandra.session import RAW_PROFILE
from raysource.journal.personal import FORGOTTEN, SubjectForgottenError, is_forgotten
from raysource.journal.serialization import Serialization
from raysource.ops import forget
from raysource.ops.inspect import event_log, replay_states, scrub_forgotten
from raysource.readside.projections import ProjectionSettings
from raysource.readside.worker import ProjectionWorker
from raysource.runtime.aggregate import SnapshotPolicy
from raysource.snapshots.cassandra import CassandraSnapshotStore
from raysource.testing.testkit import AggregateTestKit

pytestmark = pytest.mark.cassandra

# the seat aggregate with a snapshot after every second event (read by the CLI as --app)
FORGETFUL = dataclasses.replace(SHOW, name="showf", snapshot=SnapshotPolicy(every_n_events=2))
ALICE, BOB = "Alice Zyxwv", "Bob Qwerty"
FAST = ProjectionSettings(poll_interval=0.1, commit_interval=0.2, live=False)


async def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def fresh(config: CassandraConfig, session) -> Serialization:
    """A reader as a new process has it: an empty key cache on the Cassandra key store."""
    ser = Serialization(keys=key_ring(config, session))
    FORGETFUL.register_types(ser)
    return ser


async def raw_payloads(session, config: CassandraConfig) -> list[bytes]:
    ks = config.keyspace
    rows = await session.select_all(f"SELECT payload FROM {ks}.messages_v2", profile=RAW_PROFILE)
    rows += await session.select_all(f"SELECT payload FROM {ks}.tag_views", profile=RAW_PROFILE)
    rows += await session.select_all(f"SELECT payload FROM {ks}.snapshots", profile=RAW_PROFILE)
    return [bytes(r[0]) for r in rows]


async def test_a_forgotten_subject_is_gone_from_every_reader_and_view_the_other_stays(
    cassandra_contact, cassandra_keyspace, capsys
):
    config = CassandraConfig.from_contact(
        cassandra_contact, keyspace=cassandra_keyspace, eventual_consistency_delay=0.3
    )
    journal = await CassandraJournal.connect(config, create_schema=True)
    session = journal.session
    snapshots = CassandraSnapshotStore(session, config)
    worker = None
    kits: list[AggregateTestKit] = []
    try:
        # the writer's key ring forgets a cached key within max_age (another process forgets)
        writer = Serialization(keys=key_ring(config, session, max_age=0.5))
        kit = AggregateTestKit(
            FORGETFUL,
            entity_id="s1",
            journal=journal,
            snapshot_store=snapshots,
            serialization=writer,
            roundtrip=False,
        )
        kits.append(kit)
        pid = FORGETFUL.persistence_id("s1")
        for cmd in (
            ReserveSeat("A1", "alice", name=ALICE, guest="bob", guest_name=BOB),
            ReserveSeat("A2", "bob", name=BOB),
            ReserveSeat("A3", "carol", name="Carol"),
        ):
            r = await kit.arun(cmd)
            assert r.ok, r.error
        spec = dataclasses.replace(
            reservations_projection("forget-view", settings=FAST),
            tag="show",
            aggregate_types=(FORGETFUL,),
        )
        worker = ProjectionWorker(spec, 0, session, config, journal)
        await worker.global_prepare()
        await worker.boot()
        await worker.start()

        async def view_has_all() -> bool:
            return await names_of(session, config.keyspace, "carol") == ["Carol"]

        await until(view_has_all, 60, "the view to show the three reservations")
        assert await names_of(session, config.keyspace, "alice") == [ALICE]
        # sealed at rest from the start: no table row holds a name in clear
        stored = await raw_payloads(session, config)
        assert stored and not any(ALICE.encode() in p or BOB.encode() in p for p in stored)
        assert await snapshots.load(pid, 10**9) is not None

        # ---------------------------------------------------------------- forget alice
        report = await forget.forget_subject(config, "alice", [spec], session=session, settle=0)
        assert report.views == [("forget-view", "scrubbed")]
        again = await forget.forget_subject(config, "alice", [spec], session=session, settle=0)
        assert again.views == [("forget-view", "signalled before")]  # effectively once

        # the view: alice's row scrubbed, bob's rows intact
        assert await names_of(session, config.keyspace, "alice") == [FORGOTTEN]
        assert await names_of(session, config.keyspace, "bob") == [BOB]

        # events (the `events` reader): alice's name is the placeholder, bob's readable
        log = [e async for e in event_log(journal, fresh(config, session), FORGETFUL, "s1")]
        first = log[0].event
        assert isinstance(first, SeatReserved) and is_forgotten(first.name)
        assert first.guest_name == BOB and log[1].event.name == BOB

        # new personal data for alice is refused once the writer's cached key aged out,
        # and nothing is written
        await until(
            lambda: _true(writer.keys.is_forgotten("alice")),
            10,
            "the writer's key cache to age out",
        )
        r = await kit.arun(ReserveSeat("A4", "alice", name="Alice again"))
        assert isinstance(r.error, SubjectForgottenError)
        assert await journal.highest_sequence_nr(pid) == 3
        # replay from the snapshot, and recovery of a new activation: the state recovers
        steps = [
            s
            async for s in replay_states(
                journal, fresh(config, session), FORGETFUL, "s1", snapshots=snapshots
            )
        ]
        assert steps[0].from_snapshot
        final = steps[-1].state_after
        assert final.attendees["A1"].name == FORGOTTEN and final.attendees["A1"].guest_name == BOB
        assert final.attendees["A2"].name == BOB and final.reservations["A1"] == "alice"
        revived = AggregateTestKit(
            FORGETFUL,
            entity_id="s1",
            journal=journal,
            snapshot_store=snapshots,
            serialization=fresh(config, session),
            roundtrip=False,
        )
        kits.append(revived)
        assert (await revived.arun(GetShow())).state == final  # recovers, then reads

        # the live state of the old activation predates the forget: the `state` CLI scrubs it
        live = kit.state
        assert live.attendees["A1"].name == ALICE  # still in that activation's memory
        scrubbed = scrub_forgotten(live, FORGETFUL, config)
        assert scrubbed.attendees["A1"].name == FORGOTTEN
        assert scrubbed.attendees["A1"].guest_name == BOB

        r = await revived.arun(ReserveSeat("A5", "bob", name=BOB))  # bob still writes
        assert r.ok, r.error

        # a worker started after the forget rebuilds the view with the placeholder
        await worker.stop()
        await worker.close()
        worker = ProjectionWorker(spec, 0, session, config, journal)
        await worker.boot()
        await worker.reset(None)
        await worker.start()

        async def rebuilt() -> bool:
            return await names_of(session, config.keyspace, "bob") == [BOB, BOB]

        await until(rebuilt, 60, "the rebuilt view")
        assert await names_of(session, config.keyspace, "alice") == [FORGOTTEN]

        # the events CLI and forget --verify, as an operator runs them
        contact = f"{cassandra_contact[0]}:{cassandra_contact[1]}"
        where = ["--cassandra", contact, "--keyspace", config.keyspace]
        app = ["--app", "test_forget_cassandra:FORGETFUL"]
        assert await asyncio.to_thread(main, ["events", "showf", "s1", *where, *app]) == 0
        out = capsys.readouterr().out
        assert ALICE not in out and FORGOTTEN in out and BOB in out
        code = await asyncio.to_thread(
            main, ["forget", "alice", "--verify", "--value", ALICE, *where, *app]
        )
        out = capsys.readouterr().out
        assert code == 0, out
        assert "key destroyed" in out and "scanned messages_v2" in out and "FOUND" not in out
        assert "scanned reservations_by_customer" in out and "no plaintext found" in out
        # bob is not forgotten: his key exists and the view holds his name in clear
        code = await asyncio.to_thread(
            main, ["forget", "bob", "--verify", "--value", BOB, *where, *app]
        )
        out = capsys.readouterr().out
        assert code == 1 and "key PRESENT" in out
        assert "FOUND 'Bob Qwerty' in reservations_by_customer.name" in out
        # the operator's forget: the default projection (the example view) is scrubbed
        code = await asyncio.to_thread(main, ["forget", "carol", "--settle", "0", *where])
        out = capsys.readouterr().out
        assert code == 0 and "view reservations-by-customer: scrubbed" in out, out
        assert await names_of(session, config.keyspace, "carol") == [FORGOTTEN]
        # a bound smaller than a table: reported, and not called a proof
        code = await asyncio.to_thread(
            main, ["forget", "alice", "--verify", "--limit", "1", *where, *app]
        )
        out = capsys.readouterr().out
        assert code == 1 and "bound reached" in out and "not every row was checked" in out
    finally:
        if worker is not None:
            await worker.stop()
            await worker.close()
        for k in kits:
            await k.aclose()
        await journal.close()


async def _true(v: bool) -> bool:
    return v


async def test_verify_finds_personal_data_written_in_clear(cassandra_contact, cassandra_keyspace):
    """An event written before its field was marked personal holds the name in clear: verify
    reports it without being told the plaintext (the structural check of personal fields)."""
    config = CassandraConfig.from_contact(cassandra_contact, keyspace=cassandra_keyspace)
    journal = await CassandraJournal.connect(config, create_schema=True)
    try:
        ser = Serialization(keys=key_ring(config, journal.session))
        FORGETFUL.register_types(ser)
        kit = AggregateTestKit(
            FORGETFUL, entity_id="old", journal=journal, serialization=ser, roundtrip=False
        )
        assert (await kit.arun(ReserveSeat("A1", "dave", name="Dave Old"))).ok
        await kit.aclose()
        # rewrite the stored payload as an older, unsealed version of the event
        session = journal.session
        pid = FORGETFUL.persistence_id("old")
        plain = b'{"seat":"A1","customer":"dave","name":"Dave Old","guest":"","guest_name":""}'
        await session.execute(
            f"UPDATE {config.keyspace}.messages_v2 SET payload = ? WHERE persistence_id = ? "
            "AND partition_nr = 0 AND sequence_nr = 1 AND epoch = ?",
            (plain, pid, await _epoch(session, config, pid)),
        )
        await forget.forget_subject(config, "dave", session=session, settle=0)
        report = await forget.verify_forgotten(config, "dave", (), (FORGETFUL,), session=session)
        assert any("unsealed name of the subject in messages_v2" in p for p in report.problems)
    finally:
        await journal.close()


async def _epoch(session, config: CassandraConfig, pid: str) -> int:
    row = await session.select_one(
        f"SELECT epoch FROM {config.keyspace}.messages_v2 WHERE persistence_id = ? "
        "AND partition_nr = 0 AND sequence_nr = 1",
        (pid,),
        profile=RAW_PROFILE,
    )
    return row[0]


async def test_key_store_races_one_key_per_subject_and_a_forget_is_final(
    cassandra_contact, cassandra_keyspace
):
    """Eight rings (eight processes, as far as the store can tell) seal for one new subject at
    once: every value opens with a ninth ring, so they all used the one key the lightweight
    transaction let in. Then creates race a forget: afterwards the subject is forgotten for
    every reader and no create brought a key back."""
    import threading

    from raysource.journal.cassandra.keystore import CassandraKeyStore
    from raysource.journal.keyring import KeyRing

    config = CassandraConfig.from_contact(cassandra_contact, keyspace=cassandra_keyspace)
    journal = await CassandraJournal.connect(config, create_schema=True)
    session = journal.session
    try:
        subject = "race-subject"
        gate = threading.Barrier(8)

        def seal(out: list) -> None:
            ring = KeyRing(CassandraKeyStore(config, session))
            gate.wait()
            out.append(ring.seal(subject, "same secret"))

        sealed: list[str] = []
        threads = [threading.Thread(target=seal, args=(sealed,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader = KeyRing(CassandraKeyStore(config, session))
        assert len(sealed) == 8
        assert [reader.open(s, {}) for s in sealed] == ["same secret"] * 8

        other = "race-forget"
        results: list[object] = []
        start = threading.Barrier(7)

        def create() -> None:
            ring = KeyRing(CassandraKeyStore(config, session))
            start.wait()
            try:
                results.append(ring.seal(other, "v"))
            except SubjectForgottenError as exc:
                results.append(exc)

        def destroy() -> None:
            start.wait()
            KeyRing(CassandraKeyStore(config, session)).forget(other)

        threads = [threading.Thread(target=create) for _ in range(6)]
        threads.append(threading.Thread(target=destroy))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 6
        late = KeyRing(CassandraKeyStore(config, session))
        assert late.is_forgotten(other)
        for r in results:  # sealed before the forget: now the placeholder for every reader
            if isinstance(r, str):
                assert late.open(r, {}) == FORGOTTEN
        with pytest.raises(SubjectForgottenError):
            late.seal(other, "after")
    finally:
        await journal.close()
