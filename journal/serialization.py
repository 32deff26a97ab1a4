"""Serialization of events, snapshots and replies to ``(serializer_id, manifest, payload)``.

Size: ~560 lines, most of it this docstring (the round-trip rule); the personal-data code lives
in :mod:`raysource.journal.personal` and is called from ``encode``/``decode``/``scrub``.

Two serializers exist:

* **Typed JSON** (``JSON_SERIALIZER_ID = 1``, the default): registered dataclasses (frozen
  dataclasses are expected; nested dataclasses, lists, tuples, sets, dicts, ``datetime``,
  ``Decimal``, ``UUID`` and enums are supported) are encoded with ``msgspec.json``. The manifest
  is ``"<name>#<version>"``, e.g. ``"seats.SeatReserved#2"``. Decoding parses the bytes into a
  plain document (dict), applies the registered upcasters from the stored version up to the
  registered version (``upcasters[n]`` maps a version-``n`` document to version ``n + 1``), then
  decodes the document into the registered class (strict typing, unknown fields ignored so
  removed fields need no upcaster). A payload of the registered version is decoded straight
  from the bytes into the class.
  Plain JSON values (``str``, ``int``, ``float``, ``bool``, ``None`` and lists/dicts of them)
  need no registration; they use the built-in manifest ``"json#1"`` (aggregates may reply with
  primitives).

  msgspec is used instead of hand-written ``asdict``/``json`` code because it encodes and, more
  importantly, *validates while decoding* nested typed dataclasses (wrong types become errors
  instead of silently wrong objects), and it is a maintained, fast C extension.

* **cloudpickle** (``PICKLE_SERIALIZER_ID = 2``), explicit opt-in only: either
  ``Serialization(allow_pickle=True)`` (every object the JSON serializer cannot handle is
  pickled, and pickle payloads may be decoded) or ``register(cls, pickle=True)`` (this class is
  always pickled). **Unpickling runs arbitrary code: never enable it for a store that untrusted
  parties can write to.** Pickles are also brittle across code versions (no upcasters).

**The round-trip rule** (what is written can always be read back): ``encode`` of a JSON value
decodes its own payload again, with the same typed decoder ``decode`` uses, and compares the
result with the original; a value that would not come back equal is refused with
``UnserializableError`` (a ``NotAppliedError``: the command that produced it, or the snapshot,
is not written, the aggregate stays as it was). So field types are checked as strictly on
encode as on decode: an ``int`` where the dataclass says ``str``, a ``bool`` for an ``int``, a
``None`` for a non-optional field are refused before anything is stored. "Equal" is
structural and type-strict (not the classes' ``__eq__``):

* every dataclass, enum, container and scalar comes back as the same class with equal values
  (a ``StrEnum`` in a ``str`` field, a ``set`` in a ``frozenset`` field, a tuple in a ``list``
  or ``Any`` field, a dataclass subclass in a base-class field are refused, since they would
  come back as another type); dicts keep their key order;
* the one widening accepted is the numeric tower the decoder accepts too: an ``int`` in a
  ``float`` field comes back as the equal ``float`` (``1`` -> ``1.0``; an int that no float
  equals is refused);
* **floats**: NaN and the infinities are **refused** (JSON has no form for them; msgspec would
  write ``null``). ``-0.0`` and every finite float round-trip exactly (shortest repr);
* ``Decimal`` is stored as a string: ``Decimal("Infinity")`` and precision (``"1.10"``)
  round-trip; a Decimal NaN is refused (it is not equal to itself);
* aware ``datetime``/``time`` values keep their UTC offset (a named zone such as
  ``ZoneInfo("Europe/Paris")`` comes back as the fixed offset it had; compare instants),
  naive ones stay naive.

Pickled payloads (the opt-in) are not checked: equality of arbitrary objects is theirs to define.

**Types defined anywhere.** Classes declared in ``__main__``, a notebook or a test module are
shipped by value by Ray (cloudpickle copies the class's ``__dict__``). msgspec caches what it
learns about a class *on the class* (``__msgspec_cache__``, an unpicklable object) the first
time it decodes into it, which would make such classes unpicklable for the rest of the process.
So decoding never asks msgspec to look a class up: each registered class gets one typed
``msgspec.json.Decoder`` per process (built on first use), and right after building it the
cache attribute is removed again from every class the decoder reaches (nested dataclasses,
enums, TypedDicts, NamedTuples); the decoder keeps its own compiled copy. Encoding leaves no
cache. Both hold for any number of encodes and decodes (``tests/project/test_types_anywhere.py``).
String annotations (``from __future__ import annotations``) would not resolve in a process
that received the class by value (its module is not there), so ``register`` (and
``AggregateType``, for the classes it declares) replaces them by the objects they name while the
defining module is at hand.

**Personal fields** (``Annotated[str, Personal("subject_field")]``) are sealed after the
round-trip check and opened before the typed decode, with the key ring ``keys`` (default: a
process-local in-memory ring); see :mod:`raysource.journal.personal`.

Every failure is a typed :class:`~raysource.journal.errors.SerializationError` naming the
persistence id and sequence number when given. Encoding has no side effect, so a failed encode
writes nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import cloudpickle
import msgspec

from raysource.journal.errors import (
    ConfigError,
    CorruptPayloadError,
    MissingUpcasterError,
    PayloadTooLargeError,
    SerializationError,
    UnknownManifestError,
    UnserializableError,
)
from raysource.journal.keyring import KeyRing
from raysource.journal.personal import (
    PersonalPlan,
    open_payload,
    plan_of,
    scrub_payload,
    seal_payload,
)
from raysource.journal.roundtrip import difference, forget_msgspec_caches, pin_annotations

__all__ = [
    "JSON_SERIALIZER_ID",
    "PICKLE_SERIALIZER_ID",
    "PRIMITIVE_MANIFEST",
    "Serialization",
    "Upcaster",
]

JSON_SERIALIZER_ID = 1
PICKLE_SERIALIZER_ID = 2
PRIMITIVE_MANIFEST = "json#1"
_PICKLE_MANIFEST_PREFIX = "pickle:"

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
T = TypeVar("T", bound=type)

_PRIMITIVES = (str, int, float, bool, type(None))


@dataclasses.dataclass(frozen=True, slots=True)
class _Registration:
    cls: type
    name: str
    version: int
    upcasters: Mapping[int, Upcaster]
    pickle: bool
    personal: PersonalPlan | None = None  # where its personal fields are (journal.personal)

    @property
    def manifest(self) -> str:
        if self.pickle:
            return f"{_PICKLE_MANIFEST_PREFIX}{self.name}"
        return f"{self.name}#{self.version}"


class _LocalRing(KeyRing):
    """The default key ring: in memory, this process only."""


def _is_plain_json(obj: object, depth: int = 0) -> bool:
    """True for values that survive a JSON round trip unchanged (no tuples, no str subclasses
    like enums, only str dict keys)."""
    if depth > 100:
        return False
    t = type(obj)
    if t in _PRIMITIVES:
        return True
    if t is list:
        return all(_is_plain_json(v, depth + 1) for v in obj)  # type: ignore[attr-defined]
    if t is dict:
        return all(
            type(k) is str and _is_plain_json(v, depth + 1)
            for k, v in obj.items()  # type: ignore[attr-defined]
        )
    return False


class Serialization:
    """A registry of event/snapshot/reply types and the codec for them.

    Thread-safe for encode/decode once registration is done (registration is expected at
    start-up).
    """

    def __init__(
        self,
        *,
        max_payload_bytes: int = 1_000_000,
        allow_pickle: bool = False,
        keys: KeyRing | None = None,
    ) -> None:
        if max_payload_bytes < 1:
            raise ConfigError(f"max_payload_bytes must be >= 1, got {max_payload_bytes}")
        self.max_payload_bytes = max_payload_bytes
        self.allow_pickle = allow_pickle
        # the keys of personal fields (raysource.journal.personal); None: a process-local
        # in-memory ring, made on first use (the in-memory journal's)
        self._keys = keys
        self._by_cls: dict[type, _Registration] = {}
        self._by_name: dict[str, _Registration] = {}
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()
        # one typed decoder per registered class, built on first use in each process (the
        # module docstring says why decoding never lets msgspec look a class up itself)
        self._typed: dict[type, msgspec.json.Decoder[Any]] = {}
        self._typed_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_encoder", "_decoder", "_typed", "_typed_lock"):
            del state[key]
        if isinstance(state.get("_keys"), _LocalRing):  # process-local: not shipped
            state["_keys"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()
        self._typed = {}
        self._typed_lock = threading.Lock()

    # ------------------------------------------------------------------ registration

    @overload
    def register(
        self,
        cls: T,
        name: str | None = None,
        *,
        version: int = 1,
        upcasters: Mapping[int, Upcaster] | None = None,
        pickle: bool = False,
    ) -> T: ...

    @overload
    def register(
        self,
        cls: None = None,
        name: str | None = None,
        *,
        version: int = 1,
        upcasters: Mapping[int, Upcaster] | None = None,
        pickle: bool = False,
    ) -> Callable[[T], T]: ...

    def register(
        self,
        cls: Any = None,
        name: str | None = None,
        *,
        version: int = 1,
        upcasters: Mapping[int, Upcaster] | None = None,
        pickle: bool = False,
    ) -> Any:
        """Register ``cls`` under the stable manifest name ``name`` at schema ``version``.

        ``name`` defaults to ``module.QualName`` (rename-unsafe: pass an explicit name for
        anything that is stored long-term). ``upcasters[n]`` turns a stored version-``n``
        document into a version-``n + 1`` document; every step from the oldest stored version
        to ``version`` needs one. ``pickle=True`` stores this class with cloudpickle instead
        (unsafe for untrusted stores). Returns ``cls``; without ``cls`` returns a decorator.
        Registering the same class twice with the same settings is a no-op; a name clash with
        another class is a ``ConfigError``.
        """
        if cls is None:
            return lambda c: self.register(
                c, name, version=version, upcasters=upcasters, pickle=pickle
            )
        if not isinstance(cls, type):
            raise ConfigError(f"register() needs a class, got {cls!r}")
        if not pickle and not dataclasses.is_dataclass(cls):
            raise ConfigError(
                f"{cls.__qualname__} is not a dataclass; only dataclasses use the JSON "
                "serializer (register(..., pickle=True) to opt in to cloudpickle)"
            )
        if not isinstance(version, int) or version < 1:
            raise ConfigError(f"version must be an int >= 1, got {version!r}")
        name = name or f"{cls.__module__}.{cls.__qualname__}"
        if not name or "#" in name or name.startswith(_PICKLE_MANIFEST_PREFIX) or name == "json":
            raise ConfigError(f"invalid manifest name {name!r}")
        ups = dict(upcasters or {})
        for n in ups:
            if not isinstance(n, int) or not 1 <= n < version:
                raise ConfigError(
                    f"upcaster key {n!r} for {name}: must be a version in 1..{version - 1}"
                )
        personal = None
        if not pickle:
            pin_annotations(cls)  # while its module is at hand (see "types defined anywhere")
            personal = plan_of(cls)
        reg = _Registration(cls, name, version, ups, pickle, personal)
        old = self._by_name.get(name)
        if old is not None and old.cls is not cls:
            raise ConfigError(f"manifest name {name!r} is already registered for {old.cls!r}")
        old_cls = self._by_cls.get(cls)
        if old_cls is not None and old_cls.name != name:
            raise ConfigError(f"{cls!r} is already registered as {old_cls.name!r}")
        self._by_cls[cls] = reg
        self._by_name[name] = reg
        return cls

    def is_registered(self, cls: type) -> bool:
        return cls in self._by_cls

    def manifest_of(self, cls: type) -> str:
        """The manifest ``cls`` is written under (``UnserializableError`` if unregistered)."""
        reg = self._by_cls.get(cls)
        if reg is None:
            raise UnserializableError(f"{cls.__qualname__} is not registered")
        return reg.manifest

    # ------------------------------------------------------------------ encode

    def encode(
        self,
        obj: object,
        *,
        persistence_id: str | None = None,
        sequence_nr: int | None = None,
    ) -> tuple[int, str, bytes]:
        """Encode ``obj`` to ``(serializer_id, manifest, payload)``.

        A JSON value is only returned if its payload decodes back to an equal value with the
        registered types (the round-trip rule of the module docstring). Raises
        ``UnserializableError`` (unregistered type, unsupported or wrongly typed field value,
        a value that would not read back equal: NaN, infinities, ...) or
        ``PayloadTooLargeError`` (payload over ``max_payload_bytes``).
        """
        where: dict[str, Any] = {"persistence_id": persistence_id, "sequence_nr": sequence_nr}
        reg = self._by_cls.get(type(obj))
        if reg is not None and reg.pickle:
            ser_id, manifest, payload = self._pickle(obj, reg.manifest, where)
        elif reg is not None:
            ser_id, manifest = JSON_SERIALIZER_ID, reg.manifest
            try:
                payload = self._encoder.encode(obj)
            except (TypeError, ValueError, OverflowError) as exc:
                raise UnserializableError(
                    f"cannot encode {type(obj).__qualname__} as JSON: {exc}", **where
                ) from exc
            self._check_roundtrip(obj, payload, self._typed_decoder(reg, where), where)
            if reg.personal is not None:
                payload = seal_payload(payload, reg.personal, self.keys, where)
        elif _is_plain_json(obj):
            ser_id, manifest = JSON_SERIALIZER_ID, PRIMITIVE_MANIFEST
            try:
                payload = self._encoder.encode(obj)
            except (TypeError, ValueError, OverflowError) as exc:  # e.g. int beyond 64 bits
                raise UnserializableError(f"cannot encode value as JSON: {exc}", **where) from exc
            self._check_roundtrip(obj, payload, self._decoder, where)
        elif self.allow_pickle:
            ser_id, manifest, payload = self._pickle(
                obj,
                f"{_PICKLE_MANIFEST_PREFIX}{type(obj).__module__}.{type(obj).__qualname__}",
                where,
            )
        else:
            kind = "dataclass" if dataclasses.is_dataclass(obj) else "type"
            raise UnserializableError(
                f"unregistered {kind} {type(obj).__module__}.{type(obj).__qualname__}: register "
                "it with Serialization.register (or opt in to pickle)",
                **where,
            )
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"encoded {type(obj).__qualname__} is {len(payload)} bytes, over the limit of "
                f"{self.max_payload_bytes}",
                **where,
            )
        return ser_id, manifest, payload

    def _check_roundtrip(
        self, obj: object, payload: bytes, decoder: msgspec.json.Decoder[Any], where: dict[str, Any]
    ) -> None:
        """The round-trip rule: ``payload`` must decode to a value equal to ``obj``."""
        what = type(obj).__qualname__
        try:
            back = decoder.decode(payload)
        except Exception as exc:  # ValidationError, or a __post_init__ that refuses the copy
            hint = (
                " (NaN and infinities are written as null: refused)"
                if "got `null`" in str(exc)
                else ""
            )
            raise UnserializableError(
                f"{what} would be stored but could not be read back ({exc}); field values "
                f"must have the declared types{hint}",
                **where,
            ) from None
        try:
            problem = difference(obj, back)
        except RecursionError:
            problem = "nested too deeply to compare"
        if problem is not None:
            raise UnserializableError(
                f"{what} would not read back as an equal value: {problem}", **where
            )

    def _typed_decoder(
        self,
        reg: _Registration,
        where: dict[str, Any],
        error: type[SerializationError] = UnserializableError,
    ) -> msgspec.json.Decoder[Any]:
        """This process's typed decoder for ``reg.cls`` (built once; see the module docstring
        for why msgspec's class cache is removed again right away)."""
        decoder = self._typed.get(reg.cls)
        if decoder is not None:
            return decoder
        with self._typed_lock:
            decoder = self._typed.get(reg.cls)
            if decoder is None:
                try:
                    decoder = msgspec.json.Decoder(reg.cls)
                except Exception as exc:  # unsupported or unresolvable annotations
                    raise error(
                        f"{reg.cls.__qualname__} ({reg.name}) has field types the JSON "
                        f"serializer cannot decode: {exc}",
                        **where,
                    ) from exc
                finally:
                    forget_msgspec_caches(reg.cls)
                self._typed[reg.cls] = decoder
        return decoder

    def _pickle(self, obj: object, manifest: str, where: dict[str, Any]) -> tuple[int, str, bytes]:
        try:
            return PICKLE_SERIALIZER_ID, manifest, cloudpickle.dumps(obj)
        except Exception as exc:  # cloudpickle raises anything from __reduce__
            raise UnserializableError(
                f"cannot pickle {type(obj).__qualname__}: {exc}", **where
            ) from exc

    # ------------------------------------------------------------------ decode

    def decode(
        self,
        serializer_id: int,
        manifest: str,
        payload: bytes,
        *,
        persistence_id: str | None = None,
        sequence_nr: int | None = None,
    ) -> object:
        """Decode a stored ``(serializer_id, manifest, payload)`` back into an object.

        Raises ``UnknownManifestError`` (no such registered name / serializer, or a stored
        version newer than the registered one), ``MissingUpcasterError``, or
        ``CorruptPayloadError`` (bad bytes, document that does not fit the class).
        """
        where: dict[str, Any] = {"persistence_id": persistence_id, "sequence_nr": sequence_nr}
        if serializer_id == PICKLE_SERIALIZER_ID:
            return self._unpickle(manifest, payload, where)
        if serializer_id != JSON_SERIALIZER_ID:
            raise UnknownManifestError(
                f"unknown serializer id {serializer_id} (manifest {manifest!r})", **where
            )
        if manifest == PRIMITIVE_MANIFEST:
            try:
                return self._decoder.decode(payload)
            except msgspec.DecodeError as exc:
                raise CorruptPayloadError(f"corrupt JSON payload: {exc}", **where) from exc
        name, sep, ver = manifest.rpartition("#")
        if not sep or not ver.isdigit():
            raise UnknownManifestError(f"malformed manifest {manifest!r}", **where)
        stored_version = int(ver)
        reg = self._by_name.get(name)
        if reg is None or reg.pickle:
            raise UnknownManifestError(f"no type registered for manifest {manifest!r}", **where)
        if stored_version > reg.version:
            raise UnknownManifestError(
                f"manifest {manifest!r} is newer than the registered version {reg.version} "
                f"of {name} (written by newer code?)",
                **where,
            )
        decoder = self._typed_decoder(reg, where, CorruptPayloadError)
        if stored_version < reg.version:
            payload = self._upcast(reg, manifest, payload, stored_version, where)
        if reg.personal is not None:
            payload = open_payload(payload, reg.personal, self.keys, manifest, where)
        try:
            return decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise CorruptPayloadError(
                f"stored {manifest!r} does not fit {reg.cls.__qualname__}: {exc}", **where
            ) from exc
        except msgspec.DecodeError as exc:
            raise CorruptPayloadError(
                f"corrupt JSON payload for {manifest!r}: {exc}", **where
            ) from exc
        except (TypeError, ValueError) as exc:  # e.g. raised by the class's __post_init__
            raise CorruptPayloadError(
                f"stored {manifest!r} does not fit {reg.cls.__qualname__}: {exc!r}", **where
            ) from exc

    def _upcast(
        self,
        reg: _Registration,
        manifest: str,
        payload: bytes,
        stored_version: int,
        where: dict[str, Any],
    ) -> bytes:
        """The payload of an older version, upcast document by document to the registered
        version and encoded again for the typed decoder."""
        try:
            doc = self._decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise CorruptPayloadError(
                f"corrupt JSON payload for {manifest!r}: {exc}", **where
            ) from exc
        name = reg.name
        for v in range(stored_version, reg.version):
            up = reg.upcasters.get(v)
            if up is None:
                raise MissingUpcasterError(
                    f"no upcaster from version {v} to {v + 1} of {name} (stored {manifest!r})",
                    **where,
                )
            try:
                doc = up(doc)
            except Exception as exc:
                raise CorruptPayloadError(
                    f"upcaster {name} v{v}->v{v + 1} failed on stored {manifest!r}: {exc!r}",
                    **where,
                ) from exc
        try:
            return self._encoder.encode(doc)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CorruptPayloadError(
                f"upcasters of {name} produced a document that is not JSON from stored "
                f"{manifest!r}: {exc}",
                **where,
            ) from exc

    # ------------------------------------------------------------------ personal data

    @property
    def keys(self) -> KeyRing:
        """The key ring of personal fields (see :mod:`raysource.journal.personal`)."""
        if self._keys is None:
            self._keys = _LocalRing()
        return self._keys

    @property
    def has_personal(self) -> bool:
        """Whether any registered class has personal fields."""
        return any(r.personal is not None for r in self._by_cls.values())

    def personal_plan(self, manifest: str) -> PersonalPlan | None:
        """Where the type stored under ``manifest`` keeps personal fields (None: nowhere)."""
        reg = self._by_name.get(manifest.rpartition("#")[0])
        return reg.personal if reg is not None else None

    def scrub(self, obj: object) -> object:
        """``obj`` with the personal fields of forgotten subjects replaced by the placeholder
        (for values that were decoded before the forget, e.g. a live aggregate's state)."""
        reg = self._by_cls.get(type(obj))
        if reg is None or reg.personal is None:
            return obj
        payload = scrub_payload(self._encoder.encode(obj), reg.personal, self.keys)
        return self._typed_decoder(reg, {}).decode(payload)

    def _unpickle(self, manifest: str, payload: bytes, where: dict[str, Any]) -> object:
        name = (
            manifest[len(_PICKLE_MANIFEST_PREFIX) :]
            if manifest.startswith(_PICKLE_MANIFEST_PREFIX)
            else None
        )
        reg = self._by_name.get(name) if name else None
        if not (self.allow_pickle or (reg is not None and reg.pickle)):
            raise UnknownManifestError(
                f"payload {manifest!r} was written with cloudpickle, which is not enabled "
                "(Serialization(allow_pickle=True) or register(cls, pickle=True))",
                **where,
            )
        try:
            return cloudpickle.loads(payload)
        except Exception as exc:
            raise CorruptPayloadError(f"cannot unpickle {manifest!r}: {exc!r}", **where) from exc

    # ------------------------------------------------------------------ helpers

    def roundtrip(self, obj: object) -> object:
        """Encode then decode ``obj``: the decoded copy, or the ``UnserializableError`` of the
        round-trip rule (the test kit checks commands, replies, events and states with it)."""
        return self.decode(*self.encode(obj))
