"""pydantic's validation errors in the command line's words: which option, config-file key or
field is wrong, what is wrong with it, and what a valid value looks like."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Final

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ._errors import CliError, ExitCode

__all__ = ["describe_validation_error", "validation_cli_error"]

Loc = tuple[int | str, ...]

MULTIADDR_EXAMPLE: Final = "/ip4/0.0.0.0/tcp/4001"
_SECRET_WORDS: Final = ("dsn", "token", "password", "secret")
_DURATION_WORDS: Final = ("timeout", "interval", "lease", "ttl", "grace", "period", "_s")
_MULTIADDR_FIELDS: Final = ("listen", "cadre_addrs", "responder_addrs")
_MAX_KEYS_LISTED: Final = 8
_NOUNS: Final = {"float_": "a number", "int_": "a whole number", "bool_": "true or false",
                 "string_type": "text", "list_type": "a list", "tuple_type": "a list",
                 "model_": "a table", "dict_type": "a table"}  # fmt: skip


def _field(model: type[BaseModel] | None, loc: Loc) -> tuple[str | None, FieldInfo | None]:
    """The name and :class:`FieldInfo` of the field ``loc`` leads to in ``model`` (through
    nested models; list indices are skipped)."""
    name: str | None = None
    info: FieldInfo | None = None
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return str(part), None
        name, info = str(part), fields[part]
        current = _model_of(info.annotation)
    return name, info


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside an annotation (``Model``, ``Model | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _bounds(info: FieldInfo | None, ctx: Mapping[str, Any]) -> str:
    """``> 0 and <= 86400``: the field's numeric bounds (or those the error names)."""
    parts: list[str] = []
    items = list(info.metadata) if info is not None else []
    for item in items:
        for kind, attr, sign in (
            (Gt, "gt", ">"),
            (Ge, "ge", ">="),
            (Lt, "lt", "<"),
            (Le, "le", "<="),
        ):
            if isinstance(item, kind):
                parts.append(f"{sign} {_number(getattr(item, attr))}")
    if not parts:
        for key, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if key in ctx:
                parts.append(f"{sign} {_number(ctx[key])}")
    return " and ".join(parts)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _expected(name: str | None, info: FieldInfo | None, error: Mapping[str, Any]) -> str | None:
    """What a valid value looks like, as far as the field and the error tell."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "too_long":
        return None  # the problem says how many are allowed
    if name in _MULTIADDR_FIELDS:
        if kind in ("list_type", "tuple_type"):
            return f'a list of multiaddrs such as ["{MULTIADDR_EXAMPLE}"]'
        return f"a multiaddr such as {MULTIADDR_EXAMPLE}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "a table of keys (a [section] in the file)"
    if kind == "literal_error" and "expected" in ctx:
        return f"one of {ctx['expected']}"
    annotation = info.annotation if info is not None else None
    numeric = kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
    numeric |= kind in ("int_parsing", "float_parsing", "int_type", "float_type", "int_from_float")
    if numeric or annotation in (int, float):
        bounds = _bounds(info, ctx)
        within = f" {bounds}" if bounds else ""
        if annotation is int or kind.startswith("int"):
            return f"a whole number{within}"
        if name is not None and any(word in name for word in _DURATION_WORDS):
            return f"a number of seconds{within}, e.g. 5 or 0.5 (no unit)"
        return f"a number{within}"
    if kind == "string_pattern_mismatch" and "pattern" in ctx:
        return f"text matching {ctx['pattern']}"
    return None


def _problem(error: Mapping[str, Any]) -> str:
    """What is wrong, in words (the offending value quoted unless it may be a secret)."""
    kind, loc = error["type"], error["loc"]
    message = str(error["msg"]).removeprefix("Value error, ")
    secret = any(word in str(part).lower() for part in loc for word in _SECRET_WORDS)
    value = error.get("input")
    shown = (
        repr(value)
        if not secret and isinstance(value, str | int | float) and len(repr(value)) <= 80
        else None
    )
    ctx = error.get("ctx") or {}
    if kind == "too_short" and "min_length" in ctx:
        return f"needs at least {ctx['min_length']}"
    if kind == "too_long" and "max_length" in ctx:
        return f"{ctx.get('actual_length', 'too many')} given, at most {ctx['max_length']} allowed"
    if kind == "value_error" and shown is not None:
        return f"{shown}: {message}"
    for prefix, noun in _NOUNS.items():
        if kind.startswith(prefix):
            return f"{shown} is not {noun}" if shown is not None else f"not {noun}"
    if shown is None:
        return message[:1].lower() + message[1:]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{shown} is out of range"
    if kind == "literal_error":
        return f"{shown} is not a known value"
    if kind == "string_pattern_mismatch":
        return f"{shown} is not allowed"
    return f"{shown}: {message[:1].lower() + message[1:]}"


def _unknown_key(model: type[BaseModel] | None, loc: Loc) -> str:
    *parent, key = loc
    _, info = _field(model, tuple(parent))
    owner = _model_of(info.annotation) if info is not None else (model if not parent else None)
    known = sorted(getattr(owner, "model_fields", {}))
    where = f"[{'.'.join(map(str, parent))}]" if parent else "the top level"
    if not known:
        return "unknown key"
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    if len(known) <= _MAX_KEYS_LISTED:
        return f"unknown key; {where} has {', '.join(known)}"
    return f"unknown key; see the configuration reference in docs/operations.md for {where}"


def _where(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe_validation_error(
    exc: ValidationError,
    *,
    model: type[BaseModel] | None = None,
    options: Mapping[tuple[str, ...], str] | None = None,
    source: str | None = None,
) -> list[str]:
    """One line per problem of ``exc``: ``WHERE: WHAT; expected SHAPE``.

    ``WHERE`` is the option that gave the value when ``options`` maps the error's location (or
    a prefix of it) to one, else ``SOURCE: dotted.key``. An error on a container that another
    error inside it explains (a list left empty by its invalid item) is left out.
    """
    errors: list[dict[str, Any]] = [dict(e) for e in exc.errors(include_url=False)]
    locs: list[Loc] = [tuple(e["loc"]) for e in errors]
    lines: list[str] = []
    for error, loc in zip(errors, locs, strict=True):
        if any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
            continue
        option = _option_for(loc, options or {})
        if option is not None:
            where = option
        else:
            key = _where(loc)
            where = ": ".join(part for part in (source, key) if part)
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: {_unknown_key(model, loc)}")
            continue
        name, info = _field(model, loc)
        expected = _expected(name, info, error)
        line = f"{where}: {_problem(error)}" if where else _problem(error)
        lines.append(line + (f"; expected {expected}" if expected else ""))
    return lines


def _option_for(loc: Loc, options: Mapping[tuple[str, ...], str]) -> str | None:
    for length in range(len(loc), 0, -1):
        option = options.get(tuple(str(p) for p in loc[:length] if not isinstance(p, int)))
        if option is not None:
            return option
    return None


def validation_cli_error(
    exc: ValidationError,
    *,
    model: type[BaseModel] | None = None,
    options: Mapping[tuple[str, ...], str] | None = None,
    source: str | None = None,
) -> CliError:
    """A usage error (exit status 2) saying what :func:`describe_validation_error` says: the
    first problem on the ``Error:`` line, any others on indented lines below it."""
    lines: Sequence[str] = describe_validation_error(
        exc, model=model, options=options, source=source
    ) or [str(exc)]
    return CliError("\n  ".join(lines), ExitCode.USAGE)
