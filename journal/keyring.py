"""The keys of personal data: one per data subject, in a :class:`KeyStore`, cached by a
:class:`KeyRing` that seals and opens values (see :mod:`raysource.journal.personal` for the
scheme and the rules). Keys never appear in a repr, a log line or an error message."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from raysource.journal.errors import ConfigError, CorruptPayloadError, UnserializableError

__all__ = [
    "FORGOTTEN",
    "SCHEME",
    "InMemoryKeyStore",
    "KeyRing",
    "KeyState",
    "KeyStore",
    "MissingKeyError",
    "SubjectForgottenError",
    "is_sealed",
]

FORGOTTEN = "<forgotten>"
"""What a personal field reads as after its subject was forgotten."""

SCHEME = "rsp1"
"""The current sealing scheme: AES-256-GCM, 12-byte random nonce, AAD ``b"rsp1:" + subject``."""
_PREFIX = SCHEME + ":"
_NONCE = 12


class SubjectForgottenError(UnserializableError):
    """New personal data for a subject that was forgotten: refused (nothing is written)."""


class MissingKeyError(CorruptPayloadError):
    """A sealed value whose subject has no key and was never forgotten (another key store?)."""


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class KeyState:
    """A subject's entry in a key store: its key, or that it was forgotten (key None)."""

    key: bytes | None
    forgotten: bool = False

    def __repr__(self) -> str:  # never show a key
        return f"KeyState(key={'<hidden>' if self.key else None}, forgotten={self.forgotten})"


class KeyStore(Protocol):
    """Where subjects' keys live. Synchronous: called on key-ring cache misses only."""

    def load(self, subject: str) -> KeyState | None:
        """The subject's state, or None if it never had a key and was never forgotten."""

    def create(self, subject: str, key: bytes) -> KeyState:
        """Store ``key`` unless the subject has one or was forgotten; the state that won."""

    def destroy(self, subject: str, at_ms: int) -> None:
        """Destroy the subject's key for good (later ``create`` calls find it forgotten)."""


class InMemoryKeyStore:
    """The key store of the in-memory journal (this process only; a pickled copy carries its
    keys, as the in-memory journal's copy carries its events)."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyState] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"_keys": dict(self._keys)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._keys = state["_keys"]
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"InMemoryKeyStore({len(self._keys)} subjects)"

    def load(self, subject: str) -> KeyState | None:
        return self._keys.get(subject)

    def create(self, subject: str, key: bytes) -> KeyState:
        with self._lock:
            return self._keys.setdefault(subject, KeyState(key))

    def destroy(self, subject: str, at_ms: int) -> None:
        with self._lock:
            self._keys[subject] = KeyState(None, forgotten=True)


class KeyRing:
    """The keys of a process: a :class:`KeyStore` behind a bounded cache (see the module
    docstring). Thread-safe. Pickles as its store and settings (the cache stays behind)."""

    def __init__(
        self, store: KeyStore | None = None, *, max_keys: int = 10_000, max_age: float = 30.0
    ) -> None:
        if max_keys < 1 or max_age < 0:
            raise ConfigError("KeyRing: max_keys must be >= 1 and max_age >= 0")
        self.store: KeyStore = store if store is not None else InMemoryKeyStore()
        self.max_keys = max_keys
        self.max_age = max_age
        self._cache: OrderedDict[str, tuple[float, KeyState]] = OrderedDict()
        self._lock = threading.Lock()
        self._aead: dict[bytes, Any] = {}
        self.misses = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "max_keys": self.max_keys, "max_age": self.max_age}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"], max_keys=state["max_keys"], max_age=state["max_age"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"KeyRing({self.store!r}, cached={len(self._cache)}, max_keys={self.max_keys})"

    def _cached(self, subject: str) -> KeyState | None:
        with self._lock:
            hit = self._cache.get(subject)
            if hit is None:
                return None
            if hit[1].key is not None and time.monotonic() - hit[0] > self.max_age:
                del self._cache[subject]  # a forgotten state never expires: it is final
                return None
            self._cache.move_to_end(subject)
            return hit[1]

    def _remember(self, subject: str, state: KeyState) -> KeyState:
        with self._lock:
            self._cache[subject] = (time.monotonic(), state)
            self._cache.move_to_end(subject)
            while len(self._cache) > self.max_keys:
                self._cache.popitem(last=False)
        return state

    def state(self, subject: str) -> KeyState | None:
        hit = self._cached(subject)
        if hit is not None:
            return hit
        self.misses += 1
        found = self.store.load(subject)
        return None if found is None else self._remember(subject, found)

    def key_for_write(self, subject: str) -> bytes:
        state = self.state(subject)
        if state is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            state = self._remember(subject, self.store.create(subject, AESGCM.generate_key(256)))
        if state.key is None:
            raise SubjectForgottenError(
                f"subject {subject!r} was forgotten: new personal data for it is refused"
            )
        return state.key

    def is_forgotten(self, subject: str) -> bool:
        state = self.state(subject)
        return state is not None and state.forgotten

    def forget(self, subject: str) -> None:
        """Destroy ``subject``'s key in the store (idempotent); at once in this process."""
        self.store.destroy(subject, int(time.time() * 1000))
        self._remember(subject, KeyState(None, forgotten=True))

    def drop(self, subject: str) -> None:
        """Drop ``subject``'s cached state: the next use reads the store (a forget made by
        another process takes effect here at once, not after ``max_age``)."""
        with self._lock:
            self._cache.pop(subject, None)

    def cached(self) -> int:
        return len(self._cache)

    # ------------------------------------------------------------------ sealing

    def _cipher(self, key: bytes) -> Any:
        aead = self._aead.get(key)
        if aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            aead = AESGCM(key)
            if len(self._aead) >= self.max_keys:
                self._aead.clear()
            self._aead[key] = aead
        return aead

    def seal(self, subject: str, value: str) -> str:
        nonce = os.urandom(_NONCE)
        aad = (_PREFIX + subject).encode()
        sealed = self._cipher(self.key_for_write(subject)).encrypt(nonce, value.encode(), aad)
        return f"{_PREFIX}{_b64(subject.encode())}:{_b64(nonce + sealed)}"

    def open(self, value: str, where: dict[str, Any]) -> str:
        scheme, _, rest = value.partition(":")
        if scheme != SCHEME:
            raise CorruptPayloadError(f"unknown personal-data scheme {scheme!r}", **where)
        subject_part, sep, body = rest.partition(":")
        try:
            subject = _unb64(subject_part).decode()
            blob = _unb64(body)
        except (ValueError, UnicodeDecodeError):
            raise CorruptPayloadError("malformed sealed personal value", **where) from None
        if not sep or len(blob) <= _NONCE:
            raise CorruptPayloadError("malformed sealed personal value", **where)
        state = self.state(subject)
        if state is None:
            raise MissingKeyError(
                f"no key for subject {subject!r} in {self.store!r} and it was never forgotten "
                "(is this the key store of the journal?)",
                **where,
            )
        if state.key is None:
            return FORGOTTEN
        from cryptography.exceptions import InvalidTag

        try:
            plain: bytes = self._cipher(state.key).decrypt(
                blob[:_NONCE], blob[_NONCE:], (_PREFIX + subject).encode()
            )
        except InvalidTag:
            raise CorruptPayloadError(
                f"sealed personal value of subject {subject!r} fails authentication", **where
            ) from None
        return plain.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_sealed(value: object) -> bool:
    """True for a sealed value of any scheme version (``rsp<N>:...``)."""
    if not isinstance(value, str) or not value.startswith("rsp"):
        return False
    version, sep, _ = value[3:].partition(":")
    return bool(sep) and version.isdigit()
