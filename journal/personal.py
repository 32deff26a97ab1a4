"""Personal data in events and snapshots: crypto-shredding per data subject.

A field is **personal** when its annotation carries a :class:`Personal` marker (or its dataclass
field metadata has ``"personal"``), naming the sibling field that holds the *data subject id*::

    @dataclass(frozen=True)
    class SeatReserved:
        seat: str
        customer: str                                        # the subject id: stored in clear
        name: Annotated[str, Personal("customer")] = ""      # sealed under customer's key
        guest: str = ""
        guest_name: Annotated[str, Personal("guest")] = ""   # a second subject, its own key

Rules (checked when the class is registered, :class:`~raysource.journal.errors.ConfigError`):
a personal field is ``str`` or ``str | None``; its subject field is a field of the same
dataclass. Personal fields may sit at any depth of a registered class (nested dataclasses,
lists, tuples, sets, dict values, optionals).

**Where the subject id comes from.** The value of the named sibling field, as text (an ``int``
id is ``str(id)``). The id itself is stored in clear: it must be a pseudonymous identifier
(a customer number), never the personal data itself.

**Writing.** ``Serialization.encode`` replaces every non-empty personal value by a sealed
string ``rsp1:<subject>:<nonce+ciphertext>`` (base64url parts): AES-256-GCM (``cryptography``)
with a 96-bit random nonce under the subject's key, the subject id and scheme bound as
associated data (a sealed value copied under another subject does not decrypt). ``rsp1`` is
the scheme version: a later scheme gets a new prefix and both stay readable. ``None``, ``""``
and the :data:`FORGOTTEN` placeholder are written as they are (nothing to hide). A first value
for a subject creates its key in the key store; a value for a subject that was forgotten is
refused with :class:`SubjectForgottenError` (an ``UnserializableError``: the command is not
applied).

**Reading.** ``Serialization.decode`` opens every sealed value with its subject's key. After
``forget(subject)`` destroyed the key, the field reads as :data:`FORGOTTEN`
(``"<forgotten>"``); handlers tell with :func:`is_forgotten`. So an aggregate whose events
name a forgotten subject still recovers, with the placeholder in place of the data. A sealed
value whose key the store never had is :class:`MissingKeyError` (a ``CorruptPayloadError``:
wrong key store or keyspace), never silently the placeholder. Upcasters run before opening:
they see sealed strings (they may move them; they cannot read them).

**Keys.** A :class:`KeyStore` (synchronous SPI, called on cache misses only: KMS clients are
blocking too) keeps one 256-bit key per subject: :class:`InMemoryKeyStore` (the in-memory
journal's, per process) and ``CassandraKeyStore`` (:mod:`raysource.journal.cassandra.keystore`,
the default beside a Cassandra journal). A :class:`KeyRing` caches keys with a bound
(``max_keys``, least recently used out) and an age (``max_age`` seconds: a key another process
destroyed stops being used here within that time). Keys are never logged: the ring's and the
stores' reprs show counts only, and no error message carries a key.
"""

from __future__ import annotations

import contextvars
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import msgspec

from raysource.journal.errors import ConfigError, CorruptPayloadError, UnserializableError
from raysource.journal.keyring import (
    FORGOTTEN,
    SCHEME,
    InMemoryKeyStore,
    KeyRing,
    KeyState,
    KeyStore,
    MissingKeyError,
    SubjectForgottenError,
    is_sealed,
)

__all__ = [
    "FORGOTTEN",
    "SCHEME",
    "InMemoryKeyStore",
    "KeyRing",
    "KeyState",
    "KeyStore",
    "MissingKeyError",
    "Personal",
    "PersonalPlan",
    "SubjectForgotten",
    "SubjectForgottenError",
    "is_forgotten",
    "plan_of",
]

_JSON_ENCODE = msgspec.json.Encoder()
_JSON_DECODE = msgspec.json.Decoder()


def is_forgotten(value: object) -> bool:
    """True if ``value`` is the placeholder of a forgotten subject's personal data."""
    return value == FORGOTTEN


@dataclass(frozen=True, slots=True)
class Personal:
    """Marks a ``str`` field personal: ``Annotated[str, Personal("customer")]`` seals it under
    the key of the subject whose id is in field ``customer`` of the same dataclass."""

    subject: str


@dataclass(frozen=True, slots=True)
class SubjectForgotten:
    """The signal a view receives after ``forget(subject)``: scrub the subject's rows."""

    subject: str
    forgotten_at_ms: int


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class _Obj:
    cls: type  # resolved through the plan table at walk time (recursive types)


@dataclass(frozen=True, slots=True)
class _Seq:
    item: _Node


@dataclass(frozen=True, slots=True)
class _Map:
    value: _Node


_Node = _Obj | _Seq | _Map


@dataclass(frozen=True, slots=True)
class _ObjPlan:
    personal: tuple[tuple[str, str], ...]  # (field, subject field)
    nested: tuple[tuple[str, _Node], ...]  # (field, plan of its value)


@dataclass(frozen=True, slots=True)
class PersonalPlan:
    """Where a registered class keeps personal fields (built once, at registration)."""

    root: _Obj
    objects: dict[type, _ObjPlan]


_BUILDING: contextvars.ContextVar[set[type]] = contextvars.ContextVar("personal_building")


def _marker(annotation: Any, f: dataclasses.Field[Any]) -> str | None:
    subject = f.metadata.get("personal") if f.metadata else None
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, Personal):
                subject = meta.subject
    if subject is not None and not isinstance(subject, str):
        raise ConfigError(f"field {f.name!r}: the personal marker must name a field: {subject!r}")
    return subject


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = annotation.__origin__
    return annotation


def _node(tp: Any, objects: dict[type, _ObjPlan | None], where: str) -> _Node | None:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if tp in _BUILDING.get():  # a recursive type: resolved through the table when walked
            return _Obj(tp)
        return _Obj(tp) if _object(tp, objects) else None
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        found = [n for a in members if (n := _node(a, objects, where)) is not None]
        if found and len(members) > 1:
            raise ConfigError(f"{where}: personal fields inside a union of types are not supported")
        return found[0] if found else None
    if origin in (list, set, frozenset) or (
        origin is tuple and len(typing.get_args(tp)) == 2 and typing.get_args(tp)[1] is Ellipsis
    ):
        item = _node(typing.get_args(tp)[0], objects, where) if typing.get_args(tp) else None
        return _Seq(item) if item is not None else None
    if origin is dict:
        args = typing.get_args(tp)
        value = _node(args[1], objects, where) if len(args) == 2 else None
        return _Map(value) if value is not None else None
    if origin is tuple:
        if any(_node(a, objects, where) for a in typing.get_args(tp)):
            raise ConfigError(f"{where}: personal fields inside a fixed tuple are not supported")
    return None


def _object(cls: type, objects: dict[type, _ObjPlan | None]) -> bool:
    """Fill ``objects[cls]``; True if ``cls`` (or anything it holds) has personal fields. A
    class met again while being built (a recursive type) counts as having them; the walk
    resolves it through the table."""
    if cls in objects:
        return objects[cls] is not None
    building = _BUILDING.get()
    building.add(cls)
    try:
        found = _build(cls, objects)
    finally:
        building.discard(cls)
    objects[cls] = found
    return found is not None


def _build(cls: type, objects: dict[type, _ObjPlan | None]) -> _ObjPlan | None:
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolvable names: decoding reports them; markers must resolve
        hints = {}
        for klass in reversed(cls.__mro__):
            hints.update(getattr(klass, "__annotations__", {}) or {})
        if any(isinstance(h, str) and "Personal" in h for h in hints.values()):
            raise ConfigError(
                f"{cls.__qualname__}: the annotations of its personal fields cannot be resolved"
            ) from None
        hints = {k: (Any if isinstance(v, str) else v) for k, v in hints.items()}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    personal: list[tuple[str, str]] = []
    nested: list[tuple[str, _Node]] = []
    for name, f in fields.items():
        annotation = hints.get(name, Any)
        subject = _marker(annotation, f)
        where = f"{cls.__qualname__}.{name}"
        if subject is not None:
            base = _strip(annotation)
            if base is not str and set(typing.get_args(base)) != {str, type(None)}:
                raise ConfigError(f"{where}: a personal field must be str or str | None")
            if subject not in fields or subject == name:
                raise ConfigError(
                    f"{where}: its subject field {subject!r} is not another field of "
                    f"{cls.__qualname__}"
                )
            personal.append((name, subject))
            continue
        node = _node(annotation, objects, where)
        if node is not None:
            nested.append((name, node))
    return _ObjPlan(tuple(personal), tuple(nested)) if personal or nested else None


def plan_of(cls: type) -> PersonalPlan | None:
    """The personal fields of dataclass ``cls`` (None if it has none). ``ConfigError`` for a
    misplaced marker."""
    if not dataclasses.is_dataclass(cls):
        return None
    objects: dict[type, _ObjPlan | None] = {}
    token = _BUILDING.set(set())
    try:
        if not _object(cls, objects):
            return None
    finally:
        _BUILDING.reset(token)
    return PersonalPlan(_Obj(cls), {k: v for k, v in objects.items() if v is not None})


Leaf = Callable[[dict[str, Any], str, str], None]


def walk(doc: Any, plan: PersonalPlan, leaf: Leaf) -> None:
    """Call ``leaf(obj_doc, field, subject_field)`` for every personal field of ``doc`` (the
    plain JSON document of the plan's class)."""
    _walk(doc, plan.root, plan, leaf, 0)


def _walk(doc: Any, node: _Node, plan: PersonalPlan, leaf: Leaf, depth: int) -> None:
    if depth > 200 or doc is None:
        return
    if isinstance(node, _Obj):
        obj = plan.objects.get(node.cls)
        if obj is None or not isinstance(doc, dict):
            return
        for name, subject in obj.personal:
            if name in doc:
                leaf(doc, name, subject)
        for name, sub in obj.nested:
            _walk(doc.get(name), sub, plan, leaf, depth + 1)
    elif isinstance(node, _Seq):
        if isinstance(doc, list):
            for item in doc:
                _walk(item, node.item, plan, leaf, depth + 1)
    elif isinstance(doc, dict):
        for value in doc.values():
            _walk(value, node.value, plan, leaf, depth + 1)


# --------------------------------------------------------------------------- documents


def _subject(doc: dict[str, Any], field: str, where: dict[str, Any]) -> str:
    subject = doc.get(field)
    if isinstance(subject, bool) or not isinstance(subject, (str, int)) or subject == "":
        raise UnserializableError(
            f"personal data needs a subject id in field {field!r}, got {subject!r}", **where
        )
    return str(subject)


def seal_document(doc: Any, plan: PersonalPlan, ring: KeyRing, where: dict[str, Any]) -> None:
    """Replace every personal value of ``doc`` by its sealed form (in place)."""

    def leaf(obj: dict[str, Any], name: str, subject_field: str) -> None:
        value = obj[name]
        if value is None or value == "" or value == FORGOTTEN:
            return
        if is_sealed(value):
            raise UnserializableError(
                f"personal field {name!r} holds text that looks sealed (rsp<N>:...)", **where
            )
        try:
            obj[name] = ring.seal(_subject(obj, subject_field, where), value)
        except SubjectForgottenError as exc:
            raise SubjectForgottenError(str(exc), **where) from None

    walk(doc, plan, leaf)


def open_document(doc: Any, plan: PersonalPlan, ring: KeyRing, where: dict[str, Any]) -> bool:
    """Open every sealed personal value of ``doc`` in place (:data:`FORGOTTEN` where the key is
    gone). True if anything was sealed."""
    found = False

    def leaf(obj: dict[str, Any], name: str, subject_field: str) -> None:
        nonlocal found
        value = obj[name]
        if is_sealed(value):
            found = True
            obj[name] = ring.open(value, where)

    walk(doc, plan, leaf)
    return found


def scrub_document(doc: Any, plan: PersonalPlan, ring: KeyRing) -> None:
    """Put :data:`FORGOTTEN` in every personal field of a forgotten subject (in place): for
    values already decoded, e.g. the state a live aggregate returns."""

    def leaf(obj: dict[str, Any], name: str, subject_field: str) -> None:
        subject = obj.get(subject_field)
        if obj[name] not in (None, "") and subject not in (None, ""):
            if ring.is_forgotten(str(subject)):
                obj[name] = FORGOTTEN

    walk(doc, plan, leaf)


def seal_payload(payload: bytes, plan: PersonalPlan, ring: KeyRing, where: dict[str, Any]) -> bytes:
    """The JSON ``payload`` with its personal values sealed."""
    doc = _JSON_DECODE.decode(payload)
    seal_document(doc, plan, ring, where)
    return _JSON_ENCODE.encode(doc)


def open_payload(
    payload: bytes, plan: PersonalPlan, ring: KeyRing, manifest: str, where: dict[str, Any]
) -> bytes:
    """The JSON ``payload`` with its sealed personal values opened (or the placeholder)."""
    if b'"rsp' not in payload:  # nothing sealed (e.g. empty personal fields): as it is
        return payload
    try:
        doc = _JSON_DECODE.decode(payload)
    except msgspec.DecodeError as exc:
        raise CorruptPayloadError(f"corrupt JSON payload for {manifest!r}: {exc}", **where) from exc
    if not open_document(doc, plan, ring, where):
        return payload
    return _JSON_ENCODE.encode(doc)


def scrub_payload(payload: bytes, plan: PersonalPlan, ring: KeyRing) -> bytes:
    """The JSON ``payload`` with the personal values of forgotten subjects replaced."""
    doc = _JSON_DECODE.decode(payload)
    scrub_document(doc, plan, ring)
    return _JSON_ENCODE.encode(doc)
