"""Documents that differ only in their name and namespace, validated once per shape.

A large config is mostly copies: the same webhook in ten thousand namespaces, the same
connection under a hundred names. A document's shape is its bytes with the first
`"name": "<name>"` and `"namespace": "<namespace>"` (its key's names, as `json.dumps` writes
them, or without the space) replaced by placeholders: one validated resource serves every
document of the shape.

Why that is exact: names are runs of `[a-z0-9-]` between quotes, and so are the placeholders,
so swapping one for the other leaves the JSON's tokens as they were, and only those two string
values differ. The shape's resource must have the placeholders as its `metadata.name` and
`metadata.namespace` (`fits`), each placeholder must appear once in the shape (`sound`), and
the document's names must match the name pattern (`cut`): then the document validates to the
shape's resource with its own names, since no rule of the model reads their values but the
pattern (the resource validators only ask whether a namespace is there, as the shape does).
Tenant rules do read the namespace: they are checked per shape and namespace
(providers/build.py). Anything else, a shape that does not validate included, takes the
ordinary path and gets its own error messages.

The shape also stands in for the stored bytes: `Shape.render` gives them back exactly, so a
snapshot keeps each shape once instead of each document's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from providers.resources import Connection, Metadata, Namespace, Webhook

NAME_PLACEHOLDER = "x-whplane-shape-name-x"
NAMESPACE_PLACEHOLDER = "x-whplane-shape-namespace-x"
# How json.dumps writes a field, and how it writes it with separators=(",", ":").
_NAME_FIELD, _NAME_FIELD_TIGHT = b'"name": "', b'"name":"'
_NAMESPACE_FIELD, _NAMESPACE_FIELD_TIGHT = b'"namespace": "', b'"namespace":"'
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


    def around_name(self, namespace: str | None) -> tuple[bytes, bytes]:
        """(before, after): `render(name, namespace)` is `before + name + after`, for any
        name. A reader holding them checks a document against the shape in one comparison."""
        text = self.render(NAME_PLACEHOLDER, namespace)
        # A namespace holds no quote, so it cannot make a second name field: one split.
        before, after = text.split(self.name_field + _NAME_PH)
        return before + self.name_field, b'"' + after


_NAME_PH = NAME_PLACEHOLDER.encode() + b'"'
_NAMESPACE_PH = NAMESPACE_PLACEHOLDER.encode() + b'"'


def cut(name: str, namespace: str | None, raw: bytes) -> tuple[bytes, bytes, bytes | None] | None:
    """(shape text, name field, namespace field) of `raw` stored under that name and
    namespace, or None when it has no shape (see `Shape`)."""
    return Cutter()(name, namespace, raw)


class Cutter:
    """`cut` for the documents of one read, each namespace's own work done once: called for
    every document, it is a handful of byte-string operations, no parsing."""

    def __init__(self) -> None:
        # namespace -> how the field may be written (json.dumps' way, then without the
        # space), or () when the namespace is not a name
        self._namespaces: dict[str, tuple[bytes, ...]] = {}

    def __call__(self, name: str, namespace: str | None,
                 raw: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        if not (0 < len(name) <= 63 and not name.strip(NAME_CHARS) and name[0] != "-"
                and name[-1] != "-"):  # `is_name`, inline: this runs a million times
            return None  # the ordinary path names the problem
        encoded = name.encode() + b'"'
        name_field = _NAME_FIELD
        written = name_field + encoded
        i = raw.find(written)
        if i < 0:
            name_field = _NAME_FIELD_TIGHT
            written = name_field + encoded
            i = raw.find(written)
            if i < 0:
                return None
        n = len(written)
        if namespace is None:
            return b"".join((raw[:i], name_field, _NAME_PH, raw[i + n:])), name_field, None
        forms = self._namespaces.get(namespace)
        if forms is None:
            forms = self._namespaces[namespace] = (
                (_NAMESPACE_FIELD + namespace.encode() + b'"',
                 _NAMESPACE_FIELD_TIGHT + namespace.encode() + b'"')
                if is_name(namespace) else ())
        if not forms:
            return None
        written = forms[0]
        ns_field = _NAMESPACE_FIELD
        j = raw.find(written)
        if j < 0:
            written = forms[1]
            ns_field = _NAMESPACE_FIELD_TIGHT
            j = raw.find(written)
            if j < 0:
                return None
        m = len(written)
        # Each placeholder takes the place of exactly one value (overlapping values, only in
        # broken text, are left to the ordinary path); `sound` checks the rest once per shape.
        if i + n <= j:
            text = b"".join((raw[:i], name_field, _NAME_PH, raw[i + n:j], ns_field,
                             _NAMESPACE_PH, raw[j + m:]))
        elif j + m <= i:
            text = b"".join((raw[:j], ns_field, _NAMESPACE_PH, raw[j + m:i], name_field,
                             _NAME_PH, raw[i + n:]))
        else:
            return None
        return text, name_field, ns_field


def sound(shape: Shape) -> bool:
    """Whether each placeholder of `shape` appears once (a document may hold the
    placeholders' text itself): then `render` puts the names back exactly where `cut` took
    them out."""
    if shape.text.count(shape.name_field + _NAME_PH) != 1:
        return False
    return shape.namespace_field is None or (
        shape.text.count(shape.namespace_field + _NAMESPACE_PH) == 1)


NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


def is_name(text: str) -> bool:
    """Whether `text` matches `NAME_PATTERN`, in three string operations."""
    return (0 < len(text) <= 63 and not text.strip(NAME_CHARS) and text[0] != "-"
            and text[-1] != "-")


def fits(resource: Any, kind: str, global_: bool) -> bool:
    """Whether `resource`, validated from a shape, has its placeholders where they belong:
    the kind of the key, the name placeholder as its name, the namespace's as its namespace."""
    md = resource.metadata
    return bool(resource.kind == kind and md.name == NAME_PLACEHOLDER
            and md.namespace == (None if global_ else NAMESPACE_PLACEHOLDER))


def renamed(resource: R, name: str, namespace: str | None) -> R:
    """`resource` (of a shape, or resolved from one) under another name and namespace.

    Copied field by field, without validating again: the shape's resource was validated, and
    `cut` checked the names against the only rule that reads them.
    """
    md: Any = resource.metadata  # type: ignore[attr-defined]
    new: Any = _new(Metadata)
    _set(new, "name", name)
    _set(new, "namespace", namespace)
    _set(new, "labels", md.labels)
    _set(new, "annotations", md.annotations)
    _set(new, "generation", md.generation)
    _set(new, "revision", md.revision)
    _set(new, "sandbox", md.sandbox)
    copied: Any = _new(type(resource))
    _set(copied, "apiVersion", resource.apiVersion)  # type: ignore[attr-defined]
    _set(copied, "kind", resource.kind)  # type: ignore[attr-defined]
    _set(copied, "metadata", new)
    _set(copied, "spec", resource.spec)  # type: ignore[attr-defined]
    return copied  # type: ignore[no-any-return]


_new = object.__new__
_set = object.__setattr__
# The copies above name every field: a field added to these models must be added there.
assert tuple(Metadata.__dataclass_fields__) == (
    "name", "namespace", "labels", "annotations", "generation", "revision", "sandbox")
assert all(tuple(cls.__dataclass_fields__) == ("apiVersion", "kind", "metadata", "spec")
           for cls in (Namespace, Connection, Webhook))
