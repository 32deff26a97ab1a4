"""A projection spec named from the command line: ``module:ATTR`` (``--spec``)."""

from __future__ import annotations

import importlib

from raysource.journal.errors import ConfigError
from raysource.readside.projections import ProjectionSpec

__all__ = ["load_spec"]


def load_spec(ref: str) -> ProjectionSpec:
    """The :class:`ProjectionSpec` that ``module:ATTR`` names (the attribute, or what it returns
    when it is a function). ``ConfigError`` when it cannot be imported or is not a spec."""
    module, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"--spec {ref!r}: {exc}") from exc
    spec = obj if isinstance(obj, ProjectionSpec) else obj()
    if not isinstance(spec, ProjectionSpec):
        raise ConfigError(f"--spec {ref!r} is not a ProjectionSpec")
    return spec
