"""The one decorator every resource model uses, and small shared field types.

Models are pydantic dataclasses with `slots=True`: a snapshot holds hundreds of thousands of
them, and slots cost about a sixth of the memory of `BaseModel` instances (no `__dict__`, no
fields-set). Every model gets the same config, so "unknown fields are errors" and immutability
hold at every depth (pydantic's config does not propagate to nested types by itself).
"""

from __future__ import annotations

import re
from typing import Annotated, TypeVar, dataclass_transform

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.dataclasses import dataclass

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
NAME_RE = re.compile(NAME_PATTERN)


# Not a number and infinity are not numbers a limit or a delay can be: JSON cannot even store them.
MODEL_CONFIG = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False,
                          defer_build=True)
T = TypeVar("T")


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(Field,))
def model(cls: type[T]) -> type[T]:
    """Make `cls` a frozen, slotted, keyword-only pydantic dataclass that forbids extra fields."""
    made = dataclass(frozen=True, slots=True, kw_only=True, config=MODEL_CONFIG)(cls)
    return made  # type: ignore[return-value]


Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="lower-case letters, digits and '-', 1-63 characters, starting and ending "
        "with a letter or digit",
    ),
]


def _as_tuple(value: object) -> object:
    # One secret or several: a list lets an operator rotate a secret without downtime.
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


def _non_empty(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise ValueError("at least one secret is required")
    if any(v == "" for v in values):
        raise ValueError("a secret must not be empty")
    return values


class _Referable:
    """Type metadata: this string may hold references (`{$VAR}`, `{$vault:PATH#FIELD}`).

    Only fields so marked are resolved at the gateway; a reference anywhere else (another
    field, a mapping key, a payload schema) is an error. See `providers/reference_fields.py`.
    """

    def __repr__(self) -> str:
        return "REFERABLE"


REFERABLE = _Referable()
Referable = Annotated[str, REFERABLE, Field(json_schema_extra={"x-whplane-references": True})]

Secrets = Annotated[
    tuple[str, ...],
    REFERABLE,
    BeforeValidator(_as_tuple),
    AfterValidator(_non_empty),
    # What an operator may write: one string or a list (the model normalises to a tuple).
    WithJsonSchema({
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        ],
        "description": "a secret reference, or a list of them (all are accepted, for rotation)",
        "x-whplane-secret": True,
        "x-whplane-references": True,
    }),
]

def shared(value: T) -> T:
    """A default that every instance shares.

    pydantic deep-copies a plain default that it cannot prove immutable (our frozen models
    included) on every validation: 100k webhooks would each get private copies of identical
    default limits, retries and step configs. Frozen values are safe to share.
    """
    return Field(default_factory=lambda: value)  # type: ignore[no-any-return,unused-ignore]


Seconds = Annotated[float, Field(gt=0, le=86400)]
