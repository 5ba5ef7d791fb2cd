"""Where references may be, and the rules for everyone and for tenants (pure logic)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers import reference_fields, sandbox
from providers.errors import DocumentErrors, ReferenceError_
from providers.loader import RESOURCE_ADAPTER, load_documents
from providers.payload_schema import check as check_schema
from providers.references import env_resolver, parse


def webhook(steps: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": "w", "namespace": "alpha"},
            "spec": {"verify": {"scheme": "github", "secret": "{$vault:alpha/gh#s}"},
                     "chain": {"steps": steps or [{"module": "log"}]}, **spec}}


def http_step(**config: Any) -> dict[str, Any]:
    return {"module": "http", "connection": "api", "config": config}


def errors_of(doc: dict[str, Any]) -> list[str]:
    try:
        load_documents([("t.json", json.dumps(doc))])
    except DocumentErrors as exc:
        return [f"{e.path}: {e.reason}" for e in exc.errors]
    return []


def test_the_fields_that_take_references() -> None:
    doc = webhook([http_step(headers={"Authorization": "Bearer {$vault:alpha/api#t}"}),
                   {"module": "file", "config": {"path": "{$OUT:/tmp}/x.jsonl"}}])
    resource = RESOURCE_ADAPTER.validate_python(doc)
    assert dict(reference_fields.sites(resource)) == {
        "spec.verify.secret[0]": "{$vault:alpha/gh#s}",
        "spec.chain.steps[0].config.headers.Authorization": "Bearer {$vault:alpha/api#t}",
        "spec.chain.steps[1].config.path": "{$OUT:/tmp}/x.jsonl",
    }
    conn = {"apiVersion": "whplane/v1", "kind": "Connection", "metadata": {"name": "r"},
            "spec": {"type": "redis", "url": "{$R}", "username": "{$U}", "password": "{$P}"}}
    assert {p for p, _ in reference_fields.sites(RESOURCE_ADAPTER.validate_python(conn))} == {
        "spec.url", "spec.username", "spec.password"}


@pytest.mark.parametrize(("doc", "path"), [
    (webhook([http_step(headers={"{$VAULT_TOKEN}": "1"})]),
     "spec.chain.steps[0].config.headers.{$VAULT_TOKEN} (a mapping key)"),
    (webhook(payload_schema={"const": "{$vault:alpha/api#token}"}), "spec.payload_schema.const"),
    (webhook([{"module": "redis_stream", "connection": "e", "config": {"stream": "{$S}"}}]),
     "spec.chain.steps[0].config.stream"),
    (webhook([http_step(method="POST", forward_headers=["{$H}"])]),
     "spec.chain.steps[0].config.forward_headers[0]"),
    ({**webhook(), "metadata": {"name": "w", "namespace": "alpha", "labels": {"a": "{$X}"}}},
     "metadata.labels.a"),
])  # fmt: skip
def test_references_anywhere_else_are_refused(doc: dict[str, Any], path: str) -> None:
    errors = errors_of(doc)
    assert any(e.startswith(path + ": references are not allowed here") for e in errors), errors


def test_only_referable_fields_are_resolved_and_the_rest_is_shared() -> None:
    doc = webhook([{"module": "log"}, http_step(headers={"X": "a-{$V}-b", "Y": "plain"})])
    resource = RESOURCE_ADAPTER.validate_python(doc)
    resolve = env_resolver({"V": "v"}, lambda ref: "secret")
    out = reference_fields.resolve(resource, lambda t: parse(t).render(resolve))
    assert out.spec.verify.secret == ("secret",)
    assert out.spec.chain.steps[1].config.headers == {"X": "a-v-b", "Y": "plain"}
    assert out.spec.chain.steps[0] is resource.spec.chain.steps[0]
    assert out.spec.limits is resource.spec.limits
    assert resource.spec.verify.secret == ("{$vault:alpha/gh#s}",)  # never modified


def test_a_resolved_value_is_validated_like_a_written_one() -> None:
    conn = {"apiVersion": "whplane/v1", "kind": "Connection", "metadata": {"name": "c"},
            "spec": {"type": "http", "url": "{$URL}"}}
    resource = RESOURCE_ADAPTER.validate_python(conn)
    resolve = env_resolver({"URL": "ftp://x"})
    with pytest.raises(ValueError):
        reference_fields.resolve(resource, lambda t: parse(t).render(resolve))


def test_a_resolution_error_names_the_field() -> None:
    resource = RESOURCE_ADAPTER.validate_python(webhook([http_step(headers={"X": "{$NOPE}"})]))
    with pytest.raises(ReferenceError_, match=r"^spec\.chain\.steps\[0\]\.config\.headers\.X: "):
        reference_fields.resolve(
            resource, lambda t: parse(t).render(env_resolver({}, lambda ref: "s")))


@pytest.mark.parametrize("path", [
    "@127.0.0.1:8080/steal", "steal", "/a/../b", "/a/./b", "//evil.example/x", "/a//b",
    "/%2e%2e/admin", "/a%2fb", "/a\\b", "/a b", "/a#frag", "/\n",
])  # fmt: skip
def test_http_step_paths_stay_below_the_connection(path: str) -> None:
    assert any("config.path" in e for e in errors_of(webhook([http_step(path=path)])))


@pytest.mark.parametrize("path", ["", "/", "/in", "/a/b-c_d.e~f", "/in?x=1&y=/z", "/@user"])
def test_ordinary_step_paths_are_fine(path: str) -> None:
    assert errors_of(webhook([http_step(path=path)])) == []


@pytest.mark.parametrize("name", ["whplane:{q}:deliveries", "whplane:rl:x", "WHPLANE:idem:y"])
def test_whplanes_own_keys_are_out_of_reach(name: str) -> None:
    steps = [{"module": "redis_stream", "connection": "e", "config": {"stream": name}},
             {"module": "redis_publish", "connection": "e", "config": {"channel": name}}]
    errors = errors_of(webhook(steps))
    assert any("config.stream" in e and "gateways' own" in e for e in errors)
    assert any("config.channel" in e and "gateways' own" in e for e in errors)


@pytest.mark.parametrize(("schema", "why"), [
    ({"$ref": "http://127.0.0.1:9/s.json"}, "points outside the schema"),
    ({"properties": {"a": {"$ref": "other.json#/x"}}}, "points outside the schema"),
    ({"pattern": "^(a)\\1$"}, "RE2"),
    ({"pattern": "(?=a)"}, "RE2"),
    ({"patternProperties": {"(?<=a)b": {}}}, "RE2"),
    ({"patternProperties": {"^a": {}}, "unevaluatedProperties": False}, "unevaluatedProperties"),
])  # fmt: skip
def test_payload_schemas_that_could_fetch_or_backtrack_are_refused(
    schema: dict[str, Any], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        check_schema(schema)


def test_payload_schemas_with_local_refs_and_data_are_fine() -> None:
    schema = {"$defs": {"id": {"type": "string", "pattern": "^[a-z]+$"}},
              "properties": {"id": {"$ref": "#/$defs/id"}, "pattern": {"type": "string"}},
              "const": {"pattern": "(a)\\1"}}
    assert check_schema(schema) is schema


def test_payload_schema_size_is_bounded() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["not"] = {}
        node = node["not"]
    with pytest.raises(ValueError, match="nested deeper"):
        check_schema(deep)
    with pytest.raises(ValueError, match="more than"):
        check_schema({"enum_like": [{"type": "string"} for _ in range(20_000)]})


def tenant(doc: dict[str, Any]) -> list[str]:
    return [str(p) for p in sandbox.tenant_problems(doc, "alpha")]


def test_tenant_rules() -> None:
    assert tenant(webhook()) == []
    env = webhook()
    env["spec"]["verify"]["secret"] = "{$GH_SECRET}"
    assert "environment references" in tenant(env)[0]
    other = webhook()
    other["spec"]["verify"]["secret"] = "{$vault:beta/gh#s}"
    assert "start with 'alpha/'" in tenant(other)[0]
    prefix_trick = webhook()
    prefix_trick["spec"]["verify"]["secret"] = "{$vault:alphabet/gh#s}"
    assert tenant(prefix_trick)
    assert "file module" in tenant(webhook([{"module": "file", "config": {"path": "/x"}}]))[0]
    assert "start with 'alpha:'" in tenant(webhook([
        {"module": "redis_stream", "connection": "e", "config": {"stream": "beta:x"}}]))[0]
    assert tenant(webhook([
        {"module": "redis_stream", "connection": "e", "config": {"stream": "alpha:x"}}])) == []
    conn = {"apiVersion": "whplane/v1", "kind": "Connection",
            "metadata": {"name": "c", "namespace": "alpha"},
            "spec": {"type": "http", "url": "http://10.0.0.1/", "allow_private": True}}
    assert "private addresses" in tenant(conn)[0]
    redis = {**conn, "spec": {"type": "redis", "url": "redis://10.0.0.1"}}
    assert "Redis connections" in tenant(redis)[0]
    for module, config, field in [
        ("kafka", {"topic": "beta.orders"}, "topic"),
        ("mqtt", {"topic": "beta/orders"}, "topic"),
        ("stomp", {"destination": "/queue/beta.orders"}, "destination"),
        ("clickhouse", {"table": "beta_events"}, "table"),
    ]:
        step = {"module": module, "connection": "shared", "config": config}
        assert f"config.{field}" in tenant(webhook([step]))[0], module
    ok = [{"module": "stomp", "connection": "s", "config": {"destination": "/topic/alpha.x"}},
          {"module": "mqtt", "connection": "m", "config": {"topic": "alpha/x"}}]
    assert tenant(webhook(ok)) == []
    rq = {"module": "redis_rq", "connection": "r", "config": {"queue": "alpha", "function": "f.g"}}
    assert "RQ workers" in tenant(webhook([rq]))[0]
    kafka = {**conn, "spec": {"type": "kafka", "url": "kafka://kafka.example:9092"}}
    assert "Kafka connections" in tenant(kafka)[0]
    elsewhere = {**webhook(), "metadata": {"name": "w", "namespace": "beta"}}
    assert "metadata.namespace" in tenant(elsewhere)[0]
    namespace = {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": "alpha"}}
    assert tenant(namespace)


def test_the_stamp_is_set_by_whoever_writes() -> None:
    doc = webhook()
    doc["metadata"]["sandbox"] = True
    assert sandbox.sandboxed(doc)
    assert not sandbox.sandboxed(sandbox.stamp(doc, False))
    assert sandbox.sandboxed(sandbox.stamp(webhook(), True))
    assert "sandbox" not in sandbox.stamp(doc, False)["metadata"]


@pytest.mark.parametrize(("name", "text", "why"), [
    ("dup.yaml", "kind: Namespace\nkind: Webhook\n", "duplicate key 'kind'"),
    ("dup.json", '{"kind": "Namespace", "kind": "Webhook"}', "duplicate key 'kind'"),
    ("nan.json", '{"a": NaN}', "NaN is not a JSON value"),
    ("inf.json", '{"a": Infinity}', "Infinity is not a JSON value"),
    ("big.yaml", "a: " + "9" * 5000, "more digits"),
    ("bomb.yaml", "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n"
        for i in range(8)), "expands to more than"),
])  # fmt: skip
def test_texts_that_would_hang_or_silently_lose_a_value(name: str, text: str, why: str) -> None:
    with pytest.raises(DocumentErrors, match=why):
        load_documents([(name, text)])


def test_infinite_numbers_are_not_limits() -> None:
    doc = webhook(limits={"rate_per_second": float("inf")})
    assert any("rate_per_second" in e for e in errors_of_python(doc))


def errors_of_python(doc: dict[str, Any]) -> list[str]:
    from providers.errors import Location
    from providers.loader import validate_document
    try:
        validate_document(doc, Location("t"))
    except DocumentErrors as exc:
        return [f"{e.path}: {e.reason}" for e in exc.errors]
    return []
