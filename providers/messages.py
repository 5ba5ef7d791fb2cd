"""Validation errors in words a person reads at once.

pydantic's messages are written for programmers ("Tuple should have at least 1 item after
validation, not 0", "unable to parse string as a number"); `reason` rewrites them as what the
field must be, and a name that is nearly right (a field, a scheme, a module, a kind) gets a
"did you mean" from the names the schema knows.

A value is quoted only where it cannot be a secret: the choices of a fixed set, numbers of
numeric fields, text given where a number belongs. Elsewhere the message names its type.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping
from functools import cache
from typing import Any

_WHOLE = "must be a whole number"
_NUMBER = "must be a number"
_MAPPING = "must be a mapping (`key: value` lines)"
_LIST = "must be a list (`- item` lines, or `[a, b]`)"
_TYPE_RULES = {
    "int_type": _WHOLE, "int_parsing": _WHOLE, "int_from_float": _WHOLE,
    "int_parsing_size": "is a number too large for this field",
    "float_type": _NUMBER, "float_parsing": _NUMBER, "finite_number": "must be a finite number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "string_type": "must be text (a string)", "string_unicode": "must be text (a string)",
    "dict_type": _MAPPING, "mapping_type": _MAPPING, "dataclass_type": _MAPPING,
    "model_type": _MAPPING, "model_attributes_type": _MAPPING,
    "list_type": _LIST, "tuple_type": _LIST, "set_type": _LIST, "frozen_set_type": _LIST,
    "iterable_type": _LIST,
}
# Types whose wrong value is text or a number of a numeric field: safe to quote.
_QUOTED = frozenset({"int_parsing", "int_from_float", "float_parsing", "bool_parsing",
                     "greater_than", "greater_than_equal", "less_than", "less_than_equal",
                     "literal_error", "enum", "multiple_of"})
_BOUNDS = {"greater_than": ("gt", "must be greater than {}"),
           "greater_than_equal": ("ge", "must be {} or more"),
           "less_than": ("lt", "must be less than {}"),
           "less_than_equal": ("le", "must be {} or less"),
           "multiple_of": ("multiple_of", "must be a multiple of {}")}


def kind_of(value: object) -> str:
    """What a value is, in YAML's words: `text`, `a number`, `a list`, ..."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def quoted(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    if isinstance(value, int | float):
        return repr(value)
    return kind_of(value)


def suggestion(word: object, candidates: Iterable[str]) -> str:
    """`; did you mean NAME?` when one candidate is close to `word`, else ``."""
    if not isinstance(word, str) or not word:
        return ""
    choices = sorted(set(candidates))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.7)
    if not close:  # a case slip (`Webhook` for `webhook`) is close whatever its length
        close = [c for c in choices if c.lower() == word.lower()][:1]
    return f"; did you mean {close[0]}?" if close and close[0] != word else ""


def reason(err: Mapping[str, Any], siblings: Collection[str] = ()) -> str:
    """A pydantic error in plain words; `siblings` are the other keys of the mapping an
    unknown field sits in (they say which definition it belongs to)."""
    kind = str(err.get("type", ""))
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    got = f", not {quoted(value)}" if kind in _QUOTED else f", not {kind_of(value)}"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        loc = err.get("loc") or ("",)
        return "unknown field" + suggestion(loc[-1], field_names(siblings))
    if kind == "missing":
        return "required, but missing"
    if kind == "union_tag_invalid":
        tag = str(ctx.get("discriminator", "")).strip("'")
        expected = str(ctx.get("expected_tags", ""))
        choices = [t.strip().strip("'") for t in expected.split(",")]
        return (f"unknown {tag} {ctx.get('tag')!r}; expected one of {expected}"
                + suggestion(ctx.get("tag"), choices))
    if kind == "union_tag_not_found":
        tag = str(ctx.get("discriminator", "")).strip("'")
        return f"required, but missing: `{tag}` says which kind of entry this is"
    if kind in _TYPE_RULES:
        return _TYPE_RULES[kind] + got
    if kind in _BOUNDS:
        key, text = _BOUNDS[kind]
        return text.format(_number(ctx.get(key))) + got
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", ""))
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",")]
        hint = suggestion(value, choices) if len(choices) > 1 else ""
        return f"must be {expected}{got}{hint}"
    if kind == "too_short":
        n, has = ctx.get("min_length"), ctx.get("actual_length")
        return f"needs at least {n} item{'s' if n != 1 else ''}, has {has}"
    if kind == "too_long":
        n, has = ctx.get("max_length"), ctx.get("actual_length")
        return f"takes at most {n} item{'s' if n != 1 else ''}, has {has}"
    if kind == "string_too_short":
        n = ctx.get("min_length")
        return "must not be empty" if n == 1 else f"must be at least {n} characters long"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if "a-z0-9" in pattern:
            return "invalid name: use lower-case letters, digits and '-', 1-63 characters"
        return f"does not have the expected form (pattern {pattern!r})"
    msg = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return msg.replace("Input should be", "must be", 1)


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def field_names(siblings: Collection[str]) -> set[str]:
    """The field names of every definition that has all of `siblings` (of all of them when
    none has): where the mistyped field most likely belongs."""
    fitting = [props for props in _property_sets() if set(siblings) <= props]
    return set().union(*(fitting or _property_sets()))


@cache
def _property_sets() -> tuple[frozenset[str], ...]:
    # Built on first need only: the schema of every resource is a few tens of ms.
    from pydantic import TypeAdapter

    from providers.resources import Resource

    schema = TypeAdapter(Resource).json_schema(mode="validation")
    return tuple(frozenset(d.get("properties", ())) for d in schema.get("$defs", {}).values()
                 if d.get("properties"))
