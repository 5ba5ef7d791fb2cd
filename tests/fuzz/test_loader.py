"""Fuzzing the loader: generated documents (mostly valid, some mutated) through
`validate_documents`, and generated YAML/JSON text through `load_documents`.

Properties:
- nothing but DocumentErrors ever comes out (no TypeError, RecursionError, ValueError...);
- every error names its source and document, and a field path that exists in the document
  (its last step may be the missing field), never an empty path for a mapping document;
- an error in a mutated document is about the mutated field, its parent or a sibling;
- unmutated generated documents are valid;
- a key written twice in one mapping is refused, naming that key.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from typing import Any

import yaml
from hypothesis import assume, given, note
from hypothesis import strategies as st

from providers.errors import DocumentError, DocumentErrors, Location
from providers.loader import load_documents, validate_documents
from tests.fuzz.budget import budget, count
from tests.fuzz.checks import path_exists, related
from tests.fuzz.strategies import (
    HUGE_NUMBERS,
    WEIRD_STRINGS,
    any_doc,
    deep,
    get,
    maybe_mutated,
    paths_of,
    render_path,
)

SOURCE = "fuzz.yaml"


def _key(doc: dict[str, Any]) -> tuple[Any, ...]:
    return (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])


documents = st.lists(any_doc(), min_size=1, max_size=4, unique_by=_key)


def check_errors(errors: list[DocumentError], docs: list[Any], source: str) -> None:
    assert errors, "DocumentErrors without any error"
    for e in errors:
        assert isinstance(e.reason, str) and e.reason, f"empty reason: {e}"
        assert e.location.source == source, f"error names the wrong source: {e}"
        if e.location.index is None:
            continue  # a text-level error (invalid YAML/JSON): no document to name
        i = e.location.index
        assert 0 <= i < len(docs), f"error names document {i} of {len(docs)}: {e}"
        doc = docs[i]
        if isinstance(doc, dict):
            assert e.path, f"error without a field path in a mapping document: {e}"
            assert path_exists(doc, e.path), f"error path {e.path!r} is not in the document: {e}"


@budget(ci=200)
@given(st.data())
def test_validate_documents_names_fields(data: st.DataObject) -> None:
    docs, mutations = data.draw(documents.flatmap(maybe_mutated))
    items = [(Location(SOURCE, i), d) for i, d in enumerate(docs)]
    with count("loader.validate_documents") as c:
        try:
            valid = validate_documents(items)
        except DocumentErrors as exc:
            c.outcome = "refused"
            errors = list(exc.errors)
            note(f"errors: {[str(e) for e in errors]}")
            check_errors(errors, docs, SOURCE)
            mutated = {i for i, _ in mutations}
            for e in errors:
                if "already defined" in e.reason:
                    continue  # a mutated name may now collide with another document
                assert e.location.index in mutated, f"error in an unmutated document: {e}"
            for i in mutated:
                mine = [e for e in errors if e.location.index == i]
                if not mine or not isinstance(docs[i], dict):
                    continue
                paths = [m.path for j, m in mutations if j == i]
                assert any(related(e.path, p) for e in mine for p in paths), (
                    f"no error of document {i} is about its mutation at "
                    f"{[render_path(p) for p in paths]}: {[str(e) for e in mine]}")
        else:
            c.outcome = "valid"
            assert len(valid) == len(docs)


# --- text -------------------------------------------------------------------------------------

def dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, ensure_ascii=False)
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


YAML_SNIPPETS = [
    "!!python/object/apply:os.system ['true']", "!!binary aGk=", "!!set {a, b}", "&a [1]",
    "*nope", "<<: {a: 1}", "? [a]\n: b", "---", "...", "%YAML 1.1\n---", "\t", "\ufeff",
    "{$GH_SECRET}", "'{$vault:acme/../globex/gh#s}'", "1" * 5000, ".nan", ".inf", "-.inf",
    "0o777", "2001-01-01", "~", "'\\ud800'", '"\\ud800"', '"\\x00"', "a: b: c", "- - - -",
    "[" * 200, "{a: " * 100,
]
JSON_SNIPPETS = [
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 5000, '"\\ud800"', '"\\udfff"',
    '"\\u0000"', "[" * 5000, '{"a":' * 5000, ",", "]", "}", '"', "\\", "null", "true",
    '"{$vault:acme/../globex/gh#secret}"', "\ufeff", "\x00", "//", "/*", "'",
]


@st.composite
def text_case(draw: st.DrawFn) -> tuple[str, str]:
    fmt = draw(st.sampled_from(["yaml", "json"]))
    docs = draw(documents)
    if draw(st.booleans()):
        docs, _ = draw(maybe_mutated(docs, 1))
    if fmt == "json":
        text = json.dumps(docs if len(docs) > 1 or draw(st.booleans()) else docs[0],
                          ensure_ascii=draw(st.booleans()))
    else:
        text = "---\n".join(dump(d, "yaml") for d in docs)
    op = draw(st.sampled_from(["none", "truncate", "insert", "snippet", "snippet", "replace"]))
    if op != "none" and text:
        at = draw(st.integers(0, len(text)))
        if op == "truncate":
            text = text[:at]
        elif op == "insert":
            text = text[:at] + draw(st.text(max_size=8)) + text[at:]
        else:
            snippet = draw(st.sampled_from(JSON_SNIPPETS if fmt == "json" else YAML_SNIPPETS))
            end = at + (draw(st.integers(0, 20)) if op == "replace" else 0)
            text = text[:at] + snippet + text[end:]
    return f"fuzz.{fmt}", text


@budget(ci=200)
@given(text_case())
def test_load_documents_text(case: tuple[str, str]) -> None:
    source, text = case
    with count("loader.load_documents") as c:
        try:
            load_documents([(source, text)])
            c.outcome = "valid"
        except DocumentErrors as exc:
            c.outcome = "refused"
            note(f"errors: {[str(e) for e in exc.errors]}")
            # The parsed documents, to check the paths against (a text error has no index).
            docs = _parsed(source, text)
            check_errors(list(exc.errors), docs, source)


def _parsed(source: str, text: str) -> list[Any]:
    from providers.loader import parse_text
    try:
        return [d for _, d in parse_text(text, source)]
    except DocumentErrors:
        return []


# --- duplicate keys -----------------------------------------------------------------------------

def json_with_duplicate(node: Any, target: tuple[Any, ...], key: str, value: Any) -> str:
    """JSON text of `node` where the mapping at `target` holds `key` a second time (first)."""
    if isinstance(node, dict):
        pairs = [(k, json_with_duplicate(v, target[1:], key, value)
                  if target and k == target[0] else json.dumps(v, ensure_ascii=False)) for k, v in node.items()]
        if not target:
            pairs.insert(0, (key, json.dumps(value, ensure_ascii=False)))
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{v}" for k, v in pairs) + "}"
    if isinstance(node, list):
        return "[" + ",".join(json_with_duplicate(v, target[1:], key, value)
                              if target and i == target[0] else json.dumps(v, ensure_ascii=False)
                              for i, v in enumerate(node)) + "]"
    return json.dumps(node, ensure_ascii=False)


@st.composite
def duplicate_key_case(draw: st.DrawFn) -> tuple[str, str, str, str]:
    doc = draw(any_doc())
    mappings = [p for p in paths_of(doc) if isinstance(get(doc, p), dict) and get(doc, p)]
    target = draw(st.sampled_from(mappings))
    key = draw(st.sampled_from(sorted(get(doc, target))))
    first = draw(st.sampled_from(["{$vault:acme/other#x}", 0, None, "plain", [1]]))
    assume(first != get(doc, target)[key])
    fmt = draw(st.sampled_from(["json", "yaml"]))  # JSON text is also YAML (flow style)
    if fmt == "yaml":
        try:  # ... unless it holds characters YAML does not allow (DEL, C1 controls)
            yaml.load(json.dumps(doc, ensure_ascii=False), Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            assume(False)
    text = json_with_duplicate(doc, target, key, first)
    where = render_path((*target, key))
    return f"fuzz.{fmt}", text, where, str(key)


@budget(ci=60)
@given(duplicate_key_case())
def test_duplicate_keys_are_refused(case: tuple[str, str, str, str]) -> None:
    """A key given twice in one mapping: which one counts is a guess (json and PyYAML silently
    keep the last), so the loader must refuse it and name the key (its path, or at least the
    key itself in the reason of a text-level error)."""
    source, text, where, key = case
    note(f"duplicate key at {where}")
    with count("loader.duplicate_keys") as c:
        try:
            load_documents([(source, text)])
        except DocumentErrors as exc:
            c.outcome = "refused"
            assert any(e.path == where or where in e.reason or repr(key) in e.reason
                       for e in exc.errors), (
                f"the refusal does not name {where}: {[str(e) for e in exc.errors]}")
        else:
            c.outcome = "accepted"
            raise AssertionError(f"a duplicate key at {where} was accepted silently")


# --- targeted cases ---------------------------------------------------------------------------

def test_numbers_and_strings_that_break_parsers() -> None:
    """Each weird value at a few telling places: DocumentErrors or valid, nothing else."""
    base = {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": "h", "namespace": "acme"},
            "spec": {"verify": {"scheme": "github", "secret": "{$S}"},
                     "chain": {"steps": [{"module": "log"}]}}}
    places = [("spec", "limits", "max_body_bytes"), ("spec", "limits", "rate_per_second"),
              ("spec", "chain", "timeout_s"), ("spec", "verify", "secret"),
              ("metadata", "name"), ("spec", "verify", "scheme")]
    for place in places:
        for value in [*HUGE_NUMBERS, *WEIRD_STRINGS]:
            doc = json.loads(json.dumps(base))
            node = doc
            for step in place[:-1]:
                node = node.setdefault(step, {})
            node[place[-1]] = value
            with count("loader.weird_values") as c:
                try:
                    validate_documents([(Location(SOURCE, 0), doc)])
                    c.outcome = "valid"
                    assert not (isinstance(value, float) and math.isnan(value)), (
                        f"NaN accepted at {'.'.join(place)}")
                except DocumentErrors as exc:
                    c.outcome = "refused"
                    check_errors(list(exc.errors), [doc], SOURCE)


def test_large_integers_in_text_are_document_errors() -> None:
    """More digits than Python converts (4300) is a ValueError inside json/yaml: the loader must
    turn it into an error naming the source, not let it escape."""
    digits = "1" * 5000
    for source, text in (("big.json", '{"kind": ' + digits + "}"), ("big.yaml", "a: " + digits)):
        with count("loader.weird_values") as c:
            try:
                load_documents([(source, text)])
            except DocumentErrors as exc:
                c.outcome = "refused"
                assert all(e.location.source == source for e in exc.errors)
            else:
                raise AssertionError("accepted")


def test_yaml_alias_expansion_is_bounded() -> None:
    """A few hundred bytes of YAML aliases name 10^7 strings ("billion laughs"): the loader must
    refuse or finish quickly, not walk them all."""
    levels = ["a0: &a0 ['{$X}', '{$X}', '{$X}', '{$X}', '{$X}', '{$X}', '{$X}', '{$X}', '{$X}', "
              "'{$X}']"]
    for i in range(1, 8):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = ("apiVersion: whplane/v1\nkind: Webhook\nmetadata: {name: h, namespace: acme}\n"
            "spec:\n  verify: {scheme: none}\n  chain: {steps: [{module: log}]}\n"
            "  payload_schema:\n" + textwrap.indent("\n".join(levels), "    ") + "\n")
    code = ("import sys; from providers.loader import load_documents; from providers.errors "
            "import DocumentErrors\ntry:\n    load_documents([('bomb.yaml', sys.stdin.read())])"
            "\nexcept DocumentErrors as e:\n    print(e)\n")
    with count("loader.alias_bomb") as c:
        try:
            subprocess.run([sys.executable, "-c", code], input=text, text=True,
                           capture_output=True, timeout=10, check=True)
            c.outcome = "bounded"
        except subprocess.TimeoutExpired:
            c.outcome = "timeout"
            raise AssertionError(
                "load_documents did not finish within 10 s on a 1 kB YAML alias bomb") from None


def _hook(**meta: Any) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook", "metadata": {"name": "h", **meta},
            "spec": {"verify": {"scheme": "github", "secret": "{$S}"},
                     "chain": {"steps": [{"module": "log"}]},
                     "delivery": {"retry": {"initial_delay_s": 5, "max_delay_s": 1}}}}


KNOWN = {
    # Shrunk examples the random search found once: kept, so CI checks them every run.
    "webhook without namespace": {**_hook(), "spec": _hook()["spec"] | {"delivery": {}}},
    "namespace with a namespace": {"apiVersion": "whplane/v1", "kind": "Namespace",
                                   "metadata": {"name": "acme", "namespace": "acme"}},
    "retry delays out of order": _hook(namespace="acme"),
    "reference in a label key": {**_hook(namespace="acme", labels={"{$X}": "v"}),
                                 "spec": _hook()["spec"] | {"delivery": {}}},
    "an unknown field named ''": {**_hook(namespace="acme"), "": None,
                                  "spec": _hook()["spec"] | {"delivery": {}}},
    "a lone surrogate key": {**_hook(namespace="acme", annotations={"\ud800": None}),
                             "spec": _hook()["spec"] | {"delivery": {}}},
    "a module tag that is a list": {
        **_hook(namespace="acme"),
        "spec": {"verify": {"scheme": "none"}, "chain": {"steps": [{"module": ["log"]}]}}},
    "an unknown field holding a list beside a module tag": {
        **_hook(namespace="acme"),
        "spec": {"verify": {"scheme": "none"},
                 "chain": {"steps": [{"module": "log", "type": []}]}}},
}


def test_known_cases_name_the_field() -> None:
    failures: list[str] = []
    for what, doc in KNOWN.items():
        with count("loader.known_cases") as c:
            try:
                validate_documents([(Location(SOURCE, 0), doc)])
            except DocumentErrors as exc:
                c.outcome = "refused"
                try:
                    check_errors(list(exc.errors), [doc], SOURCE)
                except AssertionError as failure:
                    failures.append(f"{what}: {str(failure).splitlines()[0]}")
            except Exception as exc:
                c.outcome = "crashed"
                failures.append(f"{what}: {type(exc).__name__}: {exc}")
            else:
                failures.append(f"{what}: accepted")
    assert not failures, "\n".join(failures)


WEIRD_KEYS = ["\ud800", "", ".", "..", "[0]", "a.b", "{$X}", "\x00", "\u202e", "k" * 300]


def test_weird_keys_anywhere_are_document_errors() -> None:
    """Keys no operator writes (a lone surrogate, empty, dots, brackets, a reference), in each
    kind of mapping, shallow and below a too-deep payload schema, in a JSON file: a
    DocumentError naming the document, never another exception."""
    def places(key: str) -> list[dict[str, Any]]:
        hook = {"apiVersion": "whplane/v1", "kind": "Webhook",
                "metadata": {"name": "h", "namespace": "acme"},
                "spec": {"verify": {"scheme": "none"}, "chain": {"steps": [{"module": "log"}]}}}
        out = []
        for where in ("root", "labels", "schema", "deep_schema", "step", "verify"):
            doc = json.loads(json.dumps(hook))
            if where == "root":
                doc[key] = 1
            elif where == "labels":
                doc["metadata"]["labels"] = {key: 1}
            elif where == "schema":
                doc["spec"]["payload_schema"] = {"type": "object", "properties": {key: {}}}
            elif where == "deep_schema":
                doc["spec"]["payload_schema"] = {"type": "object",
                                                 "properties": {key: deep(40, "list")}}
            elif where == "step":
                doc["spec"]["chain"]["steps"][0]["config"] = {key: 1}
            else:
                doc["spec"]["verify"][key] = 1
            out.append(doc)
        return out

    failures = []
    for key in WEIRD_KEYS:
        for doc in places(key):
            text = json.dumps(doc)  # lone surrogates become "\\ud800" escapes, as in a file
            with count("loader.weird_keys") as c:
                try:
                    load_documents([("keys.json", text)])
                    c.outcome = "valid"
                except DocumentErrors as exc:
                    c.outcome = "refused"
                    try:
                        check_errors(list(exc.errors), [json.loads(text)], "keys.json")
                    except AssertionError as failure:
                        failures.append(f"{key!r}: {str(failure).splitlines()[0]}")
                except Exception as exc:
                    c.outcome = "crashed"
                    failures.append(f"{key!r} in {text[:160]}...: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


KNOWN_TEXTS = {
    # YAML whose mapping keys are not strings, not even hashable: found by the text target.
    "a !!set as a mapping key": "  limits: {!!set {a, b}}\n",
    "a list as a mapping key": "  limits:\n    ? [a, b]\n    : 1\n",
    "a mapping as a mapping key": "  limits:\n    ? {a: 1}\n    : 1\n",
    "an integer as a mapping key": "  limits: {1: 2}\n",
}


def test_known_texts_are_document_errors() -> None:
    failures = []
    for what, spec_line in KNOWN_TEXTS.items():
        text = ("apiVersion: whplane/v1\nkind: Webhook\nmetadata: {name: h, namespace: acme}\n"
                "spec:\n  verify: {scheme: none}\n  chain: {steps: [{module: log}]}\n"
                + spec_line)
        with count("loader.known_texts") as c:
            try:
                load_documents([("known.yaml", text)])
                c.outcome = "valid"
                failures.append(f"{what}: accepted")
            except DocumentErrors as exc:
                c.outcome = "refused"
                try:
                    check_errors(list(exc.errors), _parsed("known.yaml", text), "known.yaml")
                except AssertionError as failure:
                    failures.append(f"{what}: {str(failure).splitlines()[0]}")
            except Exception as exc:
                c.outcome = "crashed"
                failures.append(f"{what}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)
