"""Parse resource documents (YAML multi-document or JSON) into validated resources.

Errors never stop at the first one: every invalid document is reported with its file, its index
in the file, the field path and the reason, so an operator fixes everything in one go. YAML text
also gives each document's resource and the line of every field (`Location.lines`), and
`DocumentError.readable()` puts them together; the reasons are in plain words
(`providers/messages.py`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import TypeAdapter, ValidationError

from providers import messages, sandbox
from providers.errors import DocumentError, DocumentErrors, Location, ReferenceError_
from providers.references import has_refs, refs_in
from providers.resources import KINDS, AnyResource, Resource, ResourceKey, key_of, secret_fields

RESOURCE_ADAPTER: TypeAdapter[AnyResource] = TypeAdapter(Resource)
SUFFIXES = (".yaml", ".yml", ".json")
EMPTY_KEY = " (an empty key)"  # the path step of a key written as ''


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
                # `in` alone would accept a set key (sets look themselves up as frozensets).
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base class names that error
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
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
            if step == "" and step in node:
                # `metadata.` alone reads like a slip: say what follows the dot.
                parts.append(("." if parts else "") + EMPTY_KEY)
                break
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
    # Compared one by one: a tag field may hold a list, which no set takes.
    return any(step == node.get(k) for k in ("scheme", "module", "type", "kind"))


def _surrogates(doc: object, path: str = "") -> Iterator[str]:
    """Field paths of the keys and values holding text that is not Unicode (a lone surrogate,
    which a JSON `\\ud800` escape can produce): no encoder takes them, so stop them first."""
    if isinstance(doc, str):
        if not doc.isascii() and not _encodable(doc):
            yield path or EMPTY_KEY
    elif isinstance(doc, Mapping):
        for key, value in doc.items():
            child = f"{path}.{key}" if path else str(key)
            if key == "":
                child = (f"{path}." if path else "") + EMPTY_KEY
            if isinstance(key, str) and not key.isascii() and not _encodable(key):
                yield child
            else:
                yield from _surrogates(value, child)
    elif isinstance(doc, list | tuple):
        for i, value in enumerate(doc):
            yield from _surrogates(value, f"{path}[{i}]")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# A validator's message at the document's root that names the field to change.
_NAMED_FIELD = re.compile(r"\b(?:set|remove) (metadata\.[a-z_]+|spec\.[a-z_.]+)")


def _enclosing(doc: object, loc: Iterable[int | str]) -> Mapping[str, Any] | None:
    """The mapping that holds the last step of a pydantic location (tags skipped as in
    `field_path`), or None when the document does not have it."""
    steps = list(loc)
    node: Any = doc
    parent: Mapping[str, Any] | None = None
    for step in steps:
        if isinstance(node, Mapping):
            if step in node:
                parent, node = node, node[step]
            elif (isinstance(step, str) and step[:1].isupper()) or _is_tag(node, step):
                continue
            else:
                return node
        elif isinstance(node, list | tuple) and isinstance(step, int) and step < len(node):
            parent, node = None, node[step]
        elif isinstance(step, str) and "[" in step:
            continue
        else:
            return None
    return parent


def _reason(err: Mapping[str, Any], doc: object) -> str:
    siblings: list[str] = []
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        parent = _enclosing(doc, err["loc"])
        unknown = err["loc"][-1] if err["loc"] else None
        siblings = [k for k in parent or () if isinstance(k, str) and k != unknown]
    return messages.reason(err, siblings)


def validate_document(doc: object, location: Location) -> AnyResource:
    """Validate one parsed document; raise DocumentErrors naming every problem in it."""
    if not isinstance(doc, Mapping):
        raise DocumentErrors([DocumentError(
            location, "", f"expected a mapping (`key: value` lines), got {messages.kind_of(doc)}")])
    kind = doc.get("kind")
    if kind not in KINDS:
        reason = "missing" if kind is None else f"unknown kind {kind!r}"
        raise DocumentErrors([DocumentError(
            location, "kind", f"{reason}; expected one of {', '.join(KINDS)}"
            + messages.suggestion(kind, KINDS))])
    broken = list(_surrogates(doc))
    if broken:
        raise DocumentErrors(DocumentError(location, path, "not valid Unicode text (a lone "
                                           "surrogate, from a \\uD800-\\uDFFF escape?)")
                             for path in broken)
    try:
        return RESOURCE_ADAPTER.validate_python(doc)
    except ValidationError as exc:
        found = [(_named(field_path(doc, e["loc"]), e), e) for e in exc.errors()]
        # A list whose only item failed also reports "too short": noise next to the real error.
        paths = [p for p, _ in found]
        raise DocumentErrors(
            DocumentError(location, path, _reason(e, doc)) for path, e in found
            if not (e["type"] == "too_short" and any(q.startswith(path + "[") for q in paths))
        ) from None


def _named(path: str, err: Mapping[str, Any]) -> str:
    if path:
        return path
    named = _NAMED_FIELD.search(str(err.get("msg", "")))
    return named.group(1) if named else path


# PyYAML's wording of the usual slips, and what a person would check first.
_YAML_HINTS = {
    "could not find expected ':'": "a line that is neither `key: value` nor `- item`",
    "mapping values are not allowed here": "a ':' where a value was expected; quote a value "
    "that holds ': '",
    "found character '\\t' that cannot start any token": "a tab: YAML indents with spaces",
    "did not find expected key": "a line indented differently from the keys around it",
    "did not find expected '-' indicator": "a list item indented differently from the others",
    "found undefined alias": "`*name` with no `&name` before it",
    "found unhashable key": "a list or mapping used as a key",
}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = str(getattr(exc, "problem", None) or exc)
    if problem.startswith("found unacceptable character") or "special characters are not" in (
            problem):
        return f"{problem} (a binary file?)"
    for known, hint in _YAML_HINTS.items():
        if problem.startswith(known):
            return f"{problem} ({hint})"
    return problem


def parse_text(text: str, source: str) -> list[tuple[Location, object]]:
    """Split a YAML (multi-document) or JSON text into (location, document) pairs.

    A JSON array or a `{"resources": [...]}` object is accepted as a list of documents. YAML
    locations carry the document's line, resource and field lines.
    """
    json_text = source.endswith(".json")
    docs: list[tuple[object, yaml.Node | None]] = []
    try:
        if json_text:
            docs = [(loads_json(text), None)]
        else:
            _yaml_documents(text, docs)
        docs = _unwrap(docs)
    except json.JSONDecodeError as exc:
        raise DocumentErrors([DocumentError(
            Location(source, line=exc.lineno), "", f"invalid JSON: {exc.msg}")]) from None
    except yaml.YAMLError as exc:
        where = Location(source, line=_yaml_line(exc), number=len(docs) + 1)
        raise DocumentErrors([DocumentError(where, "", f"invalid YAML: {_yaml_problem(exc)}")]
                             ) from None
    except (ValueError, RecursionError) as exc:
        # Duplicate keys, NaN, a number of thousands of digits, nesting beyond Python's stack.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        if "integer string conversion" in reason:
            reason = "a number with more digits than any field takes"
        error = DocumentError(source, "", f"invalid {'JSON' if json_text else 'YAML'}: {reason}")
        raise DocumentErrors([error]) from None
    if _expanded_size([d for d, _ in docs], MAX_EXPANDED_VALUES) > MAX_EXPANDED_VALUES:
        raise DocumentErrors([DocumentError(
            source, "", f"expands to more than {MAX_EXPANDED_VALUES:,} values (YAML aliases "
            "used over and over?)")])  # fmt: skip
    return [(_location(source, i, d, node), d) for i, (d, node) in enumerate(docs)]


def _yaml_documents(text: str, out: list[tuple[object, yaml.Node | None]]) -> None:
    """Append each document of `text` with its node to `out`: what was read before an error
    says which document the error is in."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            doc = loader.construct_document(node)
            if doc is not None:
                out.append((doc, node))
    finally:
        loader.dispose()


def _yaml_line(exc: yaml.YAMLError) -> int | None:
    """The line to look at: where PyYAML noticed, except for a key without its ':', noticed
    only on a later line, where the key itself is the line."""
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context_mark", None)
    if str(getattr(exc, "problem", "")).startswith("could not find expected ':'") and context:
        mark = context
    return mark.line + 1 if mark is not None else None


def _location(source: str, index: int, doc: object, node: yaml.Node | None) -> Location:
    if node is None:
        return Location(source, index, resource=_resource_of(doc))
    return Location(source, index, line=node.start_mark.line + 1, resource=_resource_of(doc),
                    lines=_field_lines(node))


def _resource_of(doc: object) -> str:
    """`Webhook acme/github-push`, `Namespace acme`: what the document says it is."""
    if not isinstance(doc, Mapping):
        return ""
    kind, meta = doc.get("kind"), doc.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(kind, str) or not isinstance(name, str):
        return ""
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    return f"{kind} {ns}/{name}" if isinstance(ns, str) and ns else f"{kind} {name}"


def _field_lines(root: yaml.Node) -> dict[str, int]:
    """Field path (as `field_path` writes it) -> one-based line, for every key and list item.

    An aliased node is walked once: `*a` used a thousand times is one entry, not a thousand.
    """
    lines: dict[str, int] = {}
    seen: set[int] = set()
    stack: list[tuple[str, yaml.Node]] = [("", root)]
    while stack:
        path, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                child = f"{path}.{key_node.value}" if path else str(key_node.value)
                lines.setdefault(child, key_node.start_mark.line + 1)
                stack.append((child, value_node))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                child = f"{path}[{i}]"
                lines.setdefault(child, item.start_mark.line + 1)
                stack.append((child, item))
    return lines


def _unwrap(docs: list[tuple[object, yaml.Node | None]]) -> list[tuple[object, yaml.Node | None]]:
    if len(docs) == 1:
        only, node = docs[0]
        if isinstance(only, list):
            items = node.value if isinstance(node, yaml.SequenceNode) else [None] * len(only)
            return list(zip(only, items, strict=True))
        if isinstance(only, dict) and "kind" not in only:
            inner = only.get("resources")
            if isinstance(inner, list):
                inner_node = _value_node(node, "resources")
                items = (inner_node.value if isinstance(inner_node, yaml.SequenceNode)
                         else [None] * len(inner))
                return list(zip(inner, items, strict=True))
    return docs


def _value_node(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                found: yaml.Node = value_node
                return found
    return None


def iter_files(path: Path) -> Iterator[Path]:
    """The config files of a path: the file itself, or *.yaml/*.yml/*.json below a directory.

    Hidden entries are skipped: a Kubernetes ConfigMap volume keeps its generations in `..*`
    directories, and the caller reads the `..data` generation instead.
    """
    if path.is_file() or not path.is_dir():
        yield path  # a missing path: reading it says so, with its name
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
                                        f"{key} already defined at {seen[key].heading()}"))
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
        raise DocumentErrors(errors, out)
    return out


def plaintext_secrets(
    resources: Iterable[tuple[Location, AnyResource]], remedy: str,
    docs: Iterable[object] | None = None,
) -> list[DocumentError]:
    """Secret-bearing fields holding a literal instead of a reference (values never shown).

    With the documents as written (in the order of `resources`), a secret written as one
    string is named `secret`, not `secret[0]`, the item the schema turned it into.
    """
    written = list(docs) if docs is not None else None
    return [
        DocumentError(location, _as_written(path, written[i] if written else None),
                      f"plaintext secret: use a reference such as {{$vault:PATH#FIELD}}{remedy}")
        for i, (location, resource) in enumerate(resources)
        for path, value in secret_fields(resource).items()
        if not has_refs(value)
    ]


def private_destinations(resources: Iterable[tuple[Location, AnyResource]]
                         ) -> list[DocumentError]:
    """Connections whose literal URL is a loopback, private or link-local address (or
    `localhost`) without `allow_private: true`: valid config, but the gateways' SSRF guard
    refuses every delivery there. Meant as warnings: a name that resolves to such an address
    only shows at delivery time."""
    out = []
    for location, resource in resources:
        spec = getattr(resource, "spec", None)
        url = getattr(spec, "url", None)
        if getattr(spec, "allow_private", None) is not False or not isinstance(url, str):
            continue
        if has_refs(url):
            continue  # its value is the gateway's to know
        try:
            what = _private_host(urlsplit(url).hostname or "")
        except ValueError:
            continue  # not a URL: the schema says so
        if what:
            out.append(DocumentError(location, "spec.url", (
                f"{what}: gateways refuse to deliver there (SSRF guard), so every delivery "
                "through this connection would fail; set allow_private: true (admin tokens "
                "only) if that is really where it should go")))
    return out


def _private_host(host: str) -> str:
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is this machine (loopback)"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ""
    for attribute, what in (("is_loopback", "a loopback"), ("is_link_local", "a link-local"),
                            ("is_unspecified", "an unspecified"),
                            ("is_private", "a private"), ("is_reserved", "a reserved")):
        if getattr(address, attribute):
            return f"{host} is {what} address"
    return "" if address.is_global else f"{host} is not a public address"


def _as_written(path: str, doc: object) -> str:
    if not path.endswith("[0]") or not isinstance(doc, Mapping):
        return path
    node: Any = doc
    for step in path[:-3].split("."):
        node = node.get(step) if isinstance(node, Mapping) else None
    return path[:-3] if isinstance(node, str) else path


def read_texts(paths: Iterable[Path | str]) -> tuple[list[tuple[str, str]], list[DocumentError]]:
    """(source, text) of every config file of the given files and directories, each file once
    however often it is named, and an error for each one that cannot be read as UTF-8 text:
    one unreadable file does not stop the others from being checked."""
    texts: list[tuple[str, str]] = []
    errors: list[DocumentError] = []
    seen: set[Path] = set()
    for p in paths:
        try:
            files = list(iter_files(Path(p)))
        except OSError as exc:
            errors.append(DocumentError(str(p), "", _os_reason(exc)))
            continue
        for f in files:
            real = f.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                raw = f.read_bytes()
            except OSError as exc:
                errors.append(DocumentError(str(f), "", _os_reason(exc)))
                continue
            try:
                texts.append((str(f), raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                line = raw.count(b"\n", 0, exc.start) + 1
                errors.append(DocumentError(Location(str(f), line=line), "", (
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
                    "a binary file, or text in another encoding?")))
    return texts, errors


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "cannot read: no such file or directory"
    if isinstance(exc, PermissionError):
        return "cannot read: permission denied"
    return f"cannot read: {exc.strerror or exc}"


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
    texts, errors = read_texts(paths)
    try:
        valid = load_documents(texts)
    except DocumentErrors as exc:
        errors += exc.errors
    if errors:
        raise DocumentErrors(errors)
    return valid
