"""Key wrapping: the seam where a KMS plugs in (issue 27). Each data subject's key
(:mod:`raysource.journal.keyring`) can be stored **wrapped** (envelope encryption): encrypted
under a key-encryption key the key store never sees. A database dump then holds no usable key,
and forgetting still destroys the subject's (wrapped) key in the store.

* :class:`KeyWrapper` is the interface: ``wrap(subject, key)`` before a key is stored,
  ``unwrap(subject, wrapped)`` after it is loaded. Synchronous (a key ring calls its store on
  cache misses only). An adapter for a cloud KMS or Vault's transit engine maps them to its
  encrypt/decrypt calls with the subject as the encryption context; raysource ships none and
  depends on no SDK.
* :class:`LocalKeyWrapper` is the default implementation: AES-256-GCM under a local
  key-encryption key (e.g. read from a secret mount), the subject bound in as associated data.
* :class:`WrappedKeyStore` applies a wrapper to any :class:`~raysource.journal.keyring.KeyStore`.
  On Cassandra set ``CassandraConfig(key_wrapper=...)``: every key ring of that config (writers,
  recoveries, projections, the CLI) wraps and unwraps with it.

A key that does not unwrap (another key-encryption key, a tampered row) is a
:class:`KeyUnwrapError` (a ``CorruptPayloadError``): nothing is returned in its place. Turning
wrapping on for a keyspace that already holds plain keys is not supported: those keys fail to
unwrap (start wrapping on a new keyspace, or re-wrap the rows offline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from raysource.journal.errors import ConfigError, CorruptPayloadError
from raysource.journal.keyring import KeyState, KeyStore

__all__ = ["KeyUnwrapError", "KeyWrapper", "LocalKeyWrapper", "WrappedKeyStore"]

_WRAP = b"rsk1:"  # the local wrapping format, version 1
_NONCE = 12


class KeyUnwrapError(CorruptPayloadError):
    """A stored subject key that does not unwrap under the configured key wrapper."""


@runtime_checkable
class KeyWrapper(Protocol):
    """Wraps subjects' keys for storage and unwraps them (see the module docstring)."""

    def wrap(self, subject: str, key: bytes) -> bytes:
        """``key`` encrypted for storage, bound to ``subject``."""

    def unwrap(self, subject: str, wrapped: bytes) -> bytes:
        """The key ``wrap(subject, key)`` was given (``KeyUnwrapError`` if it cannot be)."""


@dataclass(frozen=True)
class LocalKeyWrapper:
    """AES-256-GCM key wrapping under a local 32-byte key-encryption key ``kek``; ``key_id``
    names it (bound into every wrapped key: a key wrapped under another id does not unwrap).
    The key never shows in a repr."""

    kek: bytes = field(repr=False)
    key_id: str = "local"

    def __post_init__(self) -> None:
        if not isinstance(self.kek, bytes) or len(self.kek) != 32:
            raise ConfigError("LocalKeyWrapper: kek must be 32 bytes (AES-256)")
        if not self.key_id or ":" in self.key_id:
            raise ConfigError(f"LocalKeyWrapper: invalid key_id {self.key_id!r}")

    def _aad(self, subject: str) -> bytes:
        return _WRAP + f"{self.key_id}:{subject}".encode()

    def wrap(self, subject: str, key: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(_NONCE)
        return _WRAP + nonce + AESGCM(self.kek).encrypt(nonce, key, self._aad(subject))

    def unwrap(self, subject: str, wrapped: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        body = wrapped[len(_WRAP) :]
        if not wrapped.startswith(_WRAP) or len(body) <= _NONCE:
            raise KeyUnwrapError(f"the key of subject {subject!r} is not a wrapped key")
        try:
            key: bytes = AESGCM(self.kek).decrypt(body[:_NONCE], body[_NONCE:], self._aad(subject))
        except InvalidTag:
            raise KeyUnwrapError(
                f"the key of subject {subject!r} does not unwrap under key {self.key_id!r}"
            ) from None
        return key


class WrappedKeyStore:
    """A :class:`~raysource.journal.keyring.KeyStore` whose keys ``store`` holds wrapped by
    ``wrapper`` (forgetting destroys the wrapped key; a forgotten state passes through)."""

    def __init__(self, store: KeyStore, wrapper: KeyWrapper) -> None:
        if not isinstance(wrapper, KeyWrapper):
            raise ConfigError(f"{wrapper!r} is not a KeyWrapper (wrap and unwrap)")
        self.store = store
        self.wrapper = wrapper

    def __repr__(self) -> str:
        return f"WrappedKeyStore({self.store!r})"

    def _open(self, subject: str, state: KeyState | None) -> KeyState | None:
        if state is None or state.key is None:
            return state
        return KeyState(self.wrapper.unwrap(subject, state.key))

    def load(self, subject: str) -> KeyState | None:
        return self._open(subject, self.store.load(subject))

    def create(self, subject: str, key: bytes) -> KeyState:
        won = self.store.create(subject, self.wrapper.wrap(subject, key))
        opened = self._open(subject, won)
        assert opened is not None
        return opened

    def destroy(self, subject: str, at_ms: int) -> None:
        self.store.destroy(subject, at_ms)
