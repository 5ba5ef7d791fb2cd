"""Where references may be: the fields typed `Referable` (or `Secrets`), and nowhere else.

A gateway resolves references with its own environment and Vault token. Resolving them anywhere
in a document (a mapping key, a payload schema, a stream name) would let whoever writes config
copy any secret the gateway can read into a place that is sent out or answered back. So the
schema marks the fields that may hold a reference, and only those are resolved: on the
validated resource, field by field, never by text substitution over the whole document.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any, Literal

from providers.errors import ReferenceError_
from providers.model import REFERABLE
from providers.references import Ref, has_refs, parse

Shape = Literal["str", "seq", "map", "nested"]
_PRIMITIVES = (str, int, float, bool, type(None))


def _marked(annotation: Any) -> bool:
    return typing.get_origin(annotation) is typing.Annotated and any(
        m is REFERABLE for m in annotation.__metadata__
    )


def _shape(info: Any) -> Shape | None:
    if any(m is REFERABLE for m in info.metadata):
        return "seq" if typing.get_origin(info.annotation) is tuple else "str"
    annotation = info.annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if any(_marked(a) for a in args):
            return "str"
        if all(_plain(a) or typing.get_origin(a) is dict for a in args):
            return None
    if typing.get_origin(annotation) is dict and len(args) == 2 and _marked(args[1]):
        return "map"
    if annotation in _PRIMITIVES or typing.get_origin(annotation) is Literal:
        return None
    if typing.get_origin(annotation) is dict:
        return None  # plain mappings (labels, payload schemas) hold no models
    if typing.get_origin(annotation) is tuple and all(_plain(a) for a in args):
        return None
    return "nested"


def _plain(annotation: Any) -> bool:
    """True for a type that can hold no model: a primitive, a Literal, `...`."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is dict:
        return False
    return (annotation in _PRIMITIVES or annotation is Ellipsis
            or typing.get_origin(annotation) is Literal)


def _models_in(annotation: Any) -> Iterator[type]:
    """The model classes a type annotation can hold (through unions, tuples, Annotated)."""
    if hasattr(annotation, "__pydantic_fields__"):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


Plan = tuple[tuple[str, str, Shape], ...]


def _plan(cls: type) -> Plan:
    return _plan_of(cls)


@cache
def _plan_of(cls: type) -> Plan:
    """(attribute, name in the document, shape) of every field of `cls` that may lead to a
    reference; empty for anything that is not a model or holds no referable field."""
    fields = getattr(cls, "__pydantic_fields__", {})
    out = []
    for name, info in fields.items():
        shape = _shape(info)
        if shape == "nested" and not any(_plan(m) for m in _models_in(info.annotation)):
            continue  # nothing below can hold a reference: do not walk it
        if shape is not None:
            out.append((name, info.alias or name, shape))
    return tuple(out)


def sites(resource: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, text) of every referable string in `resource` that holds a reference.

    Paths are written as in the document (`spec.verify.secret[0]`, `spec.headers.Authorization`).
    """
    for attr, name, shape in _plan(type(resource)):
        value = getattr(resource, attr)
        here = f"{path}.{name}" if path else name
        if value is None:
            continue
        if shape == "str":
            if has_refs(value):
                yield here, value
        elif shape == "seq":
            for i, v in enumerate(value):
                if has_refs(v):
                    yield f"{here}[{i}]", v
        elif shape == "map":
            for k, v in value.items():
                if has_refs(v):
                    yield f"{here}.{k}", v
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if _plan(type(item)):
                    yield from sites(item, f"{here}[{i}]")
        elif _plan(type(value)):
            yield from sites(value, here)


def refs(resource: Any) -> list[Ref]:
    """Every reference in the referable fields of `resource` (raises on a malformed one)."""
    return [r for _, text in sites(resource) for r in parse(text).refs]


def resolve(resource: Any, render: Callable[[str], str]) -> Any:
    """A copy of `resource` with every referable field's text passed through `render`.

    Unchanged parts are shared, not copied. The model that holds a resolved field is rebuilt
    through its constructor, so resolved values are validated like written ones (a URL must
    still be a URL); the models above it are copied with the new child, already validated.
    """
    changes: dict[str, Any] = {}
    leaf = False
    for attr, name, shape in _plan(type(resource)):
        value = getattr(resource, attr)
        if value is None:
            continue
        try:
            new = _resolve_field(value, shape, render)
        except ReferenceError_ as exc:
            # Name the field from the top: each level adds its own name on the way out.
            sep = "" if str(exc).startswith("[") else "."
            raise ReferenceError_(f"{name}{sep}{exc}" if ": " in str(exc) else
                                  f"{name}: {exc}") from None
        if new is not value:
            changes[attr] = new
            leaf = leaf or shape != "nested"
    if not changes:
        return resource
    if leaf:
        return dataclasses.replace(resource, **changes)
    cls: type = type(resource)
    copied: Any = object.__new__(cls)
    for attr in _slots(cls):
        # Frozen models: setting on a copy nobody else holds yet is safe.
        object.__setattr__(copied, attr, changes[attr] if attr in changes
                           else getattr(resource, attr))
    return copied


@cache
def _slots(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _resolve_field(value: Any, shape: Shape, render: Callable[[str], str]) -> Any:
    if shape == "str":
        return render(value) if has_refs(value) else value
    if shape == "seq":
        if not any(has_refs(v) for v in value):
            return value
        out = []
        for i, v in enumerate(value):
            try:
                out.append(render(v) if has_refs(v) else v)
            except ReferenceError_ as exc:
                raise ReferenceError_(f"[{i}]: {exc}") from None
        return tuple(out)
    if shape == "map":
        if not any(has_refs(v) for v in value.values()):
            return value
        resolved = {}
        for k, v in value.items():
            try:
                resolved[k] = render(v) if has_refs(v) else v
            except ReferenceError_ as exc:
                raise ReferenceError_(f"{k}: {exc}") from None
        return resolved
    if isinstance(value, tuple):
        items = []
        for i, item in enumerate(value):
            try:
                items.append(resolve(item, render) if _plan(type(item)) else item)
            except ReferenceError_ as exc:
                raise ReferenceError_(f"[{i}].{exc}") from None
        changed = any(a is not b for a, b in zip(items, value, strict=True))
        return tuple(items) if changed else value
    return resolve(value, render) if _plan(type(value)) else value


def misplaced(doc: Any, allowed: set[str], path: str = "") -> Iterator[str]:
    """Paths in the raw document `doc` where a reference sits outside the `allowed` paths.

    `allowed` is the set of paths `sites` found; a single secret written as a string (not a
    list) is allowed at `path` when `path[0]` is.
    """
    if isinstance(doc, str):
        if has_refs(doc) and path not in allowed and f"{path}[0]" not in allowed:
            yield path
    elif isinstance(doc, Mapping):
        for k, v in doc.items():
            here = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and has_refs(k):
                yield f"{here} (a mapping key)"
            yield from misplaced(v, allowed, here)
    elif isinstance(doc, list | tuple):
        for i, v in enumerate(doc):
            yield from misplaced(v, allowed, f"{path}[{i}]")


def count_in_text(text: str) -> int:
    """How many references the JSON text of a document holds, as an upper bound check."""
    return text.count("{$") + text.count("<$vault:")
