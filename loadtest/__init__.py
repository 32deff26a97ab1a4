"""The load test and the demos built on it.

* :mod:`raysource.loadtest.driver`: :func:`run_loadtest` (system, client actors, consistency
  check, report) and its parameters;
* :mod:`raysource.loadtest.workloads`, :mod:`raysource.loadtest.client`,
  :mod:`raysource.loadtest.report`, :mod:`raysource.loadtest.consistency`: what the clients
  send, the client actors, the JSON/PNG report, the check against the journal;
* :mod:`raysource.loadtest.standalone`: the load test with a Cassandra picked for it
  (``raysource loadtest``);
* :mod:`raysource.loadtest.demo` (+ ``demo_holds``): ``raysource demo`` / ``make demo``;
* :mod:`raysource.loadtest.serve`: ``raysource serve``, the example seat service on Ray Serve.

The plotting and progress libraries are the ``app`` extra.
"""
