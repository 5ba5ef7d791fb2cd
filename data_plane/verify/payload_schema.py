"""Check a JSON body against an operator's JSON Schema (any draft `jsonschema` knows).

The schema is checked and its validator compiled once, at build time. Bodies come from anyone,
so nothing here may fetch or backtrack: `$ref`s resolve only within the schema (an empty
registry that retrieves nothing: jsonschema's default would still fetch remote URLs, without a
timeout), and every regex the validator runs on the body (`pattern`, `patternProperties`,
`additionalProperties` next to them) runs on RE2, in linear time. `providers/payload_schema.py`
refuses, at apply time, what RE2 cannot run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from typing import Any

from data_plane.verify.base import VerifyFailed
from providers.payload_schema import compile_pattern

PayloadCheck = Callable[[bytes], None]

# The validator's message quotes the offending value; keep a huge one out of logs.
_MAX_MESSAGE = 200


def build(schema: Mapping[str, Any]) -> PayloadCheck:
    # Imported on the first webhook with a payload schema: most gateways have none.
    from jsonschema.exceptions import SchemaError, best_match
    from jsonschema.validators import extend, validator_for
    from referencing import Registry
    from referencing.exceptions import Unresolvable

    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"invalid JSON schema at {exc.json_path}: {exc.message}") from None
    linear = extend(cls, {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    })  # fmt: skip
    validator = linear(schema, format_checker=cls.FORMAT_CHECKER, registry=Registry())

    def check(body: bytes) -> None:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise VerifyFailed("body is not valid JSON") from None
        try:
            errors = validator.iter_errors(document)
            first = next(errors, None)
            if first is None:
                return
            error = best_match(chain((first,), errors))
        except RecursionError:
            raise VerifyFailed("body is nested too deeply to validate") from None
        except Unresolvable:
            # Not the sender's fault, and the schema's text is not theirs to read.
            raise VerifyFailed("payload schema cannot be evaluated") from None
        message = error.message
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        raise VerifyFailed(f"payload does not match schema at {error.json_path}: {message}")

    return check


# The three keywords that run a regex on the body, as jsonschema writes them, on RE2.


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not compile_pattern(pattern).search(instance):
        yield _error(f"does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = compile_pattern(pattern)
        for key, value in instance.items():
            if regex.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    regexes = [compile_pattern(p) for p in schema.get("patternProperties", {})]
    extras = [k for k in instance
              if k not in properties and not any(r.search(k) for r in regexes)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        names = ", ".join(repr(e) for e in sorted(extras)[:5])
        yield _error(f"additional properties are not allowed ({names})")


def _error(message: str) -> Any:
    from jsonschema.exceptions import ValidationError

    return ValidationError(message)
