"""Documents that differ only in their name and namespace, validated once per shape.

A large config is mostly copies: the same webhook in ten thousand namespaces, the same
connection under a hundred names. A stored document has a shape when its key's name and
namespace each appear in it exactly once as `"name": "<name>"` and `"namespace": "<ns>"` (the
layout `json.dumps` writes, or without the space): the shape is the same bytes with
placeholders there. Every document of one shape is then the shape's validated resource with
another `metadata.name` and `metadata.namespace`, provided those pass the name pattern: no
other rule of the model reads their values (the resource validators only ask whether a
namespace is there, which the shape decides).

A document whose shape does not validate, or whose name breaks the pattern, takes the ordinary
path and gets its own error messages. Tenant rules read the namespace's value: they are
checked once per shape and namespace (providers/build.py).

The shape also stands in for the stored bytes: `Shape.render` gives them back exactly, so a
snapshot keeps each shape once instead of each document's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from providers.model import NAME_RE
from providers.resources import Connection, Metadata, Namespace, Webhook

NAME_PLACEHOLDER = "x-whplane-shape-name-x"
NAMESPACE_PLACEHOLDER = "x-whplane-shape-namespace-x"
_MARK = b"whplane-shape-"  # in both placeholders: a document holding it has no shape
_NAME_FIELDS = (b'"name": "', b'"name":"')
_NAMESPACE_FIELDS = (b'"namespace": "', b'"namespace":"')
R = TypeVar("R")


@dataclass(frozen=True, slots=True, eq=False)
class Shape:
    """A document with placeholders for its name and namespace."""

    text: bytes
    name_field: bytes  # how the document writes the name field: `"name": "`
    namespace_field: bytes | None  # None: a global resource, no namespace in the key

    def render(self, name: str, namespace: str | None) -> bytes:
        """The stored document of that name and namespace."""
        out = self.text.replace(self.name_field + _NAME_PH,
                                self.name_field + name.encode() + b'"', 1)
        if self.namespace_field is not None and namespace is not None:
            out = out.replace(self.namespace_field + _NAMESPACE_PH,
                              self.namespace_field + namespace.encode() + b'"', 1)
        return out


_NAME_PH = NAME_PLACEHOLDER.encode() + b'"'
_NAMESPACE_PH = NAMESPACE_PLACEHOLDER.encode() + b'"'


def cut(name: str, namespace: str | None, raw: bytes) -> tuple[bytes, bytes, bytes | None] | None:
    """(shape text, name field, namespace field) of `raw` stored under that name and
    namespace, or None when it has no shape (see `Shape`)."""
    if not NAME_RE.fullmatch(name) or (namespace is not None
                                       and not NAME_RE.fullmatch(namespace)):
        return None  # the ordinary path names the problem
    if _MARK in raw:
        return None
    name_field, i, n = _find(raw, _NAME_FIELDS, name)
    if i < 0:
        return None
    if namespace is None:
        return raw[:i] + name_field + _NAME_PH + raw[i + n:], name_field, None
    ns_field, j, m = _find(raw, _NAMESPACE_FIELDS, namespace)
    if j < 0:
        return None
    # Each placeholder takes the place of exactly one value, so `Shape.render` gives `raw`
    # back whole; overlapping values (only in broken text) are left to the ordinary path.
    if i < j and i + n <= j:
        text = b"".join((raw[:i], name_field, _NAME_PH, raw[i + n:j], ns_field, _NAMESPACE_PH,
                         raw[j + m:]))
    elif j < i and j + m <= i:
        text = b"".join((raw[:j], ns_field, _NAMESPACE_PH, raw[j + m:i], name_field, _NAME_PH,
                         raw[i + n:]))
    else:
        return None
    return text, name_field, ns_field


def _find(raw: bytes, fields: tuple[bytes, ...], value: str) -> tuple[bytes, int, int]:
    """(field, offset, length) of the one `"field": "value"` of `raw`; offset -1 if none, or
    if there are several."""
    encoded = value.encode() + b'"'
    for field in fields:
        written = field + encoded
        at = raw.find(written)
        if at >= 0:
            if raw.find(written, at + 1) >= 0:
                break
            return field, at, len(written)
    return b"", -1, 0


def fits(resource: Any, kind: str, global_: bool) -> bool:
    """Whether `resource`, validated from a shape, has its placeholders where they belong:
    the kind of the key, the name placeholder as its name, the namespace's as its namespace."""
    md = resource.metadata
    return bool(resource.kind == kind and md.name == NAME_PLACEHOLDER
            and md.namespace == (None if global_ else NAMESPACE_PLACEHOLDER))


def renamed(metadata: Metadata, name: str, namespace: str | None) -> Metadata:
    """`metadata` (of a shape's resource) with another name and namespace.

    Copied field by field, without validating again: the shape's resource was validated, and
    `cut` checked the names against the only rule that reads them.
    """
    new: Any = _new(Metadata)
    _set(new, "name", name)
    _set(new, "namespace", namespace)
    _set(new, "labels", metadata.labels)
    _set(new, "annotations", metadata.annotations)
    _set(new, "generation", metadata.generation)
    _set(new, "revision", metadata.revision)
    _set(new, "sandbox", metadata.sandbox)
    return new  # type: ignore[no-any-return]


def with_metadata(resource: R, metadata: Metadata) -> R:
    """A copy of `resource` (of a shape, or resolved from one) with that metadata."""
    copied: Any = _new(type(resource))
    _set(copied, "apiVersion", resource.apiVersion)  # type: ignore[attr-defined]
    _set(copied, "kind", resource.kind)  # type: ignore[attr-defined]
    _set(copied, "metadata", metadata)
    _set(copied, "spec", resource.spec)  # type: ignore[attr-defined]
    return copied  # type: ignore[no-any-return]


_new = object.__new__
_set = object.__setattr__
# The copies above name every field: a field added to these models must be added there.
assert tuple(Metadata.__dataclass_fields__) == (
    "name", "namespace", "labels", "annotations", "generation", "revision", "sandbox")
assert all(tuple(cls.__dataclass_fields__) == ("apiVersion", "kind", "metadata", "spec")
           for cls in (Namespace, Connection, Webhook))
