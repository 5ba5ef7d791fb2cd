"""Every error path of the schema and the loader, with its message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from providers.errors import DocumentErrors
from providers.loader import load_documents, load_paths
from providers.resources import Connection, Webhook, secret_fields
from providers.schema_export import resource_json_schema

HOOK = """
apiVersion: whplane/v1
kind: Webhook
metadata: {name: github-push, namespace: acme, labels: {source: github}}
spec:
  verify: {scheme: github, secret: "{$vault:acme/github#webhook_secret}"}
  limits: {max_body_bytes: 1048576, rate_per_second: 50}
  delivery:
    mode: sync
    retry: {attempts: 5, initial_delay_s: 0.5, max_delay_s: 30}
  chain:
    mode: sequential
    timeout_s: 30
    continue_on_error: false
    steps:
      - module: log
      - {module: http, connection: acme-api}
      - {module: redis_stream, connection: events, config: {stream: "acme:github"}}
"""


def errors_of(text: str, source: str = "config.yaml") -> list[str]:
    with pytest.raises(DocumentErrors) as exc:
        load_documents([(source, text)])
    return [str(e) for e in exc.value.errors]


def hook(**spec: Any) -> str:
    base: dict[str, Any] = {
        "verify": {"scheme": "github", "secret": "{$S}"},
        "chain": {"steps": [{"module": "log"}]},
    }
    base.update(spec)
    doc = {"apiVersion": "whplane/v1", "kind": "Webhook",
           "metadata": {"name": "h", "namespace": "acme"}, "spec": base}
    return json.dumps(doc)


def test_design_example_is_valid() -> None:
    [(loc, res)] = load_documents([("config.yaml", HOOK)])
    assert isinstance(res, Webhook)
    assert str(loc) == "config.yaml[0]"
    assert res.spec.verify.secret == ("{$vault:acme/github#webhook_secret}",)  # type: ignore[union-attr]
    assert res.spec.connections() == ("acme-api", "events")
    assert secret_fields(res) == {"spec.verify.secret[0]": "{$vault:acme/github#webhook_secret}"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: Webhook\n", "config.yaml[0]: apiVersion: required, but missing"),
        ("{}", "config.yaml[0]: kind: missing; expected one of Namespace, Connection, Webhook"),
        ("kind: Gadget\n", "config.yaml[0]: kind: unknown kind 'Gadget'"),
        ("- a\n- b\n", "config.yaml[0]: expected a mapping (`key: value` lines), got text"),
        ("a: [\n", "config.yaml:2: invalid YAML"),
        ("apiVersion: whplane/v2\nkind: Namespace\nmetadata: {name: a}\n",
         "config.yaml[0]: apiVersion: must be 'whplane/v1', not 'whplane/v2'"),
        ("apiVersion: whplane/v1\nkind: Namespace\nmetadata: {name: Acme}\n",
         "config.yaml[0]: metadata.name: invalid name: use lower-case letters"),
        ("apiVersion: whplane/v1\nkind: Namespace\nmetadata: {name: a-}\n",
         "config.yaml[0]: metadata.name: invalid name"),
        ("apiVersion: whplane/v1\nkind: Namespace\nmetadata: {name: " + "a" * 64 + "}\n",
         "config.yaml[0]: metadata.name: invalid name"),
        ("apiVersion: whplane/v1\nkind: Namespace\nmetadata: {name: a, colour: red}\n",
         "config.yaml[0]: metadata.colour: unknown field"),
        ("apiVersion: whplane/v1\nkind: Namespace\nmetadata: {name: a, namespace: b}\n",
         "config.yaml[0]: metadata.namespace: a Namespace is global: remove metadata.namespace"),
        ("apiVersion: whplane/v1\nkind: Namespace\nmetadata: {name: a}\nspec: {limits: "
         "{rate_per_second: -1}}\n",
         "config.yaml[0]: spec.limits.rate_per_second: must be greater than 0, not -1"),
    ],
)
def test_document_errors(text: str, expected: str) -> None:
    errs = errors_of(text)
    assert any(e.startswith(expected) for e in errs), errs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"verify": {"scheme": "gh", "secret": "x"}},
         "spec.verify: unknown scheme 'gh'; expected one of 'github'"),
        ({"verify": {"scheme": "github"}}, "spec.verify.secret: required, but missing"),
        ({"verify": {"scheme": "github", "secret": []}},
         "spec.verify.secret: at least one secret is required"),
        ({"verify": {"scheme": "github", "secret": ""}},
         "spec.verify.secret: a secret must not be empty"),
        ({"verify": {"scheme": "github", "secret": "x", "algo": 1}},
         "spec.verify.algo: unknown field"),
        ({"verify": {"scheme": "github", "secret": "x", "ip_allow": ["10.0.0.300/8"]}},
         "spec.verify.ip_allow[0]: not an IP network: '10.0.0.300/8'"),
        ({"verify": {"scheme": "stripe", "secret": "x", "tolerance_s": 0}},
         "spec.verify.tolerance_s: must be greater than 0, not 0"),
        ({"chain": {"steps": []}}, "spec.chain.steps: needs at least 1 item, has 0"),
        ({"chain": {"steps": [{"module": "http"}]}}, "spec.chain.steps[0].connection: required, but missing"),
        ({"chain": {"steps": [{"module": "ftp"}]}},
         "spec.chain.steps[0]: unknown module 'ftp'; expected one of 'log'"),
        ({"chain": {"steps": [{"module": "redis_stream", "connection": "r"}]}},
         "spec.chain.steps[0].config: required, but missing"),
        ({"chain": {"mode": "random", "steps": [{"module": "log"}]}},
         "spec.chain.mode: must be 'sequential' or 'parallel', not 'random'"),
        ({"delivery": {"mode": "later"}}, "spec.delivery.mode: must be 'sync' or 'async', not 'later'"),
        ({"delivery": {"retry": {"initial_delay_s": 5, "max_delay_s": 1}}},
         "spec.delivery.retry: max_delay_s must be at least initial_delay_s"),
        ({"limits": {"max_body_bytes": "big"}},
         "spec.limits.max_body_bytes: must be a whole number, not 'big'"),
        ({"extra": True}, "spec.extra: unknown field"),
    ],
)
def test_webhook_errors(spec: dict[str, Any], expected: str) -> None:
    errs = errors_of(hook(**spec), "hooks.json")
    assert any(e.startswith("hooks.json[0]: " + expected) for e in errs), errs


def test_webhook_needs_namespace() -> None:
    doc = json.loads(hook())
    del doc["metadata"]["namespace"]
    errs = errors_of(json.dumps(doc), "x.json")
    assert errs == ["x.json[0]: metadata.namespace: a Webhook lives in a namespace: set "
                    "metadata.namespace"]


def test_connection_types() -> None:
    text = """
apiVersion: whplane/v1
kind: Connection
metadata: {name: events}
spec: {type: redis, url: "redis://localhost:6379/0", password: "{$vault:r#p}"}
---
apiVersion: whplane/v1
kind: Connection
metadata: {name: api, namespace: acme}
spec: {type: http, url: "https://x.example", headers: {Authorization: "Bearer {$T}", X-Trace: "1"}}
"""
    (_, redis), (_, http) = load_documents([("c.yaml", text)])
    assert isinstance(redis, Connection) and isinstance(http, Connection)
    assert secret_fields(redis) == {"spec.password": "{$vault:r#p}"}
    assert secret_fields(http) == {"spec.headers.Authorization": "Bearer {$T}"}
    errs = errors_of(text.replace("type: http, url: \"https", "type: http, url: \"ftp"))
    assert errs == ["config.yaml[1]: spec.url: does not have the expected form (pattern "
                    "'^(https?://|\\\\{\\\\$|<\\\\$vault:)')"]
    errs = errors_of(text.replace("type: redis", "type: pigeon"))
    assert errs[0].startswith("config.yaml[0]: spec: unknown type 'pigeon'; expected one of")


def test_all_errors_reported_with_index_and_duplicates() -> None:
    text = hook() + "\n---\n" + hook(extra=1) + "\n---\n" + hook()
    errs = errors_of(text, "many.yaml")
    assert errs[0] == "many.yaml[1]: spec.extra: unknown field"
    assert errs[1] == ("many.yaml[2]: metadata.name: Webhook/acme/h already defined at "
                       "many.yaml:1 (document 1, Webhook acme/h)")


def test_json_list_and_resources_wrapper(tmp_path: Path) -> None:
    one = json.loads(hook())
    (tmp_path / "a.json").write_text(json.dumps([one]))
    two = dict(one, metadata={"name": "h2", "namespace": "acme"})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text(json.dumps({"resources": [two]}))
    (tmp_path / ".hidden.yaml").write_text("garbage: [")
    (tmp_path / "notes.txt").write_text("ignored")
    names = sorted(r.metadata.name for _, r in load_paths([tmp_path]))
    assert names == ["h", "h2"]


def test_json_schema_export() -> None:
    schema = resource_json_schema()
    text = json.dumps(schema)
    assert "Webhook" in text and "github" in text and "redis_stream" in text
    assert schema["$schema"].startswith("https://json-schema.org/")


def test_published_json_schema_is_current() -> None:
    published = Path(__file__).parents[2] / "docs" / "resource.schema.json"
    assert json.loads(published.read_text()) == resource_json_schema(), (
        "docs/resource.schema.json is stale: regenerate it from providers.schema_export"
    )


def test_examples_validate_against_the_published_json_schema() -> None:
    import jsonschema
    import yaml

    root = Path(__file__).parents[2]
    schema = json.loads((root / "docs" / "resource.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((root / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            errors = [e.message for e in validator.iter_errors(doc)]
            assert not errors, (path.name, errors)
