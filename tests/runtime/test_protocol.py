"""The host-actor protocol (``raysource.runtime.actors.protocol``): named calls that stay
compact on the wire, and how one answer settles a caller's future."""

from __future__ import annotations

import asyncio
import pickle

from unit_guard import no_ray  # noqa: F401

from raysource.examples.ledger import Append
from raysource.runtime.actors.protocol import Call, Sent, answer, fail
from raysource.runtime.errors import CommandRejected
from raysource.runtime.idempotency import Keyed
from raysource.runtime.tracing import TraceCarrier


def test_a_call_pickles_as_itself_and_compactly() -> None:
    key = "k" * 32
    calls = [Call(f"e{i}", "c" * 32, i, [Keyed(Append(f"op{i}", 1), key)]) for i in range(8)]
    back = pickle.loads(pickle.dumps(calls, protocol=5))
    assert back == calls and all(type(c) is Call for c in back)
    assert back[0].commands[0].key == key and back[0].first_seq == 0
    # the class name travels once per message: at most ~80 bytes over bare tuples
    plain = len(pickle.dumps([tuple(c) for c in calls], protocol=5))
    assert len(pickle.dumps(calls, protocol=5)) <= plain + 80
    # the Keyed envelope keeps its trace context when it has one (and costs nothing without)
    traced = Keyed(Append("t", 1), key, TraceCarrier("00-" + "1" * 32 + "-" + "2" * 16 + "-01"))
    assert pickle.loads(pickle.dumps(traced)).trace == traced.trace
    assert len(pickle.dumps(Keyed(Append("t", 1), key))) < len(pickle.dumps(traced))


async def test_answers_settle_each_caller_as_its_call_shape_says() -> None:
    loop = asyncio.get_running_loop()
    one, batch, gone, whole = (loop.create_future() for _ in range(4))
    rejected = CommandRejected("no")
    answer(one, True, [rejected], whole=False)  # one command within ask_batches: raised
    answer(batch, False, ["r", rejected], whole=False)  # a batch: the outcome list
    gone.cancel()
    answer(gone, True, ["late"], whole=False)  # the caller gave up: dropped, no error
    answer(whole, True, "reply", whole=True)  # its own ask_ordered call: the reply
    assert one.exception() is rejected
    assert batch.result() == ["r", rejected] and whole.result() == "reply"
    err = RuntimeError("call failed")
    fail(one, err)  # already settled: unchanged
    assert one.exception() is rejected
    assert Sent(whole, 3).epoch == 3
