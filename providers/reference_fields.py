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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

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


@dataclass(frozen=True, slots=True)
class Site:
    """A referable string that holds a reference: where it is, and its text."""

    steps: tuple[str | int, ...]  # attribute names, tuple indexes and mapping keys, from the top
    path: str  # the same, as written in the document: `spec.verify.secret[0]`
    text: str


def locate(resource: Any) -> list[Site]:
    """Every referable string in `resource` that holds a reference."""
    out: list[Site] = []
    _locate(resource, [], out)
    return out


Trail = list[tuple[str | int, str | int]]


def _site(trail: Trail, text: str) -> Site:
    """The site at the end of `trail`: (step, name in the document; an int for an index)."""
    path = ""
    for _step, name in trail:
        if isinstance(name, int):
            path = f"{path}[{name}]"
        else:
            path = f"{path}.{name}" if path else name
    return Site(tuple(step for step, _name in trail), path, text)


def _locate(obj: Any, trail: Trail, out: list[Site]) -> None:
    # Called for every model of every resource at load: the trail (attribute, name in the
    # document) is a stack, turned into a Site's steps and path only where a reference is.
    for attr, name, shape in _plan_of(type(obj)):  # type: ignore[arg-type]
        value = getattr(obj, attr)
        if value is None:
            continue
        trail.append((attr, name))
        if shape == "str":
            if "{$" in value or "<$vault:" in value:
                out.append(_site(trail, value))
        elif shape == "seq" or shape == "map":
            items = enumerate(value) if shape == "seq" else value.items()
            for k, v in items:
                if "{$" in v or "<$vault:" in v:
                    trail.append((k, k))
                    out.append(_site(trail, v))
                    trail.pop()
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                trail.append((i, i))
                _locate(item, trail, out)
                trail.pop()
        else:
            _locate(value, trail, out)
        trail.pop()


def sites(resource: Any) -> list[tuple[str, str]]:
    """(field path, text) of every referable string in `resource` that holds a reference."""
    return [(site.path, site.text) for site in locate(resource)]


def refs(resource: Any) -> list[Ref]:
    """Every reference in the referable fields of `resource` (raises on a malformed one)."""
    return [r for site in locate(resource) for r in parse(site.text).refs]


@dataclass(slots=True)
class Memo:
    """What one build has resolved and validated already. It holds resolved values: it must
    never outlive the build."""

    # (model class, attribute, resolved value) -> the value as validated: a thousand webhooks
    # verified with one secret validate it once.
    checked: dict[tuple[type, str, Any], Any] = dataclasses.field(default_factory=dict)



def resolve(resource: Any, render: Callable[[str], str],
            located: Sequence[Site] | None = None, memo: Memo | None = None) -> Any:
    """A copy of `resource` with the text of every site passed through `render`.

    `located` is `locate(resource)`, when the caller has it already. Only the models on the way
    to a site are copied; everything else is shared. The model that holds a resolved field gets
    that field validated like a written one (a URL must still be a URL); errors name the field.
    `memo` remembers, across the resources of one build, what was resolved and validated.
    """
    if located is None:
        located = locate(resource)
    if not located:
        return resource
    return _rebuild(resource, [(site.steps, site) for site in located], render,
                    Memo() if memo is None else memo)


def _rebuild(obj: Any, items: list[tuple[tuple[str | int, ...], Site]],
             render: Callable[[str], str], memo: Memo) -> Any:
    groups: dict[str, list[tuple[tuple[str | int, ...], Site]]] = {}
    for steps, site in items:
        groups.setdefault(str(steps[0]), []).append((steps[1:], site))
    cls: type = type(obj)
    shapes = _shapes(cls)
    changes: dict[str, Any] = {}
    leaf = False
    for attr, sub in groups.items():
        value = getattr(obj, attr)
        shape = shapes[attr]
        if shape == "str":
            changes[attr] = _render(sub[0][1], render)
        elif shape == "seq":
            at = {rest[0]: site for rest, site in sub}
            changes[attr] = tuple(_render(at[i], render) if i in at else v
                                  for i, v in enumerate(value))
        elif shape == "map":
            at = {rest[0]: site for rest, site in sub}
            changes[attr] = {k: _render(at[k], render) if k in at else v
                             for k, v in value.items()}
        elif isinstance(value, tuple):
            by_index: dict[int, list[tuple[tuple[str | int, ...], Site]]] = {}
            for rest, site in sub:
                by_index.setdefault(int(rest[0]), []).append((rest[1:], site))
            changes[attr] = tuple(_rebuild(v, by_index[i], render, memo) if i in by_index
                                  else v for i, v in enumerate(value))
        else:
            changes[attr] = _rebuild(value, sub, render, memo)
        leaf = leaf or shape != "nested"
    if leaf:
        checks = _field_checks(cls)
        try:
            if checks is None:
                return dataclasses.replace(obj, **changes)
            for attr, check in checks.items():
                if attr in changes:
                    changes[attr] = _check(cls, attr, check, changes[attr], memo.checked)
        except ValidationError:
            # Name the fields, never the values: they are resolved secrets now.
            fields = sorted({site.path for sub in groups.values() for _rest, site in sub})
            raise InvalidAfterResolving(", ".join(fields)) from None
    copied: Any = object.__new__(cls)
    for attr in slots(cls):
        # Frozen models: setting on a copy nobody else holds yet is safe.
        object.__setattr__(copied, attr, changes[attr] if attr in changes
                           else getattr(obj, attr))
    return copied


def _check(cls: type, attr: str, check: TypeAdapter[Any], value: Any,
           checked: dict[tuple[type, str, Any], Any]) -> Any:
    # A mapping (headers) is not hashable: validated each time, like before.
    if not isinstance(value, str | tuple):
        return check.validate_python(value)
    key = (cls, attr, value)
    found = checked.get(key, checked)
    if found is checked:
        found = checked[key] = check.validate_python(value)
    return found


@cache
def _shapes(cls: type) -> dict[str, Shape]:
    return {attr: shape for attr, _name, shape in _plan_of(cls)}


def _render(site: Site, render: Callable[[str], str]) -> str:
    try:
        return render(site.text)
    except ReferenceError_ as exc:
        raise ReferenceError_(f"{site.path}: {exc}") from None


class InvalidAfterResolving(ValueError):
    """A resolved value that its field does not take (the message names the fields only)."""


@cache
def _field_checks(cls: type) -> dict[str, TypeAdapter[Any]] | None:
    """A validator per referable field of `cls`: re-validating a resolved value alone costs a
    tenth of rebuilding the whole model. None when the model has validators of its own, which
    only a rebuild runs."""
    decorators = getattr(cls, "__pydantic_decorators__", None)
    if decorators is None or decorators.model_validators or decorators.field_validators:
        return None
    checks: dict[str, TypeAdapter[Any]] = {}
    for attr, _name, shape in _plan_of(cls):
        if shape == "nested":
            continue
        info = cls.__pydantic_fields__[attr]  # type: ignore[attr-defined]
        annotation = info.annotation
        if info.metadata:
            annotation = typing.Annotated[(annotation, *info.metadata)]
        checks[attr] = TypeAdapter(annotation)
    return checks


@cache
def slots(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


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


def count_in_text(text: str | bytes) -> int:
    """How many reference openers a text holds (its raw UTF-8 bytes count the same)."""
    if isinstance(text, bytes):
        return text.count(b"{$") + text.count(b"<$vault:")
    return text.count("{$") + text.count("<$vault:")
