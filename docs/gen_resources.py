"""Render docs/resources.md from the resource schema: every kind, field, type, default, description.

    python docs/gen_resources.py           # rewrite docs/resources.md
    python docs/gen_resources.py --check   # exit 1 if docs/resources.md is out of date

The source is `providers.schema_export.resource_json_schema()` (the JSON Schema pydantic derives
from the models), so the page cannot drift from what the control plane and gateways accept;
tests/unit/test_docs.py fails when the committed page differs from this script's output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from providers.schema_export import resource_json_schema  # noqa: E402

OUTPUT = ROOT / "docs" / "resources.md"
KINDS = ("Namespace", "Connection", "Webhook")
# Rendered once in their own section and referred to from every kind.
SHARED = {"Metadata": "metadata"}
# What the schema cannot say (model validators, routing); everything else comes from the schema.
KIND_NOTES = {
    "Namespace": "One per tenant. Global: `metadata.namespace` must be left out. Only the admin "
    "token can write Namespaces.",
    "Connection": "A destination that chain steps name. With `metadata.namespace` it belongs to "
    "that namespace; without it, it is global and usable from every namespace (namespace "
    "tokens can read global connections but not write them). `spec.type` selects the variant. "
    "Secret-bearing, so references only: `spec.password` (redis and the destination systems), "
    "`spec.token` (nats), `spec.access_key_id` and `spec.secret_access_key` (s3, sqs), every "
    "`spec.headers` value whose header name contains authorization, token, secret, key, cookie "
    "or password (http, websocket), and `spec.url` of a destination system when it holds a "
    "password (`amqp://user:PASSWORD@host/`). The delivery modules that use each type are in "
    "[modules.md](modules.md).",
    "Webhook": "Served at `POST /webhook/{namespace}/{name}`. `metadata.namespace` is required. "
    "`spec.verify.scheme` and each step's `module` select their variants.",
}

Schema = Mapping[str, Any]


@dataclass
class Row:
    path: str
    type: str
    default: str
    description: str


@dataclass
class Table:
    title: str
    intro: str
    rows: list[Row] = field(default_factory=list)


class Renderer:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.defs: Mapping[str, Schema] = schema["$defs"]

    # -- schema helpers ---------------------------------------------------------------------

    def resolve(self, node: Schema) -> Schema:
        ref = node.get("$ref")
        if ref is None:
            return node
        return self.defs[ref.removeprefix("#/$defs/")]

    @staticmethod
    def ref_name(node: Schema) -> str | None:
        ref = node.get("$ref")
        return ref.removeprefix("#/$defs/") if isinstance(ref, str) else None

    @staticmethod
    def nullable(node: Schema) -> tuple[Schema, bool]:
        """(the non-null alternative, True) for `anyOf: [X, null]`; else (node, False)."""
        options = node.get("anyOf")
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            inner = next(o for o in options if o != {"type": "null"})
            return inner, True
        return node, False

    def is_object(self, node: Schema) -> bool:
        target = self.resolve(node)
        return target.get("type") == "object" and "properties" in target

    def union(self, node: Schema) -> tuple[str, dict[str, str]] | None:
        """(discriminator property, {value: definition name}) of a discriminated union."""
        disc = node.get("discriminator")
        if not isinstance(disc, Mapping) or "oneOf" not in node:
            return None
        mapping = {k: v.removeprefix("#/$defs/") for k, v in disc["mapping"].items()}
        return disc["propertyName"], mapping

    # -- cells ------------------------------------------------------------------------------

    def type_of(self, node: Schema) -> str:
        node, nullable = self.nullable(node)
        if node.get("x-whplane-secret"):
            # The model also takes a single string (providers.model.Secrets); the schema, in
            # validation mode, only shows the list it is turned into.
            return "**secret**: a reference, or a list of references (all accepted, for rotation)"
        text = self._type(node)
        return f"null or {text}" if nullable else text

    def _type(self, node: Schema) -> str:
        if "const" in node:
            return f"`{json.dumps(node['const'])}`"
        if "enum" in node:
            return " | ".join(f"`{json.dumps(v)}`" for v in node["enum"])
        name = self.ref_name(node)
        if name is not None:
            return "object" if name not in SHARED else f"[{name}](#{SHARED[name]})"
        kind = node.get("type")
        if kind == "array":
            items = node.get("items", {})
            union = self.union(items)
            inner = "object" if union else self._type(items)
            text = f"list of {inner}"
            if "minItems" in node:
                text += f", at least {node['minItems']}"
            return text
        if kind == "object":
            extra = node.get("additionalProperties")
            if isinstance(extra, Mapping):
                return f"map of string to {self._type(extra)}"
            return "object"
        if kind in ("string", "integer", "number", "boolean"):
            refs = " (takes references)" if node.get("x-whplane-references") else ""
            return f"{kind}{self._bounds(node)}{refs}"
        if self.union(node):
            return "object"
        raise ValueError(f"cannot render the type of {node!r}")

    @staticmethod
    def _bounds(node: Schema) -> str:
        parts = []
        for key, sign in (("exclusiveMinimum", ">"), ("minimum", "≥"),
                          ("exclusiveMaximum", "<"), ("maximum", "≤")):  # fmt: skip
            if key in node:
                parts.append(f"{sign} {node[key]}")
        if "minLength" in node:
            parts.append(f"at least {node['minLength']} character(s)")
        if "pattern" in node:
            parts.append(f"matching `{node['pattern']}`")
        return ", " + ", ".join(parts) if parts else ""

    @staticmethod
    def default_of(node: Schema, required: bool) -> str:
        if required:
            return "required"
        if "default" in node:
            return f"`{json.dumps(node['default'], ensure_ascii=False)}`"
        return ""

    @staticmethod
    def description_of(node: Schema, target: Schema | None = None) -> str:
        for source in (node, target or {}):
            text = source.get("description")
            if text:
                return " ".join(str(text).split())
        return ""

    # -- walking ----------------------------------------------------------------------------

    @staticmethod
    def ordered(obj: Schema) -> list[str]:
        """Discriminators (constants) first, then required fields, then optional ones."""
        props: Mapping[str, Schema] = obj["properties"]
        required = set(obj.get("required", ()))
        return sorted(props, key=lambda k: ("const" not in props[k], k not in required, k))

    def rows(self, obj: Schema, prefix: str, subtables: list[Table]) -> Iterator[Row]:
        required = set(obj.get("required", ()))
        for name in self.ordered(obj):
            node = obj["properties"][name]
            path = f"{prefix}{name}"
            inner, _ = self.nullable(node)
            target = self.resolve(inner)
            union = self.union(inner)
            items = inner.get("items") if inner.get("type") == "array" else None
            item_union = self.union(items) if isinstance(items, Mapping) else None
            yield Row(path, self.type_of(node), self.default_of(node, name in required),
                      self.description_of(node, target))  # fmt: skip
            if self.ref_name(inner) in SHARED:
                continue
            if union is not None:
                self.variants(path, union, subtables)
            elif item_union is not None:
                self.variants(f"{path}[]", item_union, subtables)
            elif self.is_object(inner):
                yield from self.rows(target, f"{path}.", subtables)

    def variants(self, path: str, union: tuple[str, dict[str, str]],
                 subtables: list[Table]) -> None:
        prop, mapping = union
        for value, name in mapping.items():
            table = Table(f"`{path}` with `{prop}: {value}`", self.description_of(self.defs[name]))
            nested: list[Table] = []
            table.rows.extend(self.rows(self.defs[name], f"{path}.", nested))
            subtables.append(table)
            subtables.extend(nested)

    # -- the page ---------------------------------------------------------------------------

    def render(self) -> str:
        out = [
            "# Resource reference (`whplane/v1`)",
            "",
            "<!-- Generated by docs/gen_resources.py from "
            "providers.schema_export.resource_json_schema(); do not edit by hand. -->",
            "",
            "Every resource is a YAML (or JSON) document with `apiVersion: whplane/v1`, a "
            "`kind`, `metadata` and `spec`. Unknown fields are errors, at every depth. "
            "Strings may hold references (`{$VAR}`, `{$vault:PATH#FIELD}`, see "
            "[references-and-vault.md](references-and-vault.md)); fields marked **secret** must "
            "be references unless the control plane runs with `--allow-plaintext-secrets`.",
            "",
            "A field whose parent is optional exists only when the parent is given; a default "
            "applies when the field is left out. `A | B` lists the accepted values. Where a "
            "field selects a variant (`spec.type`, `spec.verify.scheme`, `module`), each "
            "variant has its own table below.",
            "",
            "Kinds: " + ", ".join(f"[{k}](#{k.lower()})" for k in KINDS)
            + ". Shared: [metadata](#metadata).",
            "",
        ]
        for kind in KINDS:
            out += self.kind_section(kind)
        out += self.shared_sections()
        return "\n".join(out).rstrip() + "\n"

    def kind_section(self, kind: str) -> list[str]:
        subtables: list[Table] = []
        main = Table(kind, KIND_NOTES.get(kind, "") or self.description_of(self.defs[kind]))
        main.rows.extend(self.rows(self.defs[kind], "", subtables))
        lines = [f"## {kind}", ""]
        if main.intro:
            lines += [main.intro, ""]
        lines += self.table(main.rows)
        for sub in subtables:
            lines += [f"### {sub.title}", ""]
            if sub.intro:
                lines += [sub.intro, ""]
            lines += self.table(sub.rows)
        return lines

    def shared_sections(self) -> list[str]:
        lines: list[str] = []
        for name, anchor in SHARED.items():
            subtables: list[Table] = []
            rows = list(self.rows(self.defs[name], f"{anchor}.", subtables))
            lines += [f"## {anchor}", "",
                      f"`{anchor}` of every kind.", ""]  # fmt: skip
            lines += self.table(rows)
        return lines

    @staticmethod
    def table(rows: list[Row]) -> list[str]:
        def cell(text: str) -> str:
            return text.replace("|", "\\|")  # a literal | would end the table cell

        lines = ["| field | type | default | description |", "|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `{cell(r.path)}` | {cell(r.type)} | {cell(r.default)} | "
                         f"{cell(r.description)} |")
        return [*lines, ""]


def render() -> str:
    return Renderer(resource_json_schema()).render()


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUTPUT} is out of date: run python docs/gen_resources.py\n")
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {OUTPUT}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
