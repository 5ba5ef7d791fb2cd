"""Parse resource documents (YAML multi-document or JSON) into validated resources.

Errors never stop at the first one: every invalid document is reported with its file, its index
in the file, the field path and the reason, so an operator fixes everything in one go.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from providers.errors import DocumentError, DocumentErrors, Location, ReferenceError_
from providers.references import has_refs, refs_in
from providers.resources import KINDS, AnyResource, Resource, ResourceKey, key_of, secret_fields

RESOURCE_ADAPTER: TypeAdapter[AnyResource] = TypeAdapter(Resource)
SUFFIXES = (".yaml", ".yml", ".json")

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def field_path(doc: object, loc: Iterable[int | str]) -> str:
    """Turn a pydantic error location into the path of the field in the document.

    pydantic puts the tags of discriminated unions ("Webhook", "github", ...) into `loc`; they are
    not fields, so walk the document and keep only the steps that exist in it.
    """
    parts: list[str] = []
    node: Any = doc
    for step in loc:
        if isinstance(node, Mapping):
            if step in node:
                parts.append(f".{step}" if parts else str(step))
                node = node[step]
            elif (isinstance(step, str) and step[:1].isupper()) or _is_tag(node, step):
                continue
            else:
                parts.append(f".{step}" if parts else str(step))
                node = None
        elif isinstance(node, list | tuple) and isinstance(step, int):
            parts.append(f"[{step}]")
            node = node[step] if step < len(node) else None
        elif isinstance(step, str) and "[" in step:
            continue  # a validator's name such as "function-after[...]"
        else:
            parts.append(f".{step}" if parts else str(step))
            node = None
    return "".join(parts)


def _is_tag(node: Mapping[str, Any], step: object) -> bool:
    return step in {node.get("scheme"), node.get("module"), node.get("type"), node.get("kind")}


def _reason(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"])
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown field"
    if err["type"] == "union_tag_invalid":
        expected = err.get("ctx", {}).get("expected_tags", "")
        tag = err.get("ctx", {}).get("discriminator", "")
        return f"unknown {tag.strip(chr(39))} {err['ctx'].get('tag')!r}; expected one of {expected}"
    if err["type"] == "string_pattern_mismatch" and "a-z0-9" in str(err.get("ctx", {})):
        return "invalid name: use lower-case letters, digits and '-', 1-63 characters"
    return msg.removeprefix("Value error, ")


def validate_document(doc: object, location: Location) -> AnyResource:
    """Validate one parsed document; raise DocumentErrors naming every problem in it."""
    if not isinstance(doc, Mapping):
        raise DocumentErrors(
            [DocumentError(location, "", f"expected a mapping, got {type(doc).__name__}")]
        )
    kind = doc.get("kind")
    if kind not in KINDS:
        reason = "missing" if kind is None else f"unknown kind {kind!r}"
        raise DocumentErrors(
            [DocumentError(location, "kind", f"{reason}; expected one of {', '.join(KINDS)}")]
        )
    try:
        return RESOURCE_ADAPTER.validate_python(doc)
    except ValidationError as exc:
        found = [(field_path(doc, e["loc"]), e) for e in exc.errors()]
        # A list whose only item failed also reports "too short": noise next to the real error.
        paths = [p for p, _ in found]
        raise DocumentErrors(
            DocumentError(location, path, _reason(e)) for path, e in found
            if not (e["type"] == "too_short" and any(q.startswith(path + "[") for q in paths))
        ) from None


def parse_text(text: str, source: str) -> list[tuple[Location, object]]:
    """Split a YAML (multi-document) or JSON text into (location, document) pairs.

    A JSON array or a `{"resources": [...]}` object is accepted as a list of documents.
    """
    try:
        if source.endswith(".json"):
            docs = _unwrap([json.loads(text)])
        else:
            docs = _unwrap([d for d in yaml.load_all(text, Loader=_SafeLoader) if d is not None])
    except json.JSONDecodeError as exc:
        raise DocumentErrors(
            [DocumentError(source, "", f"invalid JSON at line {exc.lineno}: {exc.msg}")]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        error = DocumentError(source, "", f"invalid YAML{where}: {problem}")
        raise DocumentErrors([error]) from None
    return [(Location(source, i), d) for i, d in enumerate(docs)]


def _unwrap(docs: list[object]) -> list[object]:
    if len(docs) == 1:
        only = docs[0]
        if isinstance(only, list):
            return only
        if isinstance(only, dict) and "kind" not in only:
            inner = only.get("resources")
            if isinstance(inner, list):
                return inner
    return docs


def iter_files(path: Path) -> Iterator[Path]:
    """The config files of a path: the file itself, or *.yaml/*.yml/*.json below a directory.

    Hidden entries are skipped: a Kubernetes ConfigMap volume keeps its generations in `..*`
    directories, and the caller reads the `..data` generation instead.
    """
    if path.is_file():
        yield path
        return
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            yield from iter_files(child)
        elif child.suffix in SUFFIXES:
            yield child


def validate_documents(
    items: Iterable[tuple[Location, object]],
) -> list[tuple[Location, AnyResource]]:
    """Validate parsed documents; raise DocumentErrors listing every problem of every one.

    Beyond the schema: reference syntax, and duplicates (two documents with the same kind,
    namespace and name: which one wins would otherwise depend on their order).
    """
    errors: list[DocumentError] = []
    out: list[tuple[Location, AnyResource]] = []
    seen: dict[ResourceKey, Location] = {}
    for location, doc in items:
        try:
            resource = validate_document(doc, location)
        except DocumentErrors as exc:
            errors.extend(exc.errors)
            continue
        key = key_of(resource)
        if key in seen:
            errors.append(DocumentError(location, "metadata.name",
                                        f"{key} already defined at {seen[key]}"))
            continue
        seen[key] = location
        try:
            refs_in(doc)
        except ReferenceError_ as exc:
            path, _, reason = str(exc).partition(": ")
            errors.append(DocumentError(location, path, reason))
            continue
        out.append((location, resource))
    if errors:
        raise DocumentErrors(errors)
    return out


def plaintext_secrets(
    resources: Iterable[tuple[Location, AnyResource]], remedy: str
) -> list[DocumentError]:
    """Secret-bearing fields holding a literal instead of a reference (values never shown)."""
    return [
        DocumentError(location, path,
                      f"plaintext secret: use a reference such as {{$vault:PATH#FIELD}}{remedy}")
        for location, resource in resources
        for path, value in secret_fields(resource).items()
        if not has_refs(value)
    ]


def load_documents(
    texts: Iterable[tuple[str, str]],
) -> list[tuple[Location, AnyResource]]:
    """Validate documents from (source, text) pairs; raise DocumentErrors listing all problems."""
    errors: list[DocumentError] = []
    parsed: list[tuple[Location, object]] = []
    for source, text in texts:
        try:
            parsed.extend(parse_text(text, source))
        except DocumentErrors as exc:
            errors.extend(exc.errors)
    try:
        valid = validate_documents(parsed)
    except DocumentErrors as exc:
        errors.extend(exc.errors)
    if errors:
        raise DocumentErrors(errors)
    return valid


def load_paths(paths: Iterable[Path | str]) -> list[tuple[Location, AnyResource]]:
    """Load every config file of the given files and directories."""
    texts: list[tuple[str, str]] = []
    for p in paths:
        for f in iter_files(Path(p)):
            texts.append((str(f), f.read_text(encoding="utf-8")))
    return load_documents(texts)
