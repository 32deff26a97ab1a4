"""The dev Cassandra node: a real, local Apache Cassandra from Maven Central's jars (no Docker),
and where a tool gets Cassandra from.

* :mod:`raysource.devnode.local_node`: :class:`LocalCassandra` (start, stop, status; auth/TLS);
* :mod:`raysource.devnode.select`: :func:`select_cassandra` (tests, demo, load test) and
  :func:`operator_config` (the operator commands: a running deployment's config, never
  starting anything);
* :mod:`raysource.devnode.net`: contact points, free ports, "does CQL answer";
* :mod:`raysource.devnode.node_config`, :mod:`raysource.devnode.node_security`: the node's
  yaml/JVM flags and its password/TLS files.
"""
