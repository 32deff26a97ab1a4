"""Default deadlines (issue 14): an ``EntityRef`` call without a timeout no longer waits
forever. Against a real Ray actor that takes every call and never answers (a host stuck
behind a frozen store), ``ask``, ``state`` and ``ask_many`` end with ``AskTimeoutError``
(outcome unknown) after the ref's ``default_timeout``; ``default_timeout=None`` restores an
unbounded wait for callers that ask for it explicitly."""

from __future__ import annotations

import asyncio
import time

import pytest

from raysource.examples.seats import SHOW, ReserveSeat
from raysource.journal.errors import ConfigError
from raysource.runtime.actors.refs import DEFAULT_TIMEOUT_S, EntityRef
from raysource.runtime.errors import AskTimeoutError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def silent(ray_local):
    @ray_local.remote(num_cpus=0)
    class Silent:
        """Takes calls with the host actor's method names and never answers them."""

        def __init__(self) -> None:
            self.calls = 0

        async def ask_ordered(self, entity_id, caller_id, seq, command):  # noqa: ANN001
            self.calls += 1
            await asyncio.Event().wait()

        async def state(self, entity_id):  # noqa: ANN001
            self.calls += 1
            await asyncio.Event().wait()

        async def ask_many(self, entity_id, caller_id, first_seq, commands):  # noqa: ANN001
            self.calls += 1
            await asyncio.Event().wait()

        def count(self) -> int:
            return self.calls

    actor = Silent.options(max_concurrency=100).remote()
    yield actor
    ray_local.kill(actor)


class _Fixed:
    def __init__(self, handle) -> None:  # noqa: ANN001
        self.handle = handle

    def resolve(self, aggregate_type, entity_id):  # noqa: ANN001
        return self.handle

    def invalidate(self, aggregate_type, entity_id, handle=None) -> None:  # noqa: ANN001
        pass


def test_calls_without_timeout_end_at_the_default_deadline(silent, ray_local) -> None:
    ref = EntityRef(SHOW, "stuck", _Fixed(silent), default_timeout=1.5)
    for call in (lambda: ref.ask(ReserveSeat("A1", "ann")), ref.state):
        t0 = time.monotonic()
        with pytest.raises(AskTimeoutError, match="within 1.5s"):
            call()
        assert time.monotonic() - t0 >= 1.4
    outcomes = ref.ask_many([ReserveSeat("A2", "ann"), ReserveSeat("A3", "ann")])
    assert [type(o) for o in outcomes] == [AskTimeoutError, AskTimeoutError]
    assert ray_local.get(silent.count.remote()) == 3  # every call did reach the actor


async def test_async_forms_and_explicit_timeouts(silent) -> None:
    ref = EntityRef(SHOW, "stuck2", _Fixed(silent), default_timeout=None)
    with pytest.raises(AskTimeoutError, match="within 0.5s"):
        await ref.ask_async(ReserveSeat("A1", "ann"), timeout=0.5)  # explicit wins
    unbounded = asyncio.ensure_future(ref.state_async())  # None: waits as long as it takes
    await asyncio.sleep(2.0)
    assert not unbounded.done()
    unbounded.cancel()


def test_default_is_bounded_and_checked() -> None:
    assert DEFAULT_TIMEOUT_S == 120.0  # the documented deadline (refs.py, README)
    assert EntityRef(SHOW, "x", _Fixed(None)).default_timeout == 120.0  # a ref's default
    for bad in (0, -1.0):
        with pytest.raises(ConfigError):
            EntityRef(SHOW, "x", _Fixed(None), default_timeout=bad)


@pytest.fixture
def unsure(ray_local):
    @ray_local.remote(num_cpus=0)
    class Unsure:
        """Answers the first ``n`` keyed sends "outcome unknown", then acknowledges."""

        def __init__(self, n: int) -> None:
            self.n = n
            self.calls = 0

        async def ask_ordered(self, entity_id, caller_id, seq, command):  # noqa: ANN001
            from raysource.runtime.errors import WriteOutcomeUnknownError

            self.calls += 1
            if self.calls <= self.n:
                raise WriteOutcomeUnknownError(f"unconfirmed #{self.calls}")
            return ("stored", command.key)

        def count(self) -> int:
            return self.calls

    actor = Unsure.remote(6)
    yield actor
    ray_local.kill(actor)


async def test_keyed_resends_without_a_deadline_go_on_past_the_retry_window(
    unsure, ray_local, monkeypatch
) -> None:
    """``default_timeout=None`` means no deadline for keyed re-sends either (issue 23 item 9):
    an unknown outcome is re-sent under its key until it settles, not only for the 30 s retry
    window. Six unknown answers take 0.02+0.04+...+0.5 s of back-off, far past the window
    shrunk to 0.2 s here; the call still ends with the acknowledgement."""
    from raysource.runtime.actors import refs

    monkeypatch.setattr(refs, "_RETRY_DEADLINE_S", 0.2)
    ref = EntityRef(SHOW, "unsure", _Fixed(unsure), default_timeout=None)
    answer = await ref.ask_async(ReserveSeat("A1", "ann"), idempotency_key="k-unsure")
    assert answer == ("stored", "k-unsure")
    assert await unsure.count.remote() == 7  # six unknown answers re-sent, the seventh settled
