"""Key wrapping, the KMS seam (issue 27): subjects' keys stored wrapped under a key-encryption
key (``LocalKeyWrapper``, the default implementation of ``KeyWrapper``). On real Cassandra the
key table holds no usable key, a reader with the same wrapper (a new process: the config
pickled) reads the plaintext, one with another key-encryption key gets a typed error and no
value, and forgetting still shreds."""

from __future__ import annotations

import os
import pickle
import uuid

import pytest

from raysource.examples.seats import SHOW, SeatReserved
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.keystore import key_ring
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.errors import ConfigError
from raysource.journal.keyring import FORGOTTEN, InMemoryKeyStore, KeyRing
from raysource.journal.kms import KeyUnwrapError, KeyWrapper, LocalKeyWrapper, WrappedKeyStore
from raysource.journal.serialization import Serialization

KEK = os.urandom(32)


def test_local_wrapper_and_wrapped_store():
    w = LocalKeyWrapper(KEK, key_id="k1")
    assert isinstance(w, KeyWrapper)
    key = os.urandom(32)
    wrapped = w.wrap("alice", key)
    assert wrapped != key and key not in wrapped and w.unwrap("alice", wrapped) == key
    assert KEK.hex() not in repr(w) and str(KEK) not in repr(w)
    for bad in (
        lambda: LocalKeyWrapper(os.urandom(32), key_id="k1").unwrap("alice", wrapped),
        lambda: LocalKeyWrapper(KEK, key_id="k2").unwrap("alice", wrapped),
        lambda: w.unwrap("bob", wrapped),  # bound to its subject
        lambda: w.unwrap("alice", key),  # a plain key is not a wrapped one
    ):
        with pytest.raises(KeyUnwrapError):
            bad()
    with pytest.raises(ConfigError):
        LocalKeyWrapper(b"short")
    with pytest.raises(ConfigError):
        WrappedKeyStore(InMemoryKeyStore(), object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CassandraConfig(key_wrapper=object())

    inner = InMemoryKeyStore()
    ring = KeyRing(WrappedKeyStore(inner, w))
    sealed = ring.seal("alice", "Alice Zyxwv")
    stored = inner.load("alice")
    assert stored is not None and stored.key is not None and stored.key.startswith(b"rsk1:")
    assert KeyRing(WrappedKeyStore(inner, w)).open(sealed, {}) == "Alice Zyxwv"
    with pytest.raises(KeyUnwrapError):
        KeyRing(WrappedKeyStore(inner, LocalKeyWrapper(os.urandom(32), "k1"))).open(sealed, {})
    with pytest.raises(Exception):  # noqa: B017 - the bare store's key is a wrapped blob
        KeyRing(inner).open(sealed, {})
    ring.forget("alice")
    assert KeyRing(WrappedKeyStore(inner, w)).open(sealed, {}) == FORGOTTEN


def reader(config: CassandraConfig, session=None) -> Serialization:
    ser = Serialization(keys=key_ring(config, session))
    SHOW.register_types(ser)
    return ser


@pytest.mark.cassandra
async def test_wrapped_keys_on_cassandra(cassandra_contact, cassandra_keyspace):
    config = CassandraConfig.from_contact(
        cassandra_contact, keyspace=cassandra_keyspace, key_wrapper=LocalKeyWrapper(KEK)
    )
    assert "key_wrapper" not in repr(config)
    session = await CassandraSession.open(config, create_schema=True)
    try:
        alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
        event = SeatReserved("A1", alice, "Alice Zyxwv", bob, "Bob Qwerty")
        writer = reader(config, session)
        sid, manifest, payload = writer.encode(event, persistence_id="show|x", sequence_nr=1)
        assert b"Alice Zyxwv" not in payload
        rows = await session.select_all(
            f"SELECT subject, key FROM {config.keyspace}.subject_keys", profile=RAW_PROFILE
        )
        keys = {r[0]: bytes(r[1]) for r in rows if r[0] in (alice, bob)}
        assert len(keys) == 2 and all(k.startswith(b"rsk1:") for k in keys.values())
        # a new process: the config pickled (its wrapper with it), its own connection
        fresh = reader(pickle.loads(pickle.dumps(config)))
        assert fresh.decode(sid, manifest, payload) == event
        other = CassandraConfig.from_contact(
            cassandra_contact,
            keyspace=cassandra_keyspace,
            key_wrapper=LocalKeyWrapper(os.urandom(32)),
        )
        with pytest.raises(KeyUnwrapError):
            reader(other, session).decode(sid, manifest, payload)
        key_ring(config, session).forget(alice)
        after = reader(config, session).decode(sid, manifest, payload)
        assert (after.name, after.guest_name) == (FORGOTTEN, "Bob Qwerty")
    finally:
        await session.close()
