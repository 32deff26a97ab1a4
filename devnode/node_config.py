"""What a local Cassandra node is started with: the JVM flags (Cassandra 5.0 on JDK 17, fast
start for a throwaway node), its ``cassandra.yaml`` and logback configuration. Plain data and
pure functions; ``raysource.devnode.local_node`` writes and runs them."""

from __future__ import annotations

from pathlib import Path

__all__ = ["JDK17_EXPORTS", "JDK17_OPENS", "FAST_START", "LOGBACK", "jvm_flags", "cassandra_yaml"]

# Cassandra's conf/jvm17-server.options: the JVM dies at start without these on Java 17.
JDK17_EXPORTS = [
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
]
JDK17_OPENS = [
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.lang.reflect",
    "jdk.compiler/com.sun.tools.javac",
    "java.base/java.lang",
    "java.base/java.util",
    "java.base/java.nio",
]
# Fast start for a throwaway node; skip_sync/unsafesystem drop fsync (dev and tests only).
FAST_START = {
    "cassandra.skip_wait_for_gossip_to_settle": "0",
    "cassandra.ring_delay_ms": "1000",
    "cassandra.superuser_setup_delay_ms": "0",
    "cassandra.shutdown_announce_in_ms": "0",
    "cassandra.skip_sync": "true",
    "cassandra.unsafesystem": "true",
    "cassandra.available_processors": "2",
    # what Cassandra's own unit tests run with (build.xml): a schema change is not flushed to
    # disk at once (it is in the commit log like any write); keyspace and table DDL is cheaper
    "cassandra.test.flush_local_schema_changes": "false",
}

LOGBACK = """<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.datastax" level="WARN"/>
  <root level="WARN"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


def jvm_flags(
    heap: str, yaml_path: Path, logback: Path, data_dir: Path, log_dir: Path, tmp_dir: Path
) -> list[str]:
    """The ``java`` arguments before the class path for one node."""
    flags = [
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-Xss512k",
        "-XX:+UseG1GC",
        "-XX:+CrashOnOutOfMemoryError",
        "-Djava.net.preferIPv4Stack=true",
        "-Djdk.attach.allowAttachSelf=true",
        "-Dio.netty.tryReflectionSetAccessible=true",
        f"-Dcassandra.config={yaml_path.resolve().as_uri()}",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.storagedir={data_dir}",
        f"-Dcassandra.logdir={log_dir}",
        f"-Dlogback.configurationFile={logback}",
        f"-Djna.tmpdir={tmp_dir}",
    ]
    flags += [f"-D{k}={v}" for k, v in FAST_START.items()]
    for mod in JDK17_EXPORTS:
        flags += ["--add-exports", f"{mod}=ALL-UNNAMED"]
    for mod in JDK17_OPENS:
        flags += ["--add-opens", f"{mod}=ALL-UNNAMED"]
    return flags


def cassandra_yaml(
    *, cluster_name: str, initial_token: str, seeds: str, host: str, port: int, storage_port: int
) -> str:
    """``cassandra.yaml`` of a throwaway dev/test node (authentication and TLS lines are added
    by ``raysource.devnode.node_security``)."""
    return f"""# written by raysource (raysource.devnode.local_node) for a throwaway dev/test node
cluster_name: {cluster_name}
num_tokens: 1
initial_token: {initial_token}
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
commitlog_sync: periodic
commitlog_sync_period: 10s
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{seeds}"
listen_address: {host}
rpc_address: {host}
storage_port: {storage_port}
native_transport_port: {port}
start_native_transport: true
auto_snapshot: false
auto_bootstrap: false
# Two cores shared with Ray: be slow to convict a busy peer as down.
phi_convict_threshold: 12
# Paxos v2 halves the round trips of the journal's conditional (fenced) batches.
paxos_variant: v2
# A group-commit flush is one single-partition batch: exempt from these thresholds. A group that
# crosses a partition boundary spans two partitions and is checked: the 50KiB default would
# refuse a big one.
batch_size_warn_threshold: 1MiB
batch_size_fail_threshold: 16MiB
"""
