"""IR dataclasses <-> plain data (dicts, lists, str, int, bool, None), the form golden files are written in as YAML.

Driven by each dataclass's fields and type hints, so it follows IR changes without edits:

- a dataclass is a mapping of its fields in field order, leaving out a field whose value is its default;
- an enum member is its value, a tuple a list, a frozenset a sorted list;
- where a field's type is a union of several dataclasses (`RouteIR.action: ForwardAction | DirectAction`), the
  value's class name is written under `DISCRIMINATOR` ("@kind", as protobuf's JSON writes "@type"; not an
  identifier, so no field can clash with it); `X | None` needs none;
- a field declared with `repr=False` is a secret (`ApiKey.value`): its value is never written, `REDACTED` is.

`from_data` reads back, strictly: an unknown key, a missing required field or a value of the wrong type is an
error naming where it is (`gateways[0].listeners[1].port`), as hand-edited inputs need. For every IR value `x`
without secrets, `from_data(type(x), to_data(x)) == x`; a secret reads back as `REDACTED`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from typing import Any, TypeVar, cast

T = TypeVar("T")

REDACTED = "<redacted>"  # translators.xds.render.REDACTED, without importing protobuf here
DISCRIMINATOR = "@kind"
_PRIMITIVES = (str, int, float, bool)


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    hint: Any
    default: Any  # dataclasses.MISSING when the field is required
    secret: bool


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type) -> tuple[_Field, ...]:
    known = _FIELDS.get(cls)
    if known is not None:
        return known
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        found.append(_Field(f.name, hints[f.name], default, not f.repr))
    _FIELDS[cls] = tuple(found)
    return _FIELDS[cls]


def _is_dataclass(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _discriminated(members: tuple[Any, ...]) -> bool:
    return sum(_is_dataclass(m) for m in members) > 1


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _at(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` (an IR value when dumping) belongs to `hint`, one member of a union."""
    if hint is type(None):
        return value is None
    if _is_dataclass(hint) or (isinstance(hint, type) and issubclass(hint, Enum)):
        return type(value) is hint
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    origin = typing.get_origin(hint) or hint
    return isinstance(origin, type) and isinstance(value, origin)


def to_data(value: Any, hint: Any = None) -> Any:
    """An IR value as plain data; `hint` is its declared type (default: its class, which suits a dataclass)."""
    return _dump(value, type(value) if hint is None else hint, "")


def _dump(value: Any, hint: Any, path: str) -> Any:
    if hint is Any:
        hint = type(value)
    if _is_union(hint):
        members = typing.get_args(hint)
        member = next((m for m in members if _fits(value, m)), None)
        if member is None:
            raise TypeError(f"{path or 'value'}: {value!r} is none of {_name(hint)}")
        data = _dump(value, member, path)
        if _is_dataclass(member) and _discriminated(members):
            return {DISCRIMINATOR: member.__name__, **data}
        return data
    if _is_dataclass(hint):
        if type(value) is not hint:
            raise TypeError(f"{path or 'value'}: expected {hint.__name__}, got {type(value).__name__}")
        out: dict[str, Any] = {}
        for f in _fields(hint):
            field_value = getattr(value, f.name)
            if f.secret:
                out[f.name] = None if field_value is None else REDACTED
            elif f.default is dataclasses.MISSING or field_value != f.default:
                out[f.name] = _dump(field_value, f.hint, _at(path, f.name))
        return out
    if typing.get_origin(hint) is tuple or hint is tuple:
        if not isinstance(value, tuple):
            raise TypeError(f"{path or 'value'}: expected a tuple, got {value!r}")
        item_hints = _items(hint, len(value))
        return [_dump(item, h, _at(path, i)) for i, (item, h) in enumerate(zip(value, item_hints, strict=True))]
    if typing.get_origin(hint) is frozenset:
        if not isinstance(value, frozenset):
            raise TypeError(f"{path or 'value'}: expected a frozenset, got {value!r}")
        [item_hint] = typing.get_args(hint)
        return sorted((_dump(item, item_hint, path) for item in value), key=repr)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value).value
    if hint is type(None) or hint in _PRIMITIVES:
        if not _fits(value, hint):
            raise TypeError(f"{path or 'value'}: expected {_name(hint)}, got {value!r}")
        return None if value is None else hint(value)  # a StrEnum member in a str field is written as a str
    raise TypeError(f"{path or 'value'}: cannot write type {_name(hint)}")


def _items(hint: Any, length: int) -> list[Any]:
    """The hint of each item of a tuple of `length` items typed `hint`."""
    args = typing.get_args(hint)
    if not args:
        return [Any] * length
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * length
    if args == ((),):  # tuple[()]
        args = ()
    if len(args) != length:
        raise TypeError(f"expected {len(args)} items for {hint}, got {length}")
    return list(args)


def from_data(hint: type[T], data: Any) -> T:
    """Plain data (as `to_data` writes it, or by hand) as a value of `hint`: a dataclass or a type like
    `tuple[GatewayIR, ...]`."""
    return cast(T, _load(hint, data, ""))


def _load(hint: Any, data: Any, path: str) -> Any:
    where = path or "value"
    if hint is Any:
        return data
    if _is_union(hint):
        return _load_union(hint, data, path)
    if _is_dataclass(hint):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping for {hint.__name__}, got {data!r}")
        fields = _fields(hint)
        unknown = set(data) - {f.name for f in fields}
        if unknown:
            raise ValueError(f"{where}: {hint.__name__} has no field {', '.join(sorted(map(str, unknown)))}")
        kwargs: dict[str, Any] = {}
        for f in fields:
            if f.name in data:
                kwargs[f.name] = _load(f.hint, data[f.name], _at(path, f.name))
            elif f.default is dataclasses.MISSING:
                raise ValueError(f"{where}: {hint.__name__} needs field {f.name}")
        return hint(**kwargs)
    if typing.get_origin(hint) is tuple or hint is tuple:
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list, got {data!r}")
        try:
            item_hints = _items(hint, len(data))
        except TypeError as error:
            raise ValueError(f"{where}: {error}") from None
        return tuple(_load(h, item, _at(path, i)) for i, (item, h) in enumerate(zip(data, item_hints, strict=True)))
    if typing.get_origin(hint) is frozenset:
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list, got {data!r}")
        [item_hint] = typing.get_args(hint)
        return frozenset(_load(item_hint, item, _at(path, i)) for i, item in enumerate(data))
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(data)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in hint)
            raise ValueError(f"{where}: {data!r} is not a {hint.__name__} ({choices})") from None
    if hint is type(None) or hint in _PRIMITIVES:
        if not _fits(data, hint):
            raise ValueError(f"{where}: expected {_name(hint)}, got {data!r}")
        return data
    raise TypeError(f"{where}: cannot read type {_name(hint)}")


def _load_union(hint: Any, data: Any, path: str) -> Any:
    where = path or "value"
    members = typing.get_args(hint)
    if data is None and type(None) in members:
        return None
    classes = [m for m in members if _is_dataclass(m)]
    if isinstance(data, dict) and classes:
        if len(classes) == 1:
            return _load(classes[0], data, path)
        rest = dict(data)
        kind = rest.pop(DISCRIMINATOR, None)
        chosen = next((c for c in classes if c.__name__ == kind), None)
        if chosen is None:
            names = ", ".join(c.__name__ for c in classes)
            raise ValueError(f"{where}: {DISCRIMINATOR} must name one of {names}, got {kind!r}")
        return _load(chosen, rest, path)
    errors = []
    for member in members:
        if _is_dataclass(member) or member is type(None):
            continue
        try:
            return _load(member, data, path)
        except ValueError as error:
            errors.append(str(error))
    raise ValueError(f"{where}: {data!r} is none of {_name(hint)}" + (f" ({'; '.join(errors)})" if errors else ""))
