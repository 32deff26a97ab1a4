"""CassandraConfig's checks (issue 14), Ray-free and without a node: a config that could lose
acknowledged events or spread LOCAL_* levels over data centres is refused with ConfigError;
secrets stay out of reprs; TLS settings and configs pickle (they travel to Ray hosts) while an
``ssl.SSLContext`` is refused with a clear error; the environment is read as documented."""

from __future__ import annotations

import itertools
import pickle
import ssl

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raysource.journal.cassandra.config import (
    CONSISTENCY_NAMES,
    CassandraConfig,
    TlsSettings,
)
from raysource.journal.errors import ConfigError

LEVELS = [c for c in CONSISTENCY_NAMES if c not in ("SERIAL", "LOCAL_SERIAL")]


def _acks(level: str, replicas: set[tuple[int, int]], rfs: list[int], local: int) -> bool:
    """Oracle, written apart from the config's: does this set of (dc, i) replicas satisfy the
    level?"""
    per_dc = [sum(1 for d, _ in replicas if d == dc) for dc in range(len(rfs))]
    quorum = sum(rfs) // 2 + 1
    return {
        "ANY": True,
        "ONE": len(replicas) >= 1,
        "TWO": len(replicas) >= 2,
        "THREE": len(replicas) >= 3,
        "QUORUM": len(replicas) >= quorum,
        "ALL": len(replicas) == sum(rfs),
        "LOCAL_ONE": per_dc[local] >= 1,
        "LOCAL_QUORUM": per_dc[local] >= rfs[local] // 2 + 1,
        "EACH_QUORUM": all(c >= rf // 2 + 1 for c, rf in zip(per_dc, rfs)),
    }[level]


def _oracle_safe(write: str, read: str, rfs: list[int], local: int) -> bool:
    """Every replica set a write can be acknowledged by meets every set a read can be answered
    by, and both levels can be met at all: brute force over all subsets of replicas."""
    every = [(dc, i) for dc, rf in enumerate(rfs) for i in range(rf)]
    subsets = [set(c) for n in range(len(every) + 1) for c in itertools.combinations(every, n)]
    writes = [s for s in subsets if _acks(write, s, rfs, local)]
    reads = [s for s in subsets if _acks(read, s, rfs, local)]
    if not writes or not reads:
        return False
    return all(w & r for w in writes for r in reads)


def _config(write: str, read: str, rfs: list[int], local: int) -> CassandraConfig:
    if len(rfs) == 1 and local == 0:
        return CassandraConfig(
            replication_factor=rfs[0], write_consistency=write, read_consistency=read
        )
    dcs = {f"dc{i}": rf for i, rf in enumerate(rfs)}
    return CassandraConfig(
        replication_strategy="NetworkTopologyStrategy",
        datacenters=dcs,
        local_dc=f"dc{local}",
        write_consistency=write,
        read_consistency=read,
    )


@settings(max_examples=300, deadline=None)
@given(rfs=st.lists(st.integers(1, 3), min_size=1, max_size=3), data=st.data())
def test_config_accepts_exactly_the_overlapping_levels(rfs, data) -> None:
    """Attack: any accepted write/read pair has, by brute force, no acknowledged-write set that
    a read can miss; any refused pair has one (or cannot be met)."""
    local = data.draw(st.integers(0, len(rfs) - 1))
    write = data.draw(st.sampled_from(LEVELS))
    read = data.draw(st.sampled_from([lv for lv in LEVELS if lv != "ANY"]))
    safe = _oracle_safe(write, read, rfs, local)
    if safe:
        _config(write, read, rfs, local)
    else:
        with pytest.raises(ConfigError, match="overlap|never be met"):
            _config(write, read, rfs, local)


@pytest.mark.parametrize(
    "write,read,rf,ok",
    [
        ("LOCAL_QUORUM", "LOCAL_QUORUM", 3, True),  # the default
        ("QUORUM", "QUORUM", 3, True),
        ("ALL", "ONE", 3, True),
        ("ONE", "ONE", 3, False),  # issue 14: was accepted
        ("ONE", "ONE", 1, True),
        ("LOCAL_QUORUM", "LOCAL_ONE", 3, False),
        ("ANY", "ALL", 3, False),  # a hint is no replica
        ("THREE", "ONE", 2, False),  # can never be met
    ],
)
def test_consistency_table(write, read, rf, ok) -> None:
    if ok:
        CassandraConfig(replication_factor=rf, write_consistency=write, read_consistency=read)
    else:
        with pytest.raises(ConfigError):
            CassandraConfig(replication_factor=rf, write_consistency=write, read_consistency=read)
    with pytest.raises(ConfigError, match="not a read level"):
        CassandraConfig(read_consistency="ANY")


def test_local_dc_with_network_topology() -> None:
    two = {"dc1": 3, "dc2": 3}
    with pytest.raises(ConfigError, match="needs local_dc"):
        CassandraConfig(replication_strategy="NetworkTopologyStrategy", datacenters=two)
    with pytest.raises(ConfigError, match="not one of the keyspace's data centres"):
        CassandraConfig(
            replication_strategy="NetworkTopologyStrategy", datacenters=two, local_dc="dc3"
        )
    ok = CassandraConfig(
        replication_strategy="NetworkTopologyStrategy", datacenters=two, local_dc="dc2"
    )
    assert ok.local_dc == "dc2"
    one = CassandraConfig(replication_strategy="NetworkTopologyStrategy", datacenters={"east": 3})
    assert one.local_dc == "east"  # one data centre: it is the local one


def test_defaults_are_documented_values() -> None:
    c = CassandraConfig()
    assert (c.write_consistency, c.read_consistency, c.serial_consistency) == (
        "LOCAL_QUORUM",
        "LOCAL_QUORUM",
        "LOCAL_SERIAL",
    )
    assert c.reconnect_max_delay == 10.0 and c.request_timeout == 10.0
    assert c.connect_timeout == 10.0 and c.partition_size == 5000
    doc = CassandraConfig.__doc__ or ""
    for text in ("reconnect_max_delay", "10 s", "LOCAL_QUORUM", "local_dc", "5000"):
        assert text in doc, text
    for bad in (
        {"reconnect_max_delay": 0},
        {"password_file": "/x"},
        {"username": "u", "password": "p", "password_file": "/x"},
    ):
        with pytest.raises(ConfigError):
            CassandraConfig(**bad)


def test_secrets_stay_out_of_reprs_and_errors(tmp_path) -> None:
    from raysource.runtime.stores import StoreSpec

    secret = "s3cr3t-Pa55word"
    cfg = CassandraConfig(username="app", password=secret)
    assert secret not in repr(cfg) and secret not in str(cfg)
    assert secret not in repr(StoreSpec.for_cassandra(cfg))
    assert cfg.credentials() == ("app", secret)
    pw = tmp_path / "pw"
    pw.write_text(secret + "\n")
    by_file = CassandraConfig(username="app", password_file=str(pw))
    assert by_file.credentials() == ("app", secret) and secret not in repr(by_file)
    # the config a host actor receives (pickled, also inside its StoreSpec) holds the file's
    # path, never the password: each process reads the file itself (issue 23, item 9)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        for obj in (by_file, StoreSpec.for_cassandra(by_file)):
            data = dumps(obj)
            assert secret.encode() not in data and str(pw).encode() in data
        assert pickle.loads(dumps(by_file)).credentials() == ("app", secret)
    missing = CassandraConfig(username="app", password_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="cannot read the Cassandra password file") as info:
        missing.credentials()
    assert secret not in str(info.value)


def test_tls_settings_pickle_and_ssl_context_is_refused_clearly(tmp_path) -> None:
    tls = TlsSettings(ca_file="/etc/ssl/ca.pem", check_hostname=True)
    cfg = CassandraConfig(tls=tls, username="u", password_file="/run/secrets/pw")
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(cfg))
        assert back == cfg and back.tls == tls
    old = CassandraConfig(ssl_context=ssl.create_default_context())
    assert old.client_ssl_context() is old.ssl_context  # one process: still works
    for dumps in (pickle.dumps, cloudpickle.dumps):
        with pytest.raises(ConfigError, match="tls=TlsSettings"):
            dumps(old)
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        TlsSettings(cert_file="c.pem")
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        TlsSettings(ca_file=str(tmp_path / "missing.pem")).ssl_context()
    with pytest.raises(ConfigError, match="tls or ssl_context"):
        CassandraConfig(tls=tls, ssl_context=ssl.create_default_context())


def test_from_env() -> None:
    env = {
        "RAYSOURCE_CASSANDRA": "c0.cassandra,c1.cassandra,c2.cassandra:9142",
        "RAYSOURCE_CASSANDRA_USERNAME": "app",
        "RAYSOURCE_CASSANDRA_PASSWORD_FILE": "/run/secrets/cassandra-password",
        "RAYSOURCE_CASSANDRA_TLS_CA": "/run/secrets/ca.pem",
        "RAYSOURCE_CASSANDRA_TLS_CHECK_HOSTNAME": "0",
    }
    cfg = CassandraConfig.from_env(environ=env, keyspace="shop")
    assert cfg.contact_points == ("c0.cassandra", "c1.cassandra", "c2.cassandra")
    assert cfg.port == 9142 and cfg.keyspace == "shop"
    assert cfg.username == "app" and cfg.password is None
    assert cfg.password_file == "/run/secrets/cassandra-password"
    assert cfg.tls == TlsSettings(ca_file="/run/secrets/ca.pem", check_hostname=False)
    assert CassandraConfig.from_env("h:1", environ=env).contact_points == ("h",)  # arg wins
    plain = CassandraConfig.from_env(environ={})
    assert plain.contact_points == ("127.0.0.1",) and plain.tls is None and plain.username is None
    with pytest.raises(ConfigError, match="neither"):
        CassandraConfig.from_env(environ={"RAYSOURCE_CASSANDRA_USERNAME": "app"})
