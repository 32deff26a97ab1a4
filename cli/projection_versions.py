"""``raysource projection deploy|switch|rollback|drop|versions``: versioned projections.

    raysource projection deploy NAME --version 2 [--workers 2] [--spec M:BUILDER]
    raysource projection switch NAME 2 [--wait S]
    raysource projection rollback NAME [--wait S]
    raysource projection drop NAME --version 1
    raysource projection versions NAME

``--spec`` names a spec *builder* here (``version -> ProjectionSpec``; default the example's
``raysource.examples.reservations_view:reservations_version``). The work is
:mod:`raysource.data.backfill` (deploy) and :mod:`raysource.readside.versions` (the rest);
a refused switch is one line and exit 2 (a ``SwitchRefusedError``), the alias unchanged.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from raysource.journal.errors import ConfigError

__all__ = ["VERSION_OPS", "add_version_arguments", "projection_versions"]

VERSION_OPS = ("deploy", "switch", "rollback", "drop", "versions")
_EXAMPLE_SPEC = "raysource.examples.reservations_view:RESERVATIONS"
_EXAMPLE_BUILDER = "raysource.examples.reservations_view:reservations_version"


def add_version_arguments(parser: argparse.ArgumentParser) -> None:
    """The version commands' arguments, on the ``projection`` parser."""
    parser.add_argument(
        "target", nargs="?", default=None, help="switch: the version to make live (an int)"
    )
    parser.add_argument(
        "--version", type=int, default=None, help="deploy/drop: the version (an int >= 1)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="deploy: Ray Data tasks at once (default 2)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="switch/rollback: seconds to wait for the version made live to catch up (default 30)",
    )


def _builder(ref: str) -> Any:
    import importlib

    ref = _EXAMPLE_BUILDER if ref == _EXAMPLE_SPEC else ref
    module, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"--spec {ref!r}: {exc}") from exc
    if not callable(obj):
        raise ConfigError(f"--spec {ref!r} is not a spec builder (version -> ProjectionSpec)")
    return obj


def _version(text: Any, what: str) -> int:
    try:
        version = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} needs a version number (an int >= 1), got {text!r}") from None
    if version < 1:
        raise ConfigError(f"{what}: a version is >= 1, got {version}")
    return version


def _quiet_ray_data() -> None:
    """Ray Data reports its executions on stderr (INFO lines, progress bars): the CLI's
    output is its own lines (a failed backfill is the command's one error line)."""
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def projection_versions(args: argparse.Namespace, make_config: Callable[[], Any]) -> int:
    """Run one version command (arguments checked before anything connects; ``make_config``
    gives the Cassandra config after that)."""
    import asyncio

    from raysource.runtime.actors.cluster import connect_ray

    if not args.name:
        raise ConfigError(f"projection {args.action} needs the projection NAME")
    base = args.name
    build = _builder(args.spec)
    version = 0
    if args.action == "switch":
        version = _version(args.target, "projection switch NAME VERSION")
    elif args.action in ("deploy", "drop"):
        version = _version(args.version, f"projection {args.action} NAME --version N")
    if args.workers < 1 or args.wait < 0:
        raise ConfigError("--workers must be >= 1 and --wait >= 0")
    config = make_config()
    connect_ray(args.address or "auto", quiet=True, namespace=args.namespace)
    from raysource.readside.versions import VersionControl

    control = VersionControl(config, detached=True)

    async def run() -> list[str]:
        if args.action == "deploy":
            from raysource.data.backfill import deploy

            _quiet_ray_data()
            done = await deploy(config, base, version, build, workers=args.workers, detached=True)
            return [
                done.line(),
                f"{base}: version {version} follows the tag; readers stay on "
                f"the live version until `raysource projection switch {base} {version}`",
            ]
        if args.action == "switch":
            return [await control.switch(base, version, build, wait=args.wait)]
        if args.action == "rollback":
            return [await control.rollback(base, build, wait=args.wait)]
        if args.action == "drop":
            return [await control.drop(base, version, build)]
        alias, rows = await control.versions(base)
        lines = [f"{base}: live version {alias.live} (previous: {alias.previous or '-'})"]
        lines += [f"  version {r.version}: {r.state}" for r in rows]
        return lines

    for line in asyncio.run(run()):
        print(line)
    return 0
