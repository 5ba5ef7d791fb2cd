"""The documentation stays current: docs/resources.md is what docs/gen_resources.py renders from
the resource schema, and the doc pages link to files that exist."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from providers.schema_export import resource_json_schema

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Written by a command rather than by hand (`make bench`): may be absent from a fresh checkout.
GENERATED = {ROOT / "bench" / "REPORT.md"}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_resources", DOCS / "gen_resources.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_resources_md_is_the_generators_output() -> None:
    committed = (DOCS / "resources.md").read_text(encoding="utf-8")
    assert committed == generator().render(), (
        "docs/resources.md is out of date: run `python docs/gen_resources.py`")


def test_resources_md_covers_every_field_of_the_schema() -> None:
    """Every property of every definition shows up (guards the generator's walk)."""
    text = (DOCS / "resources.md").read_text(encoding="utf-8")
    fields = set(re.findall(r"^\| `([^`]+)`", text, re.MULTILINE))
    leaf_names = {f.rsplit(".", 1)[-1].removesuffix("[]") for f in fields}
    for name, definition in resource_json_schema()["$defs"].items():
        for prop in definition.get("properties", {}):
            assert prop in leaf_names, f"{name}.{prop} is missing from docs/resources.md"


def test_relative_links_in_the_docs_point_at_files() -> None:
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks
        text = re.sub(r"`[^`\n]*`", "", text)  # code spans
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (page.parent / target).resolve()
            assert path.exists() or path in GENERATED, f"{page.name} links to missing {target}"
