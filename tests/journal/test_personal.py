"""Personal fields and the key ring, in memory (no Cassandra, no Ray): declaration errors,
sealing per subject, the placeholder after forget, tampering, the cache's bounds, keys that never
reach a log or a repr, and the example aggregate recovering after a forget."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from typing import Annotated

import pytest

from raysource.cli.main import main
from raysource.examples.seats import SHOW, GetShow, ReserveSeat
from raysource.journal.errors import (
    ConfigError,
    CorruptPayloadError,
    NotAppliedError,
    UnserializableError,
)
from raysource.journal.keyring import (
    SCHEME,
    InMemoryKeyStore,
    KeyRing,
    KeyState,
    MissingKeyError,
    SubjectForgottenError,
)
from raysource.journal.personal import FORGOTTEN, Personal, is_forgotten
from raysource.journal.serialization import Serialization
from raysource.testing.testkit import AggregateTestKit


@dataclass(frozen=True)
class Contact:
    who: str
    email: Annotated[str | None, Personal("who")] = None


@dataclass(frozen=True)
class Introduced:
    a: str
    a_name: Annotated[str, Personal("a")]
    b: int
    b_name: str = field(default="", metadata={"personal": "b"})  # the metadata flag
    contacts: list[Contact] = field(default_factory=list)
    by_seat: dict[str, Contact] = field(default_factory=dict)


def ser_with(ring: KeyRing | None = None) -> Serialization:
    s = Serialization(keys=ring)
    s.register(Introduced, "t.Introduced")
    return s


EVENT = Introduced(
    "ann",
    "Ann Secret",
    7,
    "Bo Secret",
    [Contact("cy", "cy@secret.example")],
    {"A1": Contact("ann", "ann@secret.example")},
)


def test_each_subject_is_sealed_under_its_own_key_and_forgetting_one_keeps_the_others():
    ring = KeyRing(InMemoryKeyStore())
    ser = ser_with(ring)
    sid, manifest, payload = ser.encode(EVENT)
    assert b"Secret" not in payload and b"secret.example" not in payload
    assert payload.count(f'"{SCHEME}:'.encode()) == 4  # versioned scheme, every value
    assert ser.decode(sid, manifest, payload) == EVENT
    ring.forget("ann")
    back = ser.decode(sid, manifest, payload)
    assert back.a_name == FORGOTTEN and is_forgotten(back.by_seat["A1"].email)
    assert back.b_name == "Bo Secret" and back.contacts[0].email == "cy@secret.example"
    assert ser.scrub(EVENT) == back  # a value decoded before the forget, scrubbed
    with pytest.raises(SubjectForgottenError) as err:  # new data for ann: refused
        ser.encode(EVENT)
    assert isinstance(err.value, NotAppliedError)
    # the placeholder, None and "" are written as they are: a recovered state saves again
    assert ser.decode(*ser.encode(back)) == back
    assert ser.decode(*ser.encode(Introduced("ann", "", 7))).a_name == ""


def test_declaration_errors_are_config_errors_at_registration():
    @dataclass(frozen=True)
    class NotText:
        who: str
        age: Annotated[int, Personal("who")]

    @dataclass(frozen=True)
    class NoSubject:
        name: Annotated[str, Personal("nobody")]

    @dataclass(frozen=True)
    class InUnion:
        x: Contact | Introduced

    for cls in (NotText, NoSubject, InUnion):
        with pytest.raises(ConfigError):
            Serialization().register(cls, f"t.{cls.__name__}")


def test_a_sealed_value_is_bound_to_its_subject_and_tampering_is_a_typed_error():
    ser = ser_with(KeyRing(InMemoryKeyStore()))
    sid, manifest, payload = ser.encode(Introduced("ann", "Ann", 7, "Bo"))
    doc = payload.decode()
    ann_sealed = doc.split('"a_name":"')[1].split('"')[0]
    bo_sealed = doc.split('"b_name":"')[1].split('"')[0]
    # ann's value copied under bo's subject part does not open with bo's key
    scheme, bo_subject, _ = bo_sealed.split(":")
    forged = doc.replace(bo_sealed, f"{scheme}:{bo_subject}:{ann_sealed.split(':')[2]}")
    with pytest.raises(CorruptPayloadError, match="fails authentication"):
        ser.decode(sid, manifest, forged.encode())
    with pytest.raises(CorruptPayloadError, match="unknown personal-data scheme"):
        ser.decode(sid, manifest, doc.replace(f"{SCHEME}:", "rsp9:", 1).encode())
    with pytest.raises(MissingKeyError):  # another key store: never the placeholder
        ser_with(KeyRing(InMemoryKeyStore())).decode(sid, manifest, payload)
    with pytest.raises(UnserializableError, match="subject id"):
        ser.encode(Introduced("", "Nameless", 7))


def test_the_cache_is_bounded_and_a_forget_elsewhere_is_seen_after_max_age():
    store = InMemoryKeyStore()
    ring = KeyRing(store, max_keys=2)
    for n in range(5):
        ring.seal(f"s{n}", "x")
    assert ring.cached() == 2
    reader = KeyRing(store, max_age=0.0)  # another process, keys expire at once
    sealed = ring.seal("s0", "value")
    assert reader.open(sealed, {}) == "value"
    KeyRing(store).forget("s0")  # a third process forgets
    assert reader.open(sealed, {}) == FORGOTTEN
    # a forgotten state is final: it is never re-created
    with pytest.raises(SubjectForgottenError):
        reader.seal("s0", "again")


def test_keys_never_reach_a_log_or_a_repr(caplog):
    store = InMemoryKeyStore()
    ring = KeyRing(store)
    ser = ser_with(ring)
    caplog.set_level(logging.DEBUG)
    payload = ser.encode(EVENT)
    ser.decode(*payload)
    ring.forget("ann")
    ser.decode(*payload)
    keys = [s.key for s in store._keys.values() if s.key]
    assert keys
    text = caplog.text + repr(ring) + repr(store) + repr(ser.keys) + repr(KeyState(keys[0]))
    for key in keys:
        assert key.hex() not in text and repr(key) not in text
    # a pickled Serialization carries its store, not its cache; the default ring stays home
    copy = pickle.loads(pickle.dumps(ser))
    assert copy.keys.cached() == 0 and copy.decode(*payload).b_name == "Bo Secret"
    local = Serialization()
    local.register(Introduced, "t.Introduced")
    local.encode(EVENT)
    assert pickle.loads(pickle.dumps(local))._keys is None


def test_the_example_recovers_after_a_forget_with_the_placeholder_in_the_in_memory_journal():
    kit = AggregateTestKit(SHOW, entity_id="m1")
    r = kit.run(ReserveSeat("A1", "alice", name="Alice", guest="bob", guest_name="Bob"))
    assert r.ok, r.error
    assert kit.run(ReserveSeat("A2", "x", guest_name="Nameless guest")).rejected
    kit.serialization.keys.forget("alice")
    again = AggregateTestKit(
        SHOW,
        entity_id="m1",
        journal=kit.journal,
        snapshot_store=kit.snapshot_store,
        serialization=kit.serialization,
    )
    state = again.run(GetShow()).reply
    kit.close()
    again.close()
    who = state.attendees["A1"]
    assert is_forgotten(who.name) and who.guest_name == "Bob"
    assert state.reservations == {"A1": "alice"}


def test_the_forget_cli_refuses_bad_input_in_one_line(capsys):
    for argv in (
        ["forget", " ", "--cassandra", "127.0.0.1:9"],
        ["forget", "a", "--verify", "--limit", "0", "--cassandra", "127.0.0.1:9"],
        ["forget", "a", "--value", "x", "--cassandra", "127.0.0.1:9"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("raysource: error:") and err.count("\n") == 1
