"""The CLI's parser and argument types: a usage error is one line and exit 2, every number
and contact point is checked before anything connects; :func:`cassandra_config` is the
Cassandra config of an operator command (``raysource.devnode.select.operator_config``)."""

from __future__ import annotations

import argparse
from typing import Any

from raysource.journal.errors import ConfigError

__all__ = [
    "Parser",
    "cassandra_config",
    "contact",
    "count",
    "nonneg",
    "number",
    "port",
    "positive",
]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(kind: type, low: float, *, strict: bool = True, high: float | None = None):
    """An argparse type: ``kind`` > ``low`` (``strict``) or >= ``low``, and <= ``high``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a{'n integer' if kind is int else ' number'}: {text!r}"
            ) from None
        if (
            value != value
            or (value <= low if strict else value < low)
            or (high is not None and value > high)
        ):
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(
                f"must be {bound}"
                + (f" and <= {high}" if high is not None else "")
                + f", got {text}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


port = number(int, 0, high=65535)
positive = number(float, 0.0, high=1e9)
count = number(int, 0)
nonneg = number(int, 0, strict=False)


def contact(text: str) -> str:
    """``--cassandra host[,host...][:port]``: checked before anything connects."""
    from raysource.journal.cassandra.config import CassandraConfig

    try:
        CassandraConfig.from_contact(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cassandra_config(args: argparse.Namespace, **settings: Any):
    """The Cassandra config of a command: ``--cassandra`` (else ``$RAYSOURCE_CASSANDRA``, else
    the running local node), ``--keyspace``, credentials and TLS from the environment."""
    from raysource.devnode.select import operator_config

    return operator_config(args.cassandra, keyspace=args.keyspace, **settings)
