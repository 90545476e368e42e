"""A typed JSON codec: frozen dataclasses (and tuples, dicts, unions, module types) to plain
JSON values and back, driven by the dataclasses' type hints — so a field someone adds to a
config dataclass is saved and checked without touching the codec.

Decoding is strict: a missing or unknown field, or a value of the wrong JSON type, is an error
that names the field by its path and quotes the value, e.g.

    weights["fc.weight"].encoding.scheme.bits: expected an integer, got "8"

(TypeError for a wrong JSON type, ValueError for a missing, unknown or invalid field; the
dataclasses' own ``__post_init__`` checks are re-raised with the path.) Module types are
written as qualified names and resolved without importing anything a file names, except
from torch.nn and zeropoint (`resolver_for`).
"""

from __future__ import annotations

import importlib
import json
import types
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

from torch import nn

# --------------------------------------------------------------------------- type names


def type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


TypeResolver = Callable[[str], type]


def resolver_for(model: nn.Module) -> TypeResolver:
    """Resolve module type names against the classes ``model`` is built from, then against
    torch.nn and zeropoint (imported by name; no other module is imported from a checkpoint)."""
    known: dict[str, type] = {}
    for m in model.modules():
        for cls in type(m).__mro__:
            if isinstance(cls, type) and issubclass(cls, nn.Module):
                known.setdefault(type_name(cls), cls)

    def resolve(name: str) -> type:
        if name in known:
            return known[name]
        module, _, qualname = name.rpartition(".")
        if not (
            module in ("torch.nn", "zeropoint") or module.startswith(("torch.nn.", "zeropoint."))
        ):
            raise ValueError(
                f"names layer type {name!r}, which is neither a torch.nn type nor a class the "
                "template model is built from"
            )
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"names layer type {name!r}, which does not exist ({exc})") from exc
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            raise ValueError(f"names {name!r}, which is not an nn.Module type")
        return obj

    return resolve


# --------------------------------------------------------------------------- the codec


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and is_dataclass(hint)


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if hint is type(None):
        return "null"
    if _is_union(hint):
        return " or ".join(_describe(a) for a in get_args(hint))
    if origin is type:
        return "the name of a module type (a string)"
    if origin is tuple:
        return "a list"
    if origin is dict or _is_dataclass_type(hint):
        return "an object"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` has the JSON kind ``hint`` reads (the value itself is checked later)."""
    origin = get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if _is_union(hint):
        return any(_accepts(a, value) for a in get_args(hint))
    if origin is type or hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, list)
    if origin is dict or _is_dataclass_type(hint):
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    raise TypeError(f"the checkpoint codec does not handle the type {hint}")


def _show(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def to_json(value: Any, hint: Any, path: str = "") -> Any:
    """``value`` (typed as ``hint``) as plain JSON values."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return _plain(value, path)
    if _is_union(hint):
        if value is None:
            return None
        for a in args:
            # a dataclass value goes to its own class; any other value to a non-dataclass option
            if a is not type(None) and (
                isinstance(value, a) if _is_dataclass_type(a) else not is_dataclass(value)
            ):
                return to_json(value, a, path)
        raise TypeError(f"{path}: {value!r} is not {_describe(hint)}")
    if origin is type:
        return type_name(value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return [to_json(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
        return [to_json(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    if origin is dict:
        return {str(k): to_json(v, args[1], f'{path}["{k}"]') for k, v in value.items()}
    if _is_dataclass_type(hint):
        hints = _hints(hint)
        return {
            f.name: to_json(getattr(value, f.name), hints[f.name], _field(path, f.name))
            for f in fields(hint)
        }
    if hint is float:
        return float(value)
    return value


def _plain(value: Any, path: str) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{path}: {value!r} cannot be written to JSON")


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def from_json(value: Any, hint: Any, path: str, resolve: TypeResolver) -> Any:
    """Read ``value`` as ``hint``; TypeError for a wrong JSON type, ValueError for a missing,
    unknown or invalid field — both name the field by its ``path``."""
    if not _accepts(hint, value):
        raise TypeError(f"{path}: expected {_describe(hint)}, got {_show(value)}")
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return _frozen(value)
    if _is_union(hint):
        (first, *_) = [a for a in args if _accepts(a, value)]
        return from_json(value, first, path, resolve)
    if origin is type:
        try:
            return resolve(value)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(
                from_json(v, args[0], f"{path}[{i}]", resolve) for i, v in enumerate(value)
            )
        if len(value) != len(args):
            raise ValueError(f"{path}: expected a list of {len(args)} values, got {_show(value)}")
        return tuple(
            from_json(v, a, f"{path}[{i}]", resolve) for i, (v, a) in enumerate(zip(value, args))
        )
    if origin is dict:
        return {k: from_json(v, args[1], f'{path}["{k}"]', resolve) for k, v in value.items()}
    if _is_dataclass_type(hint):
        return _dataclass_from_json(value, hint, path, resolve)
    if hint is float:
        return float(value)
    return value


def _dataclass_from_json(value: dict[str, Any], cls: Any, path: str, resolve: TypeResolver) -> Any:
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    for name in names:
        if name not in value:
            raise ValueError(f"{path or 'the document'} lacks the field {_field(path, name)!r}")
    for name in value:
        if name not in names:
            raise ValueError(
                f"{path or 'the document'} has an unknown field {_field(path, name)!r} "
                f"(expected {names})"
            )
    kwargs = {n: from_json(value[n], hints[n], _field(path, n), resolve) for n in names}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{path or 'the document'}: {exc}") from exc
