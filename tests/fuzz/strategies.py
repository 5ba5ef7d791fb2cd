"""Strategies: valid resource documents of every kind, scheme and module, and mutations of them.

Most generated cases are valid or one mutation away from valid, so they get past the parser and
the schema into the deeper checks (references, tenancy, the final-state checks, the store).

    resource docs      namespace_doc, connection_doc, webhook_doc (per scheme, per module)
    tenant docs        tenant_webhook / tenant_connection: what a namespace token may write,
                       plus `violation`: one thing a tenant may not write, and why
    mutate(doc)        one mutation at a chosen field path: wrong type, unknown field, missing
                       field, huge numbers, NaN/Infinity, unicode and lone surrogates, deep
                       nesting, references in values and in mapping keys, `..` in vault paths
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

Doc = dict[str, Any]
Path = tuple[str | int, ...]

API = "whplane/v1"
NAMESPACES = ("acme", "globex")
# What the API targets' base state holds (tests/fuzz/test_api.py seeds it).
HTTP_CONNECTIONS = {"acme": ("acme-api", "outbound"), "globex": ("outbound",)}
REDIS_CONNECTIONS = ("events",)  # global

names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?", fullmatch=True)
hook_names = st.one_of(st.sampled_from(["gh", "push", "orders", "billing-events"]), names)
seconds = st.one_of(st.sampled_from([0.5, 1, 5, 30, 86400]),
                    st.floats(min_value=0.001, max_value=86400))
# Free text (descriptions, labels): no references, which only some fields may hold.
small_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12).filter(
    lambda s: "{$" not in s and "<$vault:" not in s)
label_key = st.from_regex(r"[a-z]([a-z0-9./-]{0,14}[a-z0-9])?", fullmatch=True)


@functools.cache
def vault_ref(namespace: str = "acme") -> st.SearchStrategy[str]:
    path = st.sampled_from([f"{namespace}/gh", f"{namespace}/api", f"{namespace}/a/b-c_d.e@f"])
    field = st.sampled_from(["secret", "token", "webhook_secret", "k.1"])
    return st.builds(
        lambda p, f, form, d: form.format(p=p, f=f, d=d),
        path, field,
        st.sampled_from(["{{$vault:{p}#{f}}}", "<$vault:{p}#{f}>", "{{$vault:{p}#{f}:{d}}}",
                         "x-{{$vault:{p}#{f}}}-y"]),
        st.sampled_from(["fallback", "", "a b"]),
    )


env_ref = st.sampled_from(["{$GH_SECRET}", "{$API_TOKEN:default}", "{$X_1}", "pre{$GH_SECRET}"])


@functools.cache
def secret_value(namespace: str, env: bool) -> st.SearchStrategy[Any]:
    one = st.one_of(vault_ref(namespace), env_ref) if env else vault_ref(namespace)
    return st.one_of(one, st.lists(one, min_size=1, max_size=3))


# --- Namespace -------------------------------------------------------------------------------

@functools.cache
@st.composite
def namespace_doc(draw: st.DrawFn, name: st.SearchStrategy[str] | None = None) -> Doc:
    spec: Doc = {}
    if draw(st.booleans()):
        spec["description"] = draw(small_text)
    if draw(st.booleans()):
        spec["limits"] = _drop_none({
            "rate_per_second": draw(st.none() | st.floats(min_value=0.01, max_value=1e6)),
            "burst": draw(st.none() | st.integers(1, 10**6)),
        })
    doc: Doc = {"apiVersion": API, "kind": "Namespace",
                "metadata": draw(metadata(name or st.sampled_from(NAMESPACES), None))}
    if spec or draw(st.booleans()):
        doc["spec"] = spec
    return doc


@functools.cache
@st.composite
def metadata(draw: st.DrawFn, name: st.SearchStrategy[str], namespace: str | None) -> Doc:
    meta: Doc = {"name": draw(name)}
    if namespace is not None:
        meta["namespace"] = namespace
    if draw(st.booleans()):
        meta["labels"] = draw(st.dictionaries(label_key, small_text, max_size=3))
    if draw(st.integers(0, 4)) == 0:
        meta["annotations"] = draw(st.dictionaries(label_key, small_text, max_size=2))
    return meta


# --- Connection ------------------------------------------------------------------------------

public_urls = st.sampled_from([
    "https://api.example.com/hooks", "http://hooks.example.org", "https://example.net:8443/a/b",
    "https://203.0.113.7/in",
])
header_names = st.sampled_from(["Authorization", "X-Api-Key", "X-Trace", "Accept", "X-Token"])


@functools.cache  # one strategy object per arguments: hypothesis validates it once
@st.composite
def http_connection_spec(draw: st.DrawFn, namespace: str, env: bool) -> Doc:
    spec: Doc = {"type": "http", "url": draw(public_urls)}
    if draw(st.booleans()):
        spec["headers"] = {h: draw(vault_ref(namespace)) if h != "Accept" else "application/json"
                           for h in draw(st.lists(header_names, max_size=3, unique=True))}
    for key, strat in (("timeout_s", seconds), ("verify_tls", st.booleans()),
                       ("max_connections", st.integers(1, 10000))):
        if draw(st.booleans()):
            spec[key] = draw(strat)
    return spec


@functools.cache
@st.composite
def redis_connection_spec(draw: st.DrawFn, namespace: str, env: bool) -> Doc:
    spec: Doc = {"type": "redis",
                 "url": draw(st.sampled_from(["redis://redis.example:6379/0",
                                              "rediss://cache.example:6380", "unix:///run/r.sock"]))}
    if draw(st.booleans()):
        spec["username"] = draw(st.sampled_from(["default", "whplane"]))
    if draw(st.booleans()):
        spec["password"] = draw(st.one_of(vault_ref(namespace), env_ref) if env
                                else vault_ref(namespace))
    if draw(st.booleans()):
        spec["timeout_s"] = draw(seconds)
    return spec


@functools.cache
@st.composite
def connection_doc(draw: st.DrawFn, namespace: str | None = None,
                   name: st.SearchStrategy[str] | None = None) -> Doc:
    ns = namespace if namespace is not None else draw(st.sampled_from([*NAMESPACES, None]))
    owner = ns or "shared"
    spec = draw(st.one_of(http_connection_spec(owner, True), redis_connection_spec(owner, True)))
    return {"apiVersion": API, "kind": "Connection",
            "metadata": draw(metadata(name or st.sampled_from(["acme-api", "outbound", "crm"]),
                                      ns)),
            "spec": spec}


# --- Webhook ---------------------------------------------------------------------------------

cidrs = st.sampled_from(["10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "0.0.0.0/0", "::/0"])
SCHEMES = ("github", "gitlab", "stripe", "slack", "shopify", "standard", "twilio", "zoom",
           "hmac", "bearer", "basic", "api_key", "jwt", "none")
TIMED = {"stripe", "slack", "standard", "zoom", "hmac"}


@functools.cache
@st.composite
def verify_spec(draw: st.DrawFn, namespace: str, env: bool) -> Doc:
    scheme = draw(st.sampled_from(SCHEMES))
    spec: Doc = {"scheme": scheme}
    if scheme != "none":
        spec["secret"] = draw(secret_value(namespace, env))
    if scheme in TIMED and draw(st.booleans()):
        spec["tolerance_s"] = draw(seconds)
    if scheme == "twilio":
        if draw(st.booleans()):
            spec["algorithm"] = draw(st.sampled_from(["sha1", "sha256"]))
        if draw(st.booleans()):
            spec["public_url"] = draw(public_urls)
    elif scheme == "hmac":
        extra = {"header": st.sampled_from(["X-Signature", "X-Hub-Sig"]),
                 "algorithm": st.sampled_from(["sha1", "sha256", "sha512"]),
                 "encoding": st.sampled_from(["hex", "base64"]),
                 "prefix": st.sampled_from(["", "sha256=", "v1="]),
                 "timestamp_header": st.sampled_from(["X-Timestamp"])}
        for key, strat in extra.items():
            if draw(st.booleans()):
                spec[key] = draw(strat)
    elif scheme == "basic":
        spec["username"] = draw(st.sampled_from(["hooks", "svc"]))
    elif scheme == "api_key":
        if draw(st.booleans()):
            spec["in"] = draw(st.sampled_from(["header", "query"]))
        if draw(st.booleans()):
            spec["name"] = draw(st.sampled_from(["X-API-Key", "key"]))
    elif scheme == "jwt":
        algs = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
        if draw(st.booleans()):
            spec["algorithms"] = draw(st.lists(st.sampled_from(algs), min_size=1, max_size=3))
        for key, strat in (("issuer", st.sampled_from(["https://issuer.example"])),
                           ("audience", st.sampled_from(["whplane"])),
                           ("leeway_s", st.floats(0, 3600)),
                           ("header", st.sampled_from(["Authorization", "X-Jwt"]))):
            if draw(st.booleans()):
                spec[key] = draw(strat)
    if draw(st.integers(0, 5)) == 0:
        spec["ip_allow"] = draw(st.lists(cidrs, max_size=3))
    if draw(st.integers(0, 8)) == 0:
        spec["trusted_proxies"] = draw(st.lists(cidrs, max_size=2))
    return spec


@functools.cache
@st.composite
def step_doc(draw: st.DrawFn, namespace: str, tenant: bool) -> Doc:
    modules = ["log", "http", "redis_stream", "redis_publish"] + ([] if tenant else ["file"])
    module = draw(st.sampled_from(modules))
    step: Doc = {"module": module}
    if module == "log":
        if draw(st.booleans()):
            step["config"] = _drop_none({
                "level": draw(st.none() | st.sampled_from(["debug", "info", "warning"])),
                "include_body": draw(st.none() | st.booleans())})
    elif module == "http":
        step["connection"] = draw(st.sampled_from(HTTP_CONNECTIONS[namespace]))
        if draw(st.booleans()):
            step["config"] = _drop_none({
                "method": draw(st.none() | st.sampled_from(["POST", "PUT", "PATCH"])),
                "path": draw(st.none() | st.sampled_from(["", "/v1/in", "/events/1", "/a?b=c", "/x:y@z"])),
                "headers": draw(st.none() | st.dictionaries(
                    st.sampled_from(["X-Source", "X-Tenant"]), small_text, max_size=2)),
                "forward_headers": draw(st.none() | st.lists(
                    st.sampled_from(["content-type", "x-github-event", "user-agent"]),
                    max_size=3))})
        if draw(st.booleans()):
            step["timeout_s"] = draw(seconds)
    elif module in ("redis_stream", "redis_publish"):
        step["connection"] = draw(st.sampled_from(REDIS_CONNECTIONS))
        key = "stream" if module == "redis_stream" else "channel"
        suffix = draw(st.sampled_from(["events", "github", "{tag}:in", "a:b:c"]))
        config: Doc = {key: f"{namespace}:{suffix}"}
        if module == "redis_stream" and draw(st.booleans()):
            config["maxlen"] = draw(st.integers(1, 10**7))
        step["config"] = config
    else:
        step["config"] = {"path": draw(st.sampled_from(["out/hooks.jsonl", "hooks.jsonl"]))}
    return step


payload_schemas = st.sampled_from([
    {"type": "object"},
    {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
    {"type": "object", "properties": {"ref": {"type": "string", "pattern": "^refs/"}}},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 10},
    {"$ref": "#/$defs/a", "$defs": {"a": {"type": "object"}}},
])


@functools.cache
@st.composite
def webhook_doc(draw: st.DrawFn, namespace: str | None = None, tenant: bool = False,
                name: st.SearchStrategy[str] | None = None) -> Doc:
    ns = namespace or draw(st.sampled_from(NAMESPACES))
    spec: Doc = {"verify": draw(verify_spec(ns, env=not tenant))}
    if draw(st.booleans()):
        retry_a = draw(st.floats(0.01, 100))
        spec["delivery"] = _drop_none({
            "mode": draw(st.none() | st.sampled_from(["sync", "async"])),
            "retry": draw(st.none() | st.builds(
                lambda n, a, b: {"attempts": n, "initial_delay_s": a, "max_delay_s": a + b},
                st.integers(1, 100), st.just(retry_a), st.floats(0, 1000))),
            "idempotency_header": draw(st.none() | st.sampled_from(["X-Delivery-Id"])),
            "idempotency_window_s": draw(st.none() | seconds)})
    if draw(st.booleans()):
        spec["limits"] = _drop_none({
            "max_body_bytes": draw(st.none() | st.integers(1, 64 * 1_048_576)),
            "max_json_depth": draw(st.none() | st.integers(1, 1000)),
            "rate_per_second": draw(st.none() | st.floats(0.001, 1e6)),
            "burst": draw(st.none() | st.integers(1, 10**6))})
    chain: Doc = {"steps": draw(st.lists(step_doc(ns, tenant), min_size=1, max_size=4))}
    for key, strat in (("mode", st.sampled_from(["sequential", "parallel"])),
                       ("timeout_s", seconds), ("continue_on_error", st.booleans())):
        if draw(st.booleans()):
            chain[key] = draw(strat)
    spec["chain"] = chain
    if draw(st.integers(0, 3)) == 0:
        spec["payload_schema"] = copy.deepcopy(draw(payload_schemas))
    return {"apiVersion": API, "kind": "Webhook",
            "metadata": draw(metadata(name or hook_names, ns)), "spec": spec}


@functools.cache
def any_doc(namespace: str | None = None) -> st.SearchStrategy[Doc]:
    return st.one_of(webhook_doc(namespace), connection_doc(namespace),
                     namespace_doc() if namespace is None else namespace_doc(st.just(namespace)))


# --- tenant documents and what a tenant may not write ------------------------------------------

@functools.cache
@st.composite
def tenant_doc(draw: st.DrawFn, namespace: str = "acme") -> Doc:
    """A document namespace `namespace`'s token may write, by the tenant rules of
    providers/sandbox.py and control_plane/service.py."""
    if draw(st.integers(0, 3)) == 0:
        spec = draw(http_connection_spec(namespace, env=False))
        return {"apiVersion": API, "kind": "Connection",
                "metadata": draw(metadata(st.sampled_from(["t-api", "crm"]), namespace)),
                "spec": spec}
    return draw(webhook_doc(namespace, tenant=True))


@dataclass(frozen=True)
class Violation:
    what: str  # a short name, for statistics and the report
    path: str  # the field path the refusal should name ("" when the whole document is refused)


def _set(doc: Doc, path: Path, value: Any) -> None:
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


@st.composite
def violation(draw: st.DrawFn, doc: Doc, namespace: str = "acme") -> tuple[Doc, Violation]:
    """`doc` (a tenant document) changed to hold one thing a tenant may not write."""
    doc = copy.deepcopy(doc)
    other = "globex" if namespace != "globex" else "acme"
    kinds = ["env_ref", "other_vault", "dotdot_vault", "other_namespace", "namespace_kind",
             "ref_in_key"]
    if doc["kind"] == "Connection":
        kinds += ["allow_private", "redis_connection"]
    else:
        kinds += ["file_step", "foreign_stream", "whplane_stream"]
    what = draw(st.sampled_from(kinds))
    is_hook = doc["kind"] == "Webhook"
    secret_path: Path = ("spec", "verify", "secret") if is_hook else ("spec", "headers",
                                                                      "Authorization")
    if is_hook and doc["spec"]["verify"]["scheme"] == "none":
        doc["spec"]["verify"] = {"scheme": "bearer", "secret": "{$vault:" + namespace + "/gh#s}"}
    if not is_hook:
        doc["spec"].setdefault("headers", {})
    if what == "env_ref":
        _set(doc, secret_path, draw(env_ref))
        return doc, Violation(what, render_path(secret_path))
    if what == "other_vault":
        _set(doc, secret_path, draw(vault_ref(other)))
        return doc, Violation(what, render_path(secret_path))
    if what == "dotdot_vault":
        ref = draw(st.sampled_from([f"{namespace}/../{other}/gh", f"{namespace}/./../{other}/gh",
                                    f"{namespace}/a/../../{other}/gh", f"{namespace}/..",
                                    f"{namespace}/../../sys/x"]))
        _set(doc, secret_path, "{$vault:" + ref + "#secret}")
        return doc, Violation(what, render_path(secret_path))
    if what == "other_namespace":
        doc["metadata"]["namespace"] = other
        return doc, Violation(what, "metadata.namespace")
    if what == "namespace_kind":
        return ({"apiVersion": API, "kind": "Namespace", "metadata": {"name": namespace},
                 "spec": {"limits": {"rate_per_second": 1e6}}}, Violation(what, ""))
    if what == "ref_in_key":
        # A reference in a mapping key: resolved nowhere, checked nowhere (sandbox.py: never).
        target: Path = ("metadata", "labels") if draw(st.booleans()) else (
            ("spec", "chain", "steps", 0, "config", "headers") if is_hook else ("spec", "headers"))
        if is_hook and target[-1] == "headers":
            doc["spec"]["chain"]["steps"][0] = {"module": "http", "connection": "acme-api",
                                                "config": {"headers": {}}}
        node: Any = doc
        for step in target:
            node = node.setdefault(step, {}) if isinstance(node, dict) else node[step]
        key = draw(st.sampled_from(["{$GH_SECRET}", "{$vault:" + other + "/gh#secret}",
                                    "x-{$vault:" + namespace + "/gh#secret}"]))
        node[key] = "v"
        return doc, Violation(what, render_path(target))
    if what == "allow_private":
        doc["spec"]["allow_private"] = True
        return doc, Violation(what, "spec.allow_private")
    if what == "redis_connection":
        doc["spec"] = {"type": "redis", "url": "redis://10.0.0.1:6379"}
        return doc, Violation(what, "spec.type")
    steps = doc["spec"]["chain"]["steps"]
    i = draw(st.integers(0, len(steps) - 1))
    if what == "file_step":
        steps[i] = {"module": "file", "config": {"path": "/etc/cron.d/x"}}
        return doc, Violation(what, f"spec.chain.steps[{i}]")
    module = draw(st.sampled_from(["redis_stream", "redis_publish"]))
    key = "stream" if module == "redis_stream" else "channel"
    name = (draw(st.sampled_from([f"{other}:events", "events", f"{namespace}x:events"]))
            if what == "foreign_stream" else
            draw(st.sampled_from(["whplane:{q}:deliveries", "whplane:rl:x", "whplane:idem:y"])))
    steps[i] = {"module": module, "connection": "events", "config": {key: name}}
    return doc, Violation(what, f"spec.chain.steps[{i}].config.{key}")


# --- mutations -------------------------------------------------------------------------------

WEIRD_STRINGS = [
    "", " ", "\x00", "\ud800", "a\udfffb", "\ud83d", "é", "\U0001d518", "\u202e", "\ufeff",
    "\n", "a\r\nb: c", "{$", "{$}", "{$ }", "{$VAR", "{$1X}", "{$VAR}", "{$VAR:default}",
    "{$vault:}", "{$vault:a#}", "{$vault:#f}", "{$vault:a b#c}", "{$vault:acme/gh}",
    "{$vault:acme/../globex/gh#secret}", "{$vault:../x#y}", "{$vault:acme/./gh#s}",
    "<$vault:acme/gh#secret>", "<$vault:acme/gh", "<$vault:>", "{$vault:acme/gh#secret:{$X}}",
    "{${$X}}", "x" * 5000, "1e999", "NaN", "true", "null", "0x10", "1_000", "-0", "~",
    "!!python/object:os.system", "&a", "*a", "%", "\\", "'", '"', "[", "{",
]
HUGE_NUMBERS = [0, -1, 1, 2**31, 2**53 + 1, 2**63, 2**64, 10**100, -(10**100), 10**4000,
                0.0, -0.0, 1e-320, 1e308, -1e308, math.nan, math.inf, -math.inf]

weird_scalar = st.one_of(
    st.none(), st.booleans(), st.sampled_from(HUGE_NUMBERS), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WEIRD_STRINGS),
    st.text(max_size=30),  # any code point, lone surrogates included
)


def deep(depth: int, kind: str) -> Any:
    node: Any = "x"
    for _ in range(depth):
        node = [node] if kind == "list" else {"a": node}
    return node


weird_value = st.one_of(
    weird_scalar,
    st.lists(weird_scalar, max_size=3),
    st.dictionaries(st.sampled_from(["a", "{$X}", "", "\ud800"]), weird_scalar, max_size=2),
    st.builds(deep, st.integers(2, 250), st.sampled_from(["list", "dict"])),
)
unknown_keys = st.one_of(
    st.sampled_from(["extra", "Spec", "spec ", "secret", "{$GH_SECRET}", "{$vault:acme/gh#s}",
                     "\ud800", "", "in", "type", "kind", "__proto__", "$ref"]),
    st.text(max_size=10),
)


def paths_of(node: Any, prefix: Path = ()) -> list[Path]:
    """Every path into a JSON-like value, the value itself included."""
    out = [prefix]
    if isinstance(node, Mapping):
        for k, v in node.items():
            out.extend(paths_of(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(paths_of(v, (*prefix, i)))
    return out


def get(node: Any, path: Path) -> Any:
    for step in path:
        node = node[step]
    return node


@dataclass(frozen=True)
class Mutation:
    op: str
    path: Path  # where it happened: errors about it should name this path or a relative

    def dotted(self) -> str:
        return render_path(self.path)


def render_path(path: Path) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


MUTATIONS = ["replace", "replace", "delete", "add_key", "wrap_list", "wrap_dict", "ref_key",
             "string_ref", "number", "dup_entry"]


@st.composite
def mutate(draw: st.DrawFn, doc: Doc) -> tuple[Any, Mutation]:
    """One mutation of `doc` (a deep copy) at a random path."""
    doc = copy.deepcopy(doc)
    paths = paths_of(doc)
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(MUTATIONS))
    target = get(doc, path)
    if op == "delete" and path:
        parent = get(doc, path[:-1])
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        return doc, Mutation(op, path)
    if op in ("add_key", "ref_key") and isinstance(target, dict):
        key = draw(unknown_keys if op == "add_key" else st.sampled_from(
            ["{$GH_SECRET}", "{$vault:acme/gh#secret}", "<$vault:globex/gh#secret>",
             "{$vault:acme/../globex/gh#secret}", "{$", "pre-{$X}"]))
        if op == "ref_key" and target and draw(st.booleans()):
            # Rename an existing key so that it holds the reference.
            old = draw(st.sampled_from(sorted(target, key=str)))
            target[key + str(old)] = target.pop(old)
        else:
            target[key] = draw(weird_value) if op == "add_key" else "v"
        return doc, Mutation(op, (*path, key))
    if op == "dup_entry" and isinstance(target, list) and target:
        target.append(copy.deepcopy(target[0]))
        return doc, Mutation(op, path)
    if op == "wrap_list":
        new: Any = [target]
    elif op == "wrap_dict":
        new = {"value": target}
    elif op == "string_ref":
        new = draw(st.sampled_from(WEIRD_STRINGS[12:32]))
    elif op == "number":
        new = draw(st.sampled_from(HUGE_NUMBERS))
    else:
        new = draw(weird_value)
    if not path:
        return new, Mutation(op, path)
    _set(doc, path, new)
    return doc, Mutation("replace" if op in ("add_key", "ref_key", "dup_entry") else op, path)


@st.composite
def maybe_mutated(draw: st.DrawFn, docs: list[Doc], max_mutations: int = 2
                  ) -> tuple[list[Any], list[tuple[int, Mutation]]]:
    """`docs` with 0..max_mutations mutations (about a third of the cases stay valid)."""
    docs = list(docs)
    done: list[tuple[int, Mutation]] = []
    for _ in range(draw(st.integers(0, max_mutations))):
        i = draw(st.integers(0, len(docs) - 1))
        docs[i], m = draw(mutate(docs[i]))
        done.append((i, m))
    return docs, done


def _drop_none(d: Mapping[str, Any]) -> Doc:
    return {k: v for k, v in d.items() if v is not None}
