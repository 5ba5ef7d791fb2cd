"""Settings given as URLs and environment variables, validated by one mechanism.

The etcd URL (`?timeout=`, `?watchdog=`), the Vault variables (`VAULT_*`, `WH_VAULT_*`) and the
options in a Connection's URL (`s3://BUCKET?region=`, `http://HOST:8123/?database=`) are all
strings that become typed settings. Each kind is a frozen pydantic dataclass built with
`SETTINGS_CONFIG`, and reaches it through `validate`, so the same rules hold everywhere: a
number of seconds is finite and positive, an unknown or repeated URL option is an error, and an
error names where the bad value came from (`WH_VAULT_TIMEOUT='soon'`, `?timeout=nan`), never
a credential.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

T = TypeVar("T")

# Pass `frozen=True` to the dataclass decorator. hide_input_in_errors: a settings object holds
# credentials, and pydantic's own message would quote every argument of a failed construction.
SETTINGS_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, hide_input_in_errors=True)

PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]

# Values of these fields never appear in an error message.
_SECRET_FIELD = re.compile(r"password|secret|token|key", re.IGNORECASE)


def query_options(query: str, allowed: Iterable[str], what: str) -> dict[str, str]:
    """The `name=value` options of a URL's query; an unknown or repeated one is an error."""
    known = tuple(allowed)
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in known:
            expected = ", ".join(f"?{k}=" for k in known) or "none"
            raise ValueError(f"{what}: unknown option ?{name}= (known: {expected})")
        if name in options:
            raise ValueError(f"{what}: option ?{name}= given twice")
        options[name] = value
    return options


def env_values(env: Mapping[str, str], variables: Mapping[str, str]) -> dict[str, str]:
    """field -> value of the variable `variables[field]`; empty or blank variables are unset."""
    values: dict[str, str] = {}
    for name, variable in variables.items():
        value = env.get(variable, "").strip()
        if value:
            values[name] = value
    return values


def validate(cls: type[T], values: Mapping[str, Any], sources: Mapping[str, str]) -> T:
    """`cls(**values)`, with every error naming the source of the value (`sources[field]`,
    e.g. "WH_VAULT_TIMEOUT" or "?timeout") instead of the field. Raises ValueError."""
    try:
        return TypeAdapter(cls).validate_python(dict(values))
    except ValidationError as exc:
        raise ValueError("; ".join(_describe(err, sources) for err in exc.errors())) from None


def _describe(err: Any, sources: Mapping[str, str]) -> str:
    loc = err.get("loc") or ()
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if loc and isinstance(loc[0], str):
        field = loc[0]
        source = sources.get(field, field)
        if _SECRET_FIELD.search(field):
            return f"{source}: {message}"
        return f"{source}={err.get('input')!r}: {message}"
    # A rule between fields (e.g. "role_id is set but secret_id is not"): name the sources.
    if not sources:
        return message
    fields = re.compile(r"\b(" + "|".join(map(re.escape, sources)) + r")\b")
    return fields.sub(lambda m: sources[m.group(1)], message)
