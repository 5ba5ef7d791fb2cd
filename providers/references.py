"""References inside string values, resolved at the gateway and never stored resolved.

    {$VAR}                        the gateway's environment variable VAR (an error if unset)
    {$VAR:default}                ... or `default` when VAR is unset
    {$vault:PATH#FIELD}           field FIELD of the KV secret at PATH
    {$vault:PATH#FIELD:default}   ... or `default` when the secret or the field does not exist
    <$vault:PATH#FIELD>           the same, in angle brackets

A reference may be a whole value or embedded in a longer string. Resolved values are inserted
exactly as they are: nothing is trimmed, escaped or "sanitised".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from providers.errors import ReferenceError_

_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VAULT_PATH = re.compile(r"[A-Za-z0-9_.@-]+(/[A-Za-z0-9_.@-]+)*")
_VAULT_FIELD = re.compile(r"[A-Za-z0-9_.@-]+")
_OPENERS = re.compile(r"\{\$|<\$vault:")


@dataclass(frozen=True, slots=True)
class EnvRef:
    name: str
    default: str | None = None

    def __str__(self) -> str:
        return "{$" + self.name + ("" if self.default is None else ":...") + "}"


@dataclass(frozen=True, slots=True)
class VaultRef:
    path: str
    field: str
    default: str | None = None

    def __str__(self) -> str:
        default = "" if self.default is None else ":..."
        return "{$vault:" + f"{self.path}#{self.field}{default}" + "}"


Ref = EnvRef | VaultRef


@dataclass(frozen=True, slots=True)
class Template:
    """A string split into literal parts and references."""

    parts: tuple[str | Ref, ...]

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if not isinstance(p, str))

    def render(self, resolve: Callable[[Ref], str]) -> str:
        return "".join(p if isinstance(p, str) else resolve(p) for p in self.parts)


def has_refs(text: str) -> bool:
    return "{$" in text or "<$vault:" in text


def _parse_one(body: str, opener: str) -> Ref:
    if opener == "<$vault:" or body.startswith("vault:"):
        spec = body if opener == "<$vault:" else body[len("vault:") :]
        path, sep, rest = spec.partition("#")
        if not sep:
            raise ReferenceError_(f"vault reference {spec!r} needs '#FIELD' after the path")
        field, has_default, default = rest.partition(":")
        if not _VAULT_PATH.fullmatch(path):
            raise ReferenceError_(
                f"invalid vault path {path!r} in reference: use segments of letters, digits "
                "and '_.@-' separated by single '/'"
            )
        if any(seg in (".", "..") for seg in path.split("/")):
            # Vault collapses them: `alpha/../beta` would read beta's secret.
            raise ReferenceError_(f"invalid vault path {path!r}: '.' and '..' segments")
        if not _VAULT_FIELD.fullmatch(field):
            raise ReferenceError_(f"invalid vault field {field!r} in reference to {path!r}")
        return VaultRef(path, field, default if has_default else None)
    name, has_default, default = body.partition(":")
    if not name:
        raise ReferenceError_("empty variable name in '{$}' reference")
    if not _VAR.fullmatch(name):
        raise ReferenceError_(
            f"invalid variable name {name!r}: "
            "use letters, digits and '_', not starting with a digit"
        )
    return EnvRef(name, default if has_default else None)


@lru_cache(maxsize=8192)
def parse(text: str) -> Template:
    """Split `text` into literals and references; raise ReferenceError_ on a malformed one.

    Cached: the same reference strings recur across thousands of resources.
    """
    parts: list[str | Ref] = []
    pos = 0
    for m in _OPENERS.finditer(text):
        if m.start() < pos:
            continue
        opener = m.group()
        closer = "}" if opener == "{$" else ">"
        end = text.find(closer, m.end())
        if end < 0:
            raise ReferenceError_(
                f"unclosed reference starting at character {m.start()}: missing {closer!r}"
            )
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(_parse_one(text[m.end() : end], opener))
        pos = end + 1
    if pos < len(text):
        parts.append(text[pos:])
    return Template(tuple(parts))


def iter_strings(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, value) of every string with a reference in a JSON-like value."""
    if isinstance(obj, str):
        if has_refs(obj):
            yield path, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from iter_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from iter_strings(v, f"{path}[{i}]")


def refs_in(obj: Any) -> dict[str, tuple[Ref, ...]]:
    """Field path -> references, for every string holding one; raises on a malformed reference."""
    out: dict[str, tuple[Ref, ...]] = {}
    for path, text in iter_strings(obj):
        try:
            out[path] = parse(text).refs
        except ReferenceError_ as exc:
            raise ReferenceError_(f"{path}: {exc}") from None
    return out


def env_resolver(
    env: Mapping[str, str], vault: Callable[[VaultRef], str] | None = None
) -> Callable[[Ref], str]:
    """A resolve function: environment variables from `env`, vault references via `vault`."""

    def resolve(ref: Ref) -> str:
        if isinstance(ref, EnvRef):
            value = env.get(ref.name)
            if value is not None:
                return value
            if ref.default is not None:
                return ref.default
            raise ReferenceError_(f"environment variable {ref.name} is not set and has no default")
        if vault is None:
            # Without any Vault (a laptop, a test) a default stands in; with a Vault configured,
            # only a missing secret or field falls back to it, never an outage.
            if ref.default is not None:
                return ref.default
            raise ReferenceError_(f"{ref} needs Vault, and no Vault is configured")
        return vault(ref)

    return resolve
