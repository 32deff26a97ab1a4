"""The event log as a Ray Dataset, and bulk rebuilds of projection versions with it.

    import raysource.data as rd
    ds = rd.read_events(config, "show", [SHOW])        # a Ray Dataset up to a consistent cut
    ds.to_pandas()                                     # analytics
    rd.write_view(ds, rd.ProjectionView(spec, config)) # into an effectively-once view

Modules: :mod:`~raysource.data.source` (``read_events``, the ``Datasource``),
:mod:`~raysource.data.sink` (``write_view``, the ``Datasink``), :mod:`~raysource.data.backfill`
(``deploy`` a projection version: bulk backfill, then follow the live stream).

A room of its own above the read side (it builds on its decoding, views and offsets): Ray
Data (pyarrow, pandas) is the optional ``data`` extra, which the read side's core and live path
do not need. Importing this package is cheap; Ray Data loads on first use.
"""

from __future__ import annotations

from raysource.data.sink import ProjectionView, write_view
from raysource.data.source import EventLogSource, read_events, stable_cut

__all__ = ["EventLogSource", "ProjectionView", "read_events", "stable_cut", "write_view"]
