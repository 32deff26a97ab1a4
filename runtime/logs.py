"""Structured logs: a JSON formatter and the switch the Ray actors use.

The runtime logs with ``logging`` and puts the context into ``extra``: ``persistence_id``,
``sequence_nr``, ``writer_id``, ``type`` (aggregate type), and for projections ``projection``
and ``worker``. Messages stay readable as plain text; :class:`JsonFormatter` emits one JSON
object per line with those fields at the top level (for Loki, Elasticsearch, CloudWatch, ...).

Set ``RAYSOURCE_LOG_JSON=1`` in the environment of the Ray workers (e.g. the cluster's
``runtime_env`` or the node's environment) and every raysource actor calls
:func:`configure_json_logging` when it starts.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "configure_from_env", "configure_json_logging"]

CONTEXT_FIELDS: tuple[str, ...] = (
    "persistence_id",
    "sequence_nr",
    "writer_id",
    "type",
    "projection",
    "worker",
    "reason",
    "entity_id",
    "trace_id",  # a slow traced journal append (raysource.runtime.tracing: no exemplars in Ray)
    "span_id",
)

_ENV = "RAYSOURCE_LOG_JSON"
_MARK = "_raysource_json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (ISO 8601 UTC), ``level``, ``logger``, ``message``,
    every :data:`CONTEXT_FIELDS` entry present in ``extra``, and ``exc`` (the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_json_logging(level: int | str = logging.INFO, logger: str = "") -> None:
    """Make ``logger`` (default: root) log JSON lines to stderr at ``level``. Idempotent:
    replaces only a handler it installed earlier."""
    target = logging.getLogger(logger)
    for h in list(target.handlers):
        if getattr(h, _MARK, False):
            target.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    setattr(handler, _MARK, True)
    target.addHandler(handler)
    target.setLevel(level)


def configure_from_env() -> bool:
    """Call :func:`configure_json_logging` if ``RAYSOURCE_LOG_JSON`` is set to a true value
    (level from ``RAYSOURCE_LOG_LEVEL``, default INFO); True if it did."""
    if os.environ.get(_ENV, "").strip().lower() not in ("1", "true", "yes", "on"):
        return False
    configure_json_logging(os.environ.get("RAYSOURCE_LOG_LEVEL", "INFO").upper())
    return True
