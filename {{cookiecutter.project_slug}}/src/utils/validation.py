"""Read a YAML file and validate it against a pydantic model, with one-line errors.

Pydantic checks types and values; this module turns its ``ValidationError`` into ONE line
naming the file and the dotted key, in the words a YAML author uses::

    configs/x.yaml: data.n_samples: expected int, got 'ten'
    configs/x.yaml: data.n_sample: unknown key, did you mean 'n_samples'? (known: ...)

Schemas (``src.utils.config``) stay plain pydantic models: frozen, ``extra="forbid"``, strict
types (``StrictInt``, ``StrictBool``, ``StrictStr``; ``Float`` below for floats). A check that
pydantic's constraints cannot say raises ``FieldError`` (via ``check``) in a validator, naming
its key relative to the model.
"""

from __future__ import annotations

import difflib
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, Strict, ValidationError

Loc = tuple[int | str, ...]

# PyYAML reads "3e-4" (no dot) as a string; float fields accept that spelling.
_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_float(value: Any) -> Any:
    if isinstance(value, str) and _SCI_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


# A float that also accepts ints and "3e-4"-style strings, but not bools or other strings.
Float = Annotated[float, BeforeValidator(_yaml_float), Strict()]


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the file and key."""


class FieldError(ValueError):
    """A failed check at ``key`` (dotted, relative to the model whose validator raised it)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def check(ok: bool, key: str, message: str) -> None:
    """Raise FieldError(key, message) unless ``ok`` (for use in model validators)."""
    if not ok:
        raise FieldError(key, message)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file ``path``; ConfigError for a missing, unreadable, invalid or
    empty file, duplicate keys, or a document that is not a mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if raw is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {_show(raw)}")
    return raw


def validate(schema: type[BaseModel], data: Any, where: str | Path | None = None) -> Any:
    """A ``schema`` instance built from ``data``; otherwise ConfigError
    ``"{where}: {key}: {problem}"`` for the first problem pydantic finds (no ``where`` prefix
    when None)."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        line = error_line(schema, data, e.errors()[0])
        raise ConfigError(line if where is None else f"{where}: {line}") from None


def error_line(schema: type[BaseModel], data: Any, error: Any) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) as ``"key: problem"``."""
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        known = list(_walk(schema, loc[:-1])[1].model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f", did you mean {close[0]!r}?" if close else ""
        return f"{_dotted(loc)}: unknown key{hint} (known: {', '.join(known)})"
    if kind == "missing":
        what = "section" if _is_model(_strip(_walk(schema, loc)[1])) else "key"
        return f"{_dotted(loc)}: missing required {what}"
    if isinstance(ctx.get("error"), FieldError):
        field_error = ctx["error"]
        return f"{_join(_dotted(loc), field_error.key)}: {field_error.message}"
    if isinstance(ctx.get("error"), ValueError | AssertionError):
        return f"{_dotted(loc)}: {ctx['error']}"
    bound = next((b for b in _BOUNDS if b in ctx), None)
    if bound is not None:
        return f"{_dotted(loc)}: must be {_BOUNDS[bound]} {ctx[bound]}, got {_show(error['input'])}"
    where, tp = _walk(schema, loc)  # stops at a union: describe the union, not one arm
    return f"{_dotted(where)}: expected {_wanted(tp)}, got {_show(_value_at(data, where, error))}"


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip(tp: Any) -> Any:
    """``tp`` without Annotated metadata, and X for ``X | None``."""
    while True:
        origin, args = get_origin(tp), get_args(tp)
        if origin is Annotated:
            tp = args[0]
        elif origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
            tp = next(a for a in args if a is not type(None))
        else:
            return tp


def _walk(schema: type[BaseModel], loc: Loc) -> tuple[Loc, Any]:
    """Follow ``loc`` through model fields and list items: the part of it that names a key,
    and the type hint there (a union's arm names in ``loc`` end the walk)."""
    tp: Any = schema
    for n, part in enumerate(loc):
        tp = _strip(tp)
        if _is_model(tp) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) in (list, tuple) and isinstance(part, int):
            tp = get_args(tp)[0]
        else:
            return loc[:n], tp
    return loc, tp


def _wanted(tp: Any) -> str:
    """What type hint ``tp`` wants, in words."""
    tp = _strip(tp)
    if _is_model(tp):
        return f"a section with keys ({', '.join(tp.model_fields)})"
    return _describe(tp)


def _describe(tp: Any) -> str:
    tp = _strip(tp)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(map(repr, args))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_describe(args[0])}"
    if _is_model(tp):
        return "a mapping"
    names = {type(None): "null", bool: "true or false", int: "int", float: "float", str: "string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _value_at(data: Any, loc: Loc, error: Any) -> Any:
    """The input value at ``loc`` (pydantic's error has the innermost one only)."""
    try:
        for part in loc:
            data = data[part]
    except (KeyError, IndexError, TypeError):
        return error["input"]
    return data


def _dotted(loc: Loc) -> str:
    key = ""
    for part in loc:
        key = f"{key}[{part}]" if isinstance(part, int) else _join(key, part)
    return key


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _show(value: Any) -> str:
    """A value as the YAML author wrote it, shortened."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
