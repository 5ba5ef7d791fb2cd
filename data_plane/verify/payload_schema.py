"""Check a JSON body against an operator's JSON Schema (any draft `jsonschema` knows).

The schema is checked and its validator compiled once, at build time; `$ref`s are resolved
only within the schema (the `referencing` library fetches nothing remote by default).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for

from data_plane.verify.base import VerifyFailed

PayloadCheck = Callable[[bytes], None]

# The validator's message quotes the offending value; keep a huge one out of logs.
_MAX_MESSAGE = 200


def build(schema: Mapping[str, Any]) -> PayloadCheck:
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"invalid JSON schema at {exc.json_path}: {exc.message}") from None
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

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
        message = error.message
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        raise VerifyFailed(f"payload does not match schema at {error.json_path}: {message}")

    return check
