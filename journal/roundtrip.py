"""The two helpers behind the serializer's round-trip rule (see
:mod:`raysource.journal.serialization`).

* :func:`difference` compares a value with what its payload decoded back to: structurally and
  type-strictly (never through the classes' own ``__eq__``), returning a one-line description
  of the first difference, or ``None`` when the round trip is faithful.
* :func:`forget_msgspec_caches` removes the unpicklable ``__msgspec_cache__`` attribute that
  msgspec leaves on every class it builds a decoder for, from every class reachable from a type.
* :func:`pin_annotations` resolves string annotations where a class is defined, so a class
  shipped by value to another process can still be decoded into there.

Pure functions, no state; the serializer owns the policy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import typing
import uuid
from decimal import Decimal
from typing import Any

__all__ = ["difference", "forget_msgspec_caches", "pin_annotations"]

MSGSPEC_CACHE_ATTR = "__msgspec_cache__"
_MAX_DEPTH = 200

# types whose equal values are interchangeable once the exact type matched
_EQ_BY_VALUE = (str, bytes, bytearray, bool, dt.date, dt.timedelta, type(None))
# the fast path inside containers: same exact type and ``==`` settle these (a float that
# equals a decoded float is finite; a Decimal NaN is never ``==``)
_SIMPLE = frozenset({str, int, float, bool, bytes, Decimal, uuid.UUID, dt.date, type(None)})


# per-class dataclass field names, None for other classes (bounded below)
_DATACLASS_FIELDS: dict[type, tuple[str, ...] | None] = {}
_UNSEEN: Any = object()


def _fields_of(cls: type) -> tuple[str, ...] | None:
    if len(_DATACLASS_FIELDS) > 10_000:  # classes made on the fly: do not grow forever
        _DATACLASS_FIELDS.clear()
    names = (
        tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
    )
    _DATACLASS_FIELDS[cls] = names
    return names


def _name(t: type) -> str:
    return t.__qualname__


class _Differs(Exception):
    """Internal: carries the first difference up to :func:`difference`, which adds the path."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


def difference(original: Any, back: Any) -> str | None:
    """``None`` if ``back`` (the decoded payload) equals ``original`` under the round-trip rule,
    else where and how they differ (e.g. ``"$.seat.row: a int comes back as a str"``)."""
    try:
        _compare(original, back, 0)
    except _Differs as diff:
        return "$" + "".join(reversed(diff.path)) + ": " + diff.message
    return None


def _compare(a: Any, b: Any, depth: int) -> None:
    """Raise ``_Differs`` at the first difference (exceptions keep the common, equal case
    free of path bookkeeping)."""
    if a is b:
        return
    ta = type(a)
    if ta is float:
        if a != a or a in (math.inf, -math.inf):
            raise _Differs(f"the float {a!r} has no JSON form (NaN and infinities are refused)")
        if type(b) is not float or a != b:
            _mismatch(a, b)
        return
    tb = type(b)
    if ta is not tb:
        if ta is int and tb is float and a == b:
            return  # the numeric tower: an int in a float field comes back as the equal float
        _mismatch(a, b)
    if depth > _MAX_DEPTH:
        raise _Differs(f"nested deeper than {_MAX_DEPTH} levels")
    names = _DATACLASS_FIELDS.get(ta, _UNSEEN)  # one lookup: safe beside a clear()
    if names is _UNSEEN:
        names = _fields_of(ta)
    if names is not None:
        for name in names:
            x, y = getattr(a, name), getattr(b, name)
            if x is y or (type(x) is type(y) and type(x) in _SIMPLE and x == y):
                continue
            try:
                _compare(x, y, depth + 1)
            except _Differs as diff:
                diff.path.append(f".{name}")
                raise
        return
    if ta in _EQ_BY_VALUE or ta is int:
        if a != b:
            _mismatch(a, b)
        return
    if ta is Decimal:
        if a.is_nan():
            raise _Differs(f"Decimal {a!r} is not equal to itself (NaN is refused)")
        if a != b:
            _mismatch(a, b)
        return
    if ta is dt.datetime or ta is dt.time:
        if (a.tzinfo is None) != (b.tzinfo is None) or a != b or a.utcoffset() != b.utcoffset():
            _mismatch(a, b)
        return
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            raise _Differs(f"{len(a)} items come back as {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            if x is y or (type(x) is type(y) and type(x) in _SIMPLE and x == y):
                continue
            try:
                _compare(x, y, depth + 1)
            except _Differs as diff:
                diff.path.append(f"[{i}]")
                raise
        return
    if isinstance(a, dict):
        if len(a) != len(b):
            raise _Differs(f"{len(a)} entries come back as {len(b)}")
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            try:
                _compare(ka, kb, depth + 1)
                _compare(va, vb, depth + 1)
            except _Differs as diff:
                diff.path.append(f"[{ka!r}]")
                raise
        return
    if isinstance(a, enum.Enum):
        _mismatch(a, b)  # another member (the same one is identical)
    try:  # sets, UUIDs and whatever else msgspec round-trips: the value decides
        equal = bool(a == b)
    except Exception as exc:  # an __eq__ that raises cannot confirm the round trip
        raise _Differs(f"cannot compare {_name(ta)} values: {exc!r}") from None
    if not equal:
        _mismatch(a, b)


def _mismatch(a: Any, b: Any) -> None:
    if type(a) is not type(b):
        raise _Differs(f"a {_name(type(a))} comes back as a {_name(type(b))} ({a!r} -> {b!r})")
    raise _Differs(f"{a!r} comes back as {b!r}")


def forget_msgspec_caches(tp: Any) -> None:
    """Delete ``__msgspec_cache__`` from every class reachable from the type ``tp`` (its
    annotations, recursively, through unions, generics, NewTypes, TypeVars and bases).

    msgspec stores its per-class type info there when it builds a decoder; cloudpickle copies a
    class's ``__dict__`` when it pickles the class by value (classes of ``__main__``, notebooks,
    test modules) and cannot pickle that info. A decoder keeps its own reference, so removing
    the attribute afterwards changes nothing for the decoder."""
    for cls in _reachable_classes(tp):
        if MSGSPEC_CACHE_ATTR in cls.__dict__:
            try:
                delattr(cls, MSGSPEC_CACHE_ATTR)
            except (AttributeError, TypeError):  # a class that refuses attribute changes
                pass


def pin_annotations(tp: Any) -> None:
    """Replace the string annotations (``from __future__ import annotations``) of every class
    reachable from ``tp`` by the objects they name, while the defining module is at hand.

    A class shipped by value to another process (Ray does that with ``__main__``, notebooks and
    test modules) arrives without its module, so names in string annotations could not be
    resolved there and the class could not be decoded into. Resolving them where the class is
    defined (``Serialization.register``, ``AggregateType``) makes the annotations travel as the
    classes themselves. Annotations that cannot be resolved yet are left as they are."""
    for cls in _reachable_classes(tp):
        own = cls.__dict__.get("__annotations__")
        if not isinstance(own, dict) or not any(isinstance(v, str) for v in own.values()):
            continue
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except Exception:  # a forward reference not defined yet: decoding will say so
            continue
        try:
            cls.__annotations__ = {name: hints.get(name, value) for name, value in own.items()}
        except (AttributeError, TypeError):
            pass


def _reachable_classes(tp: Any) -> list[type]:
    """Every class reachable from the type ``tp``: itself, its annotations (recursively),
    union members, generic arguments, NewType/TypeVar targets and bases."""
    out: list[type] = []
    stack: list[Any] = [tp]
    seen: set[int] = set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if isinstance(t, type):
            if t.__module__ == "builtins":
                continue
            out.append(t)
            stack.extend(_annotations_of(t))
            stack.extend(getattr(t, "__orig_bases__", ()))
            stack.extend(b for b in t.__mro__[1:] if b is not object)
        else:
            stack.extend(a for a in typing.get_args(t) if not isinstance(a, (str, int, bytes)))
            for attr in ("__origin__", "__supertype__", "__value__", "__bound__"):
                inner = getattr(t, attr, None)
                if inner is not None:
                    stack.append(inner)
            stack.extend(getattr(t, "__constraints__", ()) or ())
    return out


def _annotations_of(cls: type) -> list[Any]:
    try:
        return list(typing.get_type_hints(cls, include_extras=True).values())
    except Exception:  # unresolvable names: msgspec could not have built info from them either
        return []
