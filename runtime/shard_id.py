"""Entity id -> shard number: a stable hash, identical in every process, run and host.

Python's built-in ``hash`` of a ``str`` is salted per process (PYTHONHASHSEED), so it would
route one entity to different shards from different drivers; it is never used here.
"""

from __future__ import annotations

import hashlib

from raysource.journal.errors import ConfigError

__all__ = ["shard_of"]


def shard_of(entity_id: str, number_of_shards: int) -> int:
    """The shard (``0 <= shard < number_of_shards``) that owns ``entity_id``.

    Defined as the 8-byte BLAKE2b digest (``digest_size=8``) of the UTF-8 id, read as a
    big-endian unsigned integer, modulo ``number_of_shards``. This definition is part of the
    stored data's contract: changing it (or a type's shard count) moves entities between shards.
    Raises ``ConfigError`` for a non-string id, an id UTF-8 cannot encode (a lone surrogate
    such as ``"\\ud800"``), or a shard count below 1.
    """
    if not isinstance(entity_id, str):
        raise ConfigError(f"entity id must be a str, got {type(entity_id).__name__}")
    if (
        isinstance(number_of_shards, bool)
        or not isinstance(number_of_shards, int)
        or number_of_shards < 1
    ):
        raise ConfigError(f"number of shards must be an int >= 1, got {number_of_shards!r}")
    try:
        data = entity_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"entity id {entity_id!r} is not valid Unicode text (a lone surrogate)"
        ) from None
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") % number_of_shards
