"""What a Webhook's `payload_schema` may be.

The schema runs on the gateway against bodies from anyone, so it must not be a way to make the
gateway fetch, loop or hang:

- `$ref`s (and `$dynamicRef`, `$recursiveRef`) point inside the schema (`#...`); nothing is
  ever fetched from elsewhere.
- `pattern` and `patternProperties` are compiled by RE2, a linear-time engine: `^(a+)+$` costs
  microseconds on any input. RE2 has no backreferences or lookaround; such patterns are refused.
- The schema is bounded: at most `MAX_NODES` values and `MAX_DEPTH` levels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import re2

MAX_NODES = 10_000
MAX_DEPTH = 32
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
# Keywords whose value is a mapping of names to schemas: their keys are names, not keywords.
_NAMED_SCHEMAS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# Keywords whose value is data to compare with, not a schema.
_DATA = frozenset({"const", "enum", "default", "examples"})


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is raised to the caller, not written to stderr
    return options


_OPTIONS = _options()


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Any:
    """The RE2 regex for `pattern`; raises ValueError naming what RE2 does not support."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(
            f"pattern {pattern!r} is not supported: {reason} (patterns run on a linear-time "
            "engine, RE2: no backreferences or lookaround)"
        ) from None


def _name(key: object) -> str:
    """A key as it may appear in a message: a lone surrogate cannot even be encoded."""
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def _walk(node: Any, path: str, depth: int) -> Iterator[tuple[str, Any, str | None]]:
    """(path, value, keyword that holds it) for every value of the schema, depth first."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{path or 'payload_schema'}: nested deeper than {MAX_DEPTH} levels")
    yield path, node, None
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{path}.{_name(key)}" if path else _name(key)
            if key in _DATA:
                continue
            if key in _NAMED_SCHEMAS and isinstance(value, Mapping):
                yield here, value, key
                for name, sub in value.items():
                    yield from _walk(sub, f"{here}.{_name(name)}", depth + 2)
            else:
                yield from _walk(value, here, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]", depth + 1)


def check(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """`schema` if it keeps to the rules above; ValueError naming the first problem otherwise."""
    nodes = 0
    keywords: set[str] = set()
    for path, node, holder in _walk(schema, "", 0):
        if isinstance(node, Mapping) and holder is None:
            keywords.update(k for k in node if isinstance(k, str))
        nodes += 1
        if nodes > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} values: keep payload schemas small")
        if holder == "patternProperties":
            for name in node:
                try:
                    compile_pattern(str(name))
                except ValueError as exc:
                    raise ValueError(f"{path}: {exc}") from None
        if holder is not None or not isinstance(node, Mapping):
            continue
        for keyword in _REF_KEYWORDS:
            ref = node.get(keyword)
            if isinstance(ref, str) and not ref.startswith("#"):
                where = f"{path}.{keyword}" if path else keyword
                raise ValueError(
                    f"{where}: {ref!r} points outside the schema; only local references "
                    "('#/$defs/...') are allowed, nothing is fetched"
                )
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            try:
                compile_pattern(pattern)
            except ValueError as exc:
                raise ValueError(f"{path}.pattern: {exc}" if path else f"pattern: {exc}") from None
    if {"unevaluatedProperties", "patternProperties"} <= keywords:
        # jsonschema evaluates that pair with Python's backtracking regex engine.
        raise ValueError("unevaluatedProperties cannot be combined with patternProperties")
    return schema
