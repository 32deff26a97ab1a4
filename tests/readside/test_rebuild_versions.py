"""Issue 29: the version CLI end to end, and who runs a side effect across switch and rollback
(real Ray, real Cassandra; the CLI's ``main`` with argv, in a thread, as a user types it).

``raysource projection deploy -> switch -> rollback -> switch`` on the reservations view with a
declared side effect (a row per run in ``effect_runs``, naming the version that ran it), while
each version is paused and resumed so that every handover case happens:

* version 2 is deployed while version 1 is paused behind the deploy cut (events ``A``), and
  switched to: version 1 never applied ``A``, so version 2 runs their held effects (``A`` is
  before the cut: a release "after the deploy cut" would lose them);
* version 2 is paused while version 1 (standing by) applies ``C`` and the CLI rolls back:
  version 1 runs what it held for ``C`` (a rollback that releases nothing loses them);
* a switch to version 2 while it is paused and behind is refused: one ``raysource: error:``
  line, exit 2, no traceback, the alias unchanged (``projection versions``);
* version 2, resumed, applies ``C`` and ``D`` (which version 1 ran, live) and is switched to
  again: what it held for them is discarded.

At the end every event of the tag had its effect run exactly once, by the expected version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections import Counter
from dataclasses import dataclass

import cloudpickle
import pytest
import ray.cloudpickle as ray_cloudpickle
from readside_idle import until_caught_up

from raysource.cli import main as cli_main
from raysource.cli import projection as cli_projection
from raysource.examples.reservations_view import ReservationsByCustomer, reservations_projection
from raysource.examples.seats import SHOW, ReserveSeat, seat_label
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.readside.projection_actor import Projections
from raysource.readside.projections import ProjectionSettings, ProjectionSpec
from raysource.readside.verify import tag_events
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.testkit import AggregateTestKit

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]

cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])

DELAY = 0.5
BASE = "reservations-by-customer"
SPEC = f"{__name__}:BUILD"  # the CLI's --spec: this module's spec builder
FAST = ProjectionSettings(
    poll_interval=0.1, commit_every=5, commit_interval=0.3, retry_backoff=0.05, batch_size=20
)


class _Effects(ReservationsByCustomer):
    """The view with a declared side effect: one ``effect_runs`` row per run (the "email")."""

    def __init__(self, session, keyspace: str, version: int) -> None:
        super().__init__(session, keyspace, audit=True, version=version)
        self.runs = f"{keyspace}.effect_runs"
        self.version = version

    async def global_prepare(self) -> None:
        await super().global_prepare()
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.runs} (pid text, seq bigint, version int, "
            "at timeuuid, PRIMARY KEY ((pid), seq, at))",
            prepare=False,
            timeout=60.0,
        )

    async def side_effect(self, envelope) -> None:
        await self.session.execute(
            f"INSERT INTO {self.runs} (pid, seq, version, at) VALUES (?, ?, ?, now())",
            (envelope.persistence_id, envelope.sequence_nr, self.version),
        )


@dataclass(frozen=True)
class _Factory:
    version: int

    def __call__(self, session, config):
        return _Effects(session, config.keyspace, self.version)


@dataclass(frozen=True)
class Build:
    """The spec builder (``version -> ProjectionSpec``) the CLI loads with ``--spec``."""

    def __call__(self, version: int) -> ProjectionSpec:
        spec = reservations_projection(BASE, version=version, settings=FAST, audit=True)
        return dataclasses.replace(spec, handler_factory=_Factory(version))


BUILD = Build()


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    return CassandraConfig.from_contact(
        cassandra_contact, keyspace=cassandra_keyspace, eventual_consistency_delay=DELAY
    )


class _Cli:
    """``raysource <argv> --cassandra C --keyspace K`` through the CLI's ``main``: (code, stdout
    lines, stderr lines)."""

    def __init__(self, config: CassandraConfig, capsys) -> None:
        self.args = ["--cassandra", f"{config.contact_points[0]}:{config.port}"]
        self.args += ["--keyspace", config.keyspace]
        self.capsys = capsys

    async def __call__(self, *argv: str) -> tuple[int, list[str], list[str]]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(cli_main.main, [*argv, *self.args])
        got = self.capsys.readouterr()
        return code, got.out.strip().splitlines(), got.err.strip().splitlines()


async def _runs(config: CassandraConfig) -> list[tuple[str, int, int]]:
    async with CassandraSession(config) as session:
        rows = await session.select_all(
            f"SELECT pid, seq, version FROM {config.keyspace}.effect_runs", profile=RAW_PROFILE
        )
    return [(r[0], r[1], r[2]) for r in rows]


async def test_version_cli_and_side_effects_across_switch_and_rollback(
    config, ray_local, capsys, monkeypatch
) -> None:
    # the CLI's config is the test's but for the tag query's visibility delay (default 5 s:
    # only slower), so that both versions follow the tag at the same pace
    make_config = cli_projection.cassandra_config
    monkeypatch.setattr(
        cli_projection,
        "cassandra_config",
        lambda args, **kw: make_config(args, eventual_consistency_delay=DELAY, **kw),
    )
    run = _Cli(config, capsys)
    journal = await CassandraJournal.connect(config, create_schema=True)
    kits = {
        s: AggregateTestKit(
            SHOW,
            entity_id=s,
            journal=journal,
            snapshot_store=InMemorySnapshotStore(),
            roundtrip=False,
        )
        for s in ("v0", "v1", "v2", "v3")
    }
    owner: dict[tuple[str, int], int] = {}  # event -> the version that must run its effect
    n = 0

    async def batch(count: int, version: int) -> float:
        nonlocal n
        for _ in range(count):
            show = f"v{n % 4}"
            await kits[show].arun(ReserveSeat(seat_label(n), f"c{n % 3}"))
            pid = SHOW.persistence_id(show)
            owner[(pid, await journal.highest_sequence_nr(pid))] = version
            n += 1
        return time.time()

    control = Projections(config)
    v1, v2 = BUILD(1), BUILD(2)
    try:
        await batch(12, 1)  # history: version 1, live, runs them
        await control.start(v1)
        await until_caught_up(control, v1.name, time.time(), DELAY)
        await control.pause(v1.name)
        written = await batch(8, 2)  # A: version 1 is paused and never applies them first
        while time.time() < written + DELAY + 0.5:  # A before the deploy cut
            await asyncio.sleep(0.1)

        code, out, err = await run(
            "projection", "deploy", BASE, "--version", "2", "--spec", SPEC, "--workers", "2"
        )
        assert code == 0 and not err, (out, err)
        assert len(out) == 2, out
        assert out[0].startswith(f"{BASE}.v2: backfilled 20 events up to "), out
        assert "with 4 Ray Data task(s)" in out[0], out
        assert out[1] == (
            f"{BASE}: version 2 follows the tag; readers stay on the live version until "
            f"`raysource projection switch {BASE} 2`"
        )
        await until_caught_up(control, v2.name, time.time(), DELAY)
        assert Counter(v for _, _, v in await _runs(config)) == {1: 12}  # 2 holds back

        code, out, err = await run("projection", "switch", BASE, "2", "--spec", SPEC)
        assert code == 0 and not err, (out, err)
        assert len(out) == 1 and out[0].startswith(
            f"{BASE}: version 2 is live; 8 held side effect(s) run (was 1; verified 20 events"
        ), out
        assert [s["state"] for s in await control.status(v1.name)] == ["paused"]  # as it was
        await control.resume(v1.name)
        await batch(5, 2)  # B: version 2 live
        await until_caught_up(control, v1.name, time.time(), DELAY)
        await until_caught_up(control, v2.name, time.time(), DELAY)

        await control.pause(v2.name)
        await batch(6, 1)  # C: only version 1 (standing by) applies them before the rollback
        await until_caught_up(control, v1.name, time.time(), DELAY)
        code, out, err = await run("projection", "rollback", BASE, "--spec", SPEC)
        assert code == 0 and not err, (out, err)
        assert out == [f"{BASE}: rolled back to version 1 (was 2); 6 held side effect(s) run"]

        code, out, err = await run("projection", "switch", BASE, "2", "--spec", SPEC, "--wait", "0")
        assert code == 2 and not out, (out, err)
        assert len(err) == 1 and err[0].startswith(
            f"raysource: error: projection {BASE!r}: version 2 is behind version 1 "
        ), err
        assert "not switched" in err[0] and "Traceback" not in err[0]
        code, out, err = await run("projection", "versions", BASE)
        assert code == 0 and out[0] == f"{BASE}: live version 1 (previous: 2)", (out, err)
        assert sorted(out[1:]) == ["  version 1: live", "  version 2: standby"], out

        await control.resume(v2.name)
        await batch(5, 1)  # D: version 1 live; version 2 applies C and D, holds them
        await until_caught_up(control, v1.name, time.time(), DELAY)
        await until_caught_up(control, v2.name, time.time(), DELAY)
        code, out, err = await run("projection", "switch", BASE, "2", "--spec", SPEC)
        assert code == 0 and not err, (out, err)
        assert len(out) == 1 and out[0].startswith(f"{BASE}: version 2 is live (was 1;"), out
        await batch(4, 2)  # E: version 2 live
        await until_caught_up(control, v1.name, time.time(), DELAY)
        await until_caught_up(control, v2.name, time.time(), DELAY)

        runs = await _runs(config)
        events = {(e.persistence_id, e.sequence_nr) for e in await tag_events(journal, v2)}
        assert len(events) == n == 40 and set(owner) == events
        twice = [k for k, c in Counter((p, s) for p, s, _ in runs).items() if c != 1]
        assert not twice, twice  # never twice
        ran_by = {(p, s): v for p, s, v in runs}
        wrong = sorted((k, owner[k], ran_by.get(k)) for k in events if ran_by.get(k) != owner[k])
        assert not wrong, wrong  # never lost, run by the version that handled the event
        code, out, err = await run("projection", "drop", BASE, "--version", "1", "--spec", SPEC)
        assert code == 0 and not err, (out, err)
        assert out == [f"{BASE}: version 1 dropped (workers stopped, tables dropped)"]
    finally:
        for name in (v1.name, v2.name):
            if control.handles(name):
                await control.stop(name)
        await journal.close()
