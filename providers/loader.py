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

from providers import sandbox
from providers.errors import DocumentError, DocumentErrors, Location, ReferenceError_
from providers.references import has_refs, refs_in
from providers.resources import KINDS, AnyResource, Resource, ResourceKey, key_of, secret_fields

RESOURCE_ADAPTER: TypeAdapter[AnyResource] = TypeAdapter(Resource)
SUFFIXES = (".yaml", ".yml", ".json")

# Values a text may expand to, aliases counted as often as they are used: `a: &a [x, x]`,
# `b: &b [*a, *a]`, ... ("billion laughs") is a few lines that expand to billions.
MAX_EXPANDED_VALUES = 1_000_000


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, refusing duplicate keys: which one wins should not be left to order."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class names that error
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads_json(text: str | bytes) -> Any:
    """`json.loads`, refusing duplicate keys, NaN and Infinity (not JSON, whatever Python says)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_not_json)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _expanded_size(doc: object, limit: int) -> int:
    """How many values `doc` holds with shared (aliased) parts counted each time they appear."""
    sizes: dict[int, int] = {}

    def size(node: object) -> int:
        if isinstance(node, dict | list):
            known = sizes.get(id(node))
            if known is not None:
                return known
            sizes[id(node)] = limit + 1  # a cycle (`&a [*a]`) counts as too big
            children = node.items() if isinstance(node, dict) else enumerate(node)
            total = 1 + sum(size(v) for _, v in children)
            sizes[id(node)] = total = min(total, limit + 1)
            return total
        return 1

    return size(doc)


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
    json_text = source.endswith(".json")
    try:
        if json_text:
            docs = _unwrap([loads_json(text)])
        else:
            docs = _unwrap([d for d in yaml.load_all(text, Loader=_Loader) if d is not None])
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
    except (ValueError, RecursionError) as exc:
        # Duplicate keys, NaN, a number of thousands of digits, nesting beyond Python's stack.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        if "integer string conversion" in reason:
            reason = "a number with more digits than any field takes"
        error = DocumentError(source, "", f"invalid {'JSON' if json_text else 'YAML'}: {reason}")
        raise DocumentErrors([error]) from None
    if _expanded_size(docs, MAX_EXPANDED_VALUES) > MAX_EXPANDED_VALUES:
        raise DocumentErrors([DocumentError(
            source, "", f"expands to more than {MAX_EXPANDED_VALUES:,} values (YAML aliases "
            "used over and over?)")])  # fmt: skip
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

    Beyond the schema: reference syntax and placement (`providers/sandbox.py`), and duplicates
    (two documents with the same kind, namespace and name: which one wins would otherwise
    depend on their order).
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
        misplaced = sandbox.problems(doc, resource)  # type: ignore[arg-type]
        if misplaced:
            errors.extend(DocumentError(location, p.path, p.reason) for p in misplaced)
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
