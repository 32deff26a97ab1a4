"""Operator tools for a running deployment (the library under the operator commands).

* :mod:`raysource.ops.inspect`: an aggregate's decoded event log and its replay with diffs
  (read-only, no Ray);
* :mod:`raysource.ops.state`: a live aggregate's state in a running system (joins it with
  ``System.connect``, starts nothing);
* :mod:`raysource.ops.status`: a running system's hosts and hot aggregates;
* :mod:`raysource.ops.forget`: forget a data subject (crypto-shredding) and verify it;
* :mod:`raysource.ops.doctor`: is this deployment healthy, one verdict per check;
* :mod:`raysource.ops.specs`: load a projection spec named ``module:ATTR``.
"""
