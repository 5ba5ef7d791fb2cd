"""Fuzzing the control-plane API in-process (httpx.ASGITransport over a DirStore in a tmp dir):
`POST /v1/apply` and `/v1/diff` with generated documents, as the admin and as a namespace
token, and raw request bodies.

Properties:
- never an answer >= 500;
- a refused apply changes nothing: resources, revision and history are exactly as before (and
  a diff or a dry run never changes anything);
- every 422 names, per error, the document and a field path that exists in that document;
  a 403 says what is forbidden;
- an accepted apply is readable back (`GET /v1/resources` answers) and every stored document
  passes the loader's validation (a gateway will take it);
- a tenant document that breaks a tenant rule is refused (403/422) naming the field; one that
  keeps every rule is accepted.

The base state (namespaces acme and globex, connections acme/acme-api, outbound and events, a
webhook, an acme token) is built once per module; each case starts from a copy of it unless the
previous case left it untouched (a refused apply must leave it untouched: that is checked).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from control_plane.api import create_api
from control_plane.dir_store import DirStore
from providers.errors import DocumentErrors, Location
from providers.loader import validate_documents
from tests.fuzz.budget import budget, count
from tests.fuzz.checks import api_errors, path_exists, related
from tests.fuzz.strategies import (
    API,
    Violation,
    any_doc,
    maybe_mutated,
    tenant_doc,
    violation,
)

ADMIN = "fuzz-admin-token"

BASE: list[dict[str, Any]] = [
    {"apiVersion": API, "kind": "Namespace", "metadata": {"name": "acme"}},
    {"apiVersion": API, "kind": "Namespace", "metadata": {"name": "globex"},
     "spec": {"limits": {"rate_per_second": 100}}},
    {"apiVersion": API, "kind": "Connection", "metadata": {"name": "acme-api", "namespace": "acme"},
     "spec": {"type": "http", "url": "https://api.acme.example/hooks",
              "headers": {"Authorization": "Bearer {$vault:acme/api#token}"}}},
    {"apiVersion": API, "kind": "Connection", "metadata": {"name": "outbound"},
     "spec": {"type": "http", "url": "https://hooks.example.com"}},
    {"apiVersion": API, "kind": "Connection", "metadata": {"name": "events"},
     "spec": {"type": "redis", "url": "redis://redis.example:6379/0"}},
    {"apiVersion": API, "kind": "Webhook", "metadata": {"name": "gh", "namespace": "acme"},
     "spec": {"verify": {"scheme": "github", "secret": "{$vault:acme/gh#secret}"},
              "chain": {"steps": [{"module": "log"}, {"module": "http",
                                                      "connection": "acme-api"}]}}},
]


def encode(body: Any) -> bytes:
    """JSON as a careless client writes it: NaN/Infinity literals, escaped lone surrogates."""
    return json.dumps(body, allow_nan=True, ensure_ascii=True).encode()


class ControlPlaneHarness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = asyncio.Runner()
        self.template = root / "template"
        self.n = 0
        self.client: httpx.AsyncClient | None = None
        self.dirty = True
        app = create_api(DirStore(self.template), ADMIN)
        self.client = self._client(app)
        r = self.call("POST", "/v1/apply", {"resources": BASE})
        assert r.status_code == 200, r.text
        r = self.call("POST", "/v1/tokens", {"namespace": "acme"})
        assert r.status_code == 200, r.text
        self.tenant = r.json()["token"]
        self.runner.run(self.client.aclose())
        self.client = None

    @staticmethod
    def _client(app: Any) -> httpx.AsyncClient:
        # An exception escaping the app is answered 500, as a real server would.
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app,
                                                               raise_app_exceptions=False),
                                 base_url="http://cp.fuzz", timeout=60)

    def fresh(self) -> None:
        """Start the case from the base state, unless the last case left it as it was."""
        if not self.dirty:
            return
        if self.client is not None:
            self.runner.run(self.client.aclose())
        self.n += 1
        store_dir = self.root / f"s{self.n}"
        shutil.copytree(self.template, store_dir, symlinks=True)
        shutil.rmtree(self.root / f"s{self.n - 1}", ignore_errors=True)
        self.client = self._client(create_api(DirStore(store_dir), ADMIN))
        self.dirty = False

    def call(self, method: str, path: str, body: Any = None, token: str = ADMIN,
             raw: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        assert self.client is not None
        h = {"authorization": b"Bearer " + token.encode("latin-1"),
             "content-type": "application/json", **(headers or {})}
        content = raw if raw is not None else (None if body is None else encode(body))
        return self.runner.run(self.client.request(method, path, content=content, headers=h))

    def state(self) -> tuple[int, list[Any], Any]:
        r = self.call("GET", "/v1/resources")
        assert r.status_code == 200, f"GET /v1/resources -> {r.status_code}: {r.text[:500]}"
        h = self.call("GET", "/v1/history", None)
        assert h.status_code == 200, f"GET /v1/history -> {h.status_code}: {h.text[:500]}"
        items = h.json()["items"]
        return r.json()["revision"], r.json()["items"], items[0] if items else None

    def close(self) -> None:
        if self.client is not None:
            self.runner.run(self.client.aclose())
        self.runner.close()


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlaneHarness]:
    root = Path(tempfile.mkdtemp(prefix="whplane-fuzz-cp-"))
    harness = ControlPlaneHarness(root)
    yield harness
    harness.close()
    shutil.rmtree(root, ignore_errors=True)


# --- what every answer must be -------------------------------------------------------------------

def check_answer(r: httpx.Response, docs: list[Any] | None) -> None:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:2000]}"
    if r.status_code == 200:
        return
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"{r.status_code} answer is not JSON: {r.text[:500]}") from None
    if r.status_code == 422:
        errors = api_errors(body)
        assert errors, f"422 without errors: {body}"
        for e in errors:
            assert e["reason"], f"error without a reason: {e}"
            assert e["field"] not in (None, ""), f"error without a field path: {e}"
            i = e["document"]
            if docs is not None and isinstance(i, int) and isinstance(e["field"], str):
                assert 0 <= i < len(docs), f"error names document {i} of {len(docs)}: {e}"
                if isinstance(docs[i], dict):
                    assert path_exists(docs[i], e["field"]), (
                        f"error path {e['field']!r} is not in document {i}: {e}")
    elif r.status_code == 403:
        detail = body.get("detail")
        assert detail, f"403 without a reason: {body}"
        for e in api_errors(body):
            assert e["field"] not in (None, "") or e["reason"], f"403 error names nothing: {e}"


def check_unchanged(cp: ControlPlaneHarness, before: tuple[int, list[Any], Any],
                    what: str) -> None:
    after = cp.state()
    assert after[0] == before[0], f"{what}: the revision moved {before[0]} -> {after[0]}"
    assert after[1] == before[1], f"{what}: the resources changed"
    assert after[2] == before[2], f"{what}: the history changed"


def check_applied(cp: ControlPlaneHarness, docs: list[Any], tenant: bool = False) -> None:
    _, items, _ = cp.state()
    try:
        validate_documents([(Location("store", i), d) for i, d in enumerate(items)])
    except DocumentErrors as exc:
        raise AssertionError(f"the store holds documents a gateway refuses: {exc}") from None
    stored = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
              for d in items}
    for d in docs:
        key = (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        assert key in stored, f"applied {key} is not in the store"
        # The sandbox stamp is the control plane's to set, whatever the input says.
        stamp = stored[key]["metadata"].get("sandbox", False)
        assert stamp is tenant, f"{key} written by {'a tenant' if tenant else 'the admin'} " \
                                f"is stored with metadata.sandbox {stamp!r}"


# --- admin: apply and diff of generated documents -----------------------------------------------

def _key(doc: dict[str, Any]) -> tuple[Any, ...]:
    return (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])


admin_docs = st.lists(any_doc(), min_size=1, max_size=4, unique_by=_key)


@budget(ci=60)
@given(st.data())
def test_admin_apply(cp: ControlPlaneHarness, data: st.DataObject) -> None:
    docs, mutations = data.draw(admin_docs.flatmap(maybe_mutated))
    if data.draw(st.integers(0, 9)) == 0 and isinstance(docs[0], dict) and isinstance(
            docs[0].get("metadata"), dict):
        docs[0]["metadata"]["sandbox"] = True  # the admin's write is the admin's
    dry_run = data.draw(st.integers(0, 4)) == 0
    prune = data.draw(st.integers(0, 5)) == 0
    cp.fresh()
    before = cp.state()
    with count("api.apply.admin") as c:
        r = cp.call("POST", "/v1/apply", {"resources": docs, "dry_run": dry_run,
                                          "prune": prune, "message": "fuzz"})
        c.outcome = str(r.status_code)
        note(f"answer {r.status_code}: {r.text[:3000]}")
        check_answer(r, docs)
        if r.status_code != 200 or dry_run:
            check_unchanged(cp, before, f"{'dry run' if dry_run else 'refused apply'}")
        else:
            cp.dirty = r.json()["revision"] != before[0]
            check_applied(cp, docs)
        if r.status_code == 422 and mutations:
            errors = api_errors(r.json())
            for i, m in mutations:
                if not isinstance(docs[i], dict):
                    continue
                mine = [e for e in errors if e["document"] == i]
                if mine and not any(isinstance(e["field"], str) and related(e["field"], m.path)
                                    for e in mine):
                    # Another document's mutation may be the cause: only note it.
                    note(f"document {i}: errors not about its mutation {m}: {mine}")


@budget(ci=30)
@given(st.data())
def test_admin_diff(cp: ControlPlaneHarness, data: st.DataObject) -> None:
    docs, _ = data.draw(admin_docs.flatmap(maybe_mutated))
    prune = data.draw(st.booleans())
    cp.fresh()
    before = cp.state()
    with count("api.diff.admin") as c:
        r = cp.call("POST", "/v1/diff", {"resources": docs, "prune": prune})
        c.outcome = str(r.status_code)
        note(f"answer {r.status_code}: {r.text[:3000]}")
        check_answer(r, docs)
        check_unchanged(cp, before, "diff")


# --- tenant: what a namespace token may and may not write ----------------------------------------

tenant_docs = st.lists(tenant_doc("acme"), min_size=1, max_size=3, unique_by=_key)


@st.composite
def tenant_case(draw: st.DrawFn) -> tuple[list[Any], Violation | None, list[Any]]:
    docs = draw(tenant_docs)
    broken: Violation | None = None
    if draw(st.integers(0, 2)) > 0:
        i = draw(st.integers(0, len(docs) - 1))
        docs[i], broken = draw(violation(docs[i], "acme"))
    mutations: list[Any] = []
    if draw(st.integers(0, 3)) == 0:
        docs, mutations = draw(maybe_mutated(docs, 1))
    return docs, broken, mutations


@budget(ci=60)
@given(tenant_case(), st.booleans())
def test_tenant_apply(cp: ControlPlaneHarness, case: tuple[list[Any], Violation | None,
                                                             list[Any]], dry_run: bool) -> None:
    docs, broken, mutations = case
    if dry_run and isinstance(docs[0], dict) and isinstance(docs[0].get("metadata"), dict):
        docs[0]["metadata"]["sandbox"] = False  # a tenant cannot remove its stamp
        dry_run = str(docs[0]["metadata"].get("name")) < "m"  # half of these for real
    cp.fresh()
    before = cp.state()
    with count("api.apply.tenant") as c:
        r = cp.call("POST", "/v1/apply", {"resources": docs, "dry_run": dry_run},
                    token=cp.tenant)
        c.outcome = f"{r.status_code}" + (f" {broken.what}" if broken else "")
        note(f"answer {r.status_code}: {r.text[:3000]}")
        check_answer(r, docs)
        if r.status_code != 200 or dry_run:
            check_unchanged(cp, before, "refused tenant apply")
        else:
            cp.dirty = r.json()["revision"] != before[0]
            check_applied(cp, docs, tenant=True)
        if mutations:
            return  # a mutation may make the case invalid or moot: only the above holds
        if broken is None:
            assert r.status_code == 200, (
                f"a tenant document within every rule was refused: {r.status_code} {r.text}")
            return
        assert r.status_code in (403, 422), (
            f"a tenant broke the rule {broken.what!r} at {broken.path!r} and got "
            f"{r.status_code}: {r.text[:1000]}")
        if broken.path:
            text = json.dumps(r.json())
            fields = [e["field"] for e in api_errors(r.json()) if isinstance(e["field"], str)]
            assert broken.path in text or any(
                f.startswith(broken.path) or broken.path.startswith(f) for f in fields if f), (
                f"the refusal of {broken.what!r} does not name {broken.path!r}: {text[:1000]}")


# --- raw bodies ----------------------------------------------------------------------------------

RAW_BODIES = [
    b"", b"null", b"[]", b"{}", b"{", b'{"resources": null}', b'{"resources": "x"}',
    b'{"resources": [1, "a", null, []]}', b'{"resources": {}}', b'{"resources": [{}]}',
    b'{"resources": [], "dry_run": "yes"}', b'{"resources": [], "expected_revision": 1e999}',
    b'{"resources": [], "expected_revision": -1}',
    b'{"resources": [], "expected_revision": 99999999999999999999999}',
    b'{"resources": [], "sources": "x"}', b'{"resources": [{"kind": "Namespace"}], '
    b'"sources": []}', b'{"resources": [], "resources": []}',
    b'{"resources": [{"kind": NaN}]}', b'{"resources": [{"kind": Infinity}]}',
    b'{"resources": [{"kind": "\\ud800"}]}', b'{"resources": ["\\udfff"]}',
    b'{"namespace": "\\ud800"}', b'{"resources": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    b'{"resources": [' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"]}",
    b'{"resources": [' + b"1" * 5000 + b"]}", b"\xff\xfe{}", b"\xef\xbb\xbf{}",
    b'{"resources": [{"apiVersion": "whplane/v1", "kind": "Namespace", '
    b'"metadata": {"name": "acme", "name": "evil"}}]}',
    b'{"resources": [{"apiVersion": "whplane/v1", "kind": "Namespace", '
    b'"metadata": {"name": "x"}}], "message": "\\u0000\\ud800"}',
    b'{"resources": [{"apiVersion": "whplane/v1", "kind": "Namespace", '
    b'"metadata": {"name": "x"}, "spec": {"limits": {"rate_per_second": 1e999}}}]}',
]
ROUTES = [("POST", "/v1/apply"), ("POST", "/v1/diff"), ("POST", "/v1/tokens"),
          ("POST", "/v1/rollback"), ("DELETE", "/v1/resources/Webhook/acme/gh"),
          ("GET", "/v1/resources/Webhook/acme/gh"), ("GET", "/v1/history/1"),
          ("GET", "/v1/resources")]

raw_bodies = st.one_of(
    st.sampled_from(RAW_BODIES),
    st.binary(max_size=200),
    st.builds(lambda docs: encode({"resources": docs}), st.lists(any_doc(), max_size=2)),
    st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=10)
                 | st.integers(), lambda c: st.lists(c, max_size=3)
                 | st.dictionaries(st.sampled_from(["resources", "dry_run", "namespace",
                                                    "to_revision", "prune", "x"]), c,
                                   max_size=4), max_leaves=12).map(encode),
)


@budget(ci=60)
@given(st.sampled_from(ROUTES), raw_bodies, st.sampled_from(["admin", "tenant", "none", "junk"]),
       st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1",
                        "multipart/form-data; boundary=x"]),
       st.sampled_from(["", "?namespace=acme", "?namespace=globex", "?kind=%7f", "?limit=-1",
                        "?namespace=%00", "?message=%ff"]))
def test_raw_requests(cp: ControlPlaneHarness, route: tuple[str, str], raw: bytes, who: str,
                      ctype: str, query: str) -> None:
    method, path = route
    token = {"admin": ADMIN, "tenant": cp.tenant, "none": "", "junk": "whp_\u00e9x"}[who]
    cp.fresh()
    before = cp.state()
    with count("api.raw") as c:
        r = cp.call(method, path + query, token=token, raw=raw,
                    headers={"content-type": ctype} if ctype else None)
        c.outcome = str(r.status_code)
        note(f"answer {r.status_code}: {r.text[:2000]}")
        check_answer(r, None)
        if r.status_code != 200 or method == "GET" or path == "/v1/diff" or path == "/v1/tokens":
            check_unchanged(cp, before, f"{method} {path} -> {r.status_code}")
        else:
            cp.dirty = True


KNOWN: dict[str, list[dict[str, Any]]] = {
    # Shrunk examples the random search found once: kept, so CI checks them every run.
    "a module tag that is a list": [
        {"apiVersion": API, "kind": "Webhook", "metadata": {"name": "h", "namespace": "acme"},
         "spec": {"verify": {"scheme": "none"}, "chain": {"steps": [{"module": ["log"]}]}}}],
    "an unknown field holding a list beside a module tag": [
        {"apiVersion": API, "kind": "Webhook", "metadata": {"name": "h", "namespace": "acme"},
         "spec": {"verify": {"scheme": "none"},
                  "chain": {"steps": [{"module": "log", "type": []}]}}}],
    "an unknown field holding a mapping beside a scheme tag": [
        {"apiVersion": API, "kind": "Webhook", "metadata": {"name": "h", "namespace": "acme"},
         "spec": {"verify": {"scheme": "none", "module": {}},
                  "chain": {"steps": [{"module": "log"}]}}}],
    "a webhook without a namespace": [
        {"apiVersion": API, "kind": "Webhook", "metadata": {"name": "h"},
         "spec": {"verify": {"scheme": "none"}, "chain": {"steps": [{"module": "log"}]}}}],
    "an unknown field named ''": [
        {"apiVersion": API, "kind": "Namespace", "metadata": {"name": "acme"}, "": None}],
}


@pytest.mark.parametrize("who", ["admin", "tenant"])
def test_known_cases(cp: ControlPlaneHarness, who: str) -> None:
    failures = []
    for what, docs in KNOWN.items():
        cp.fresh()
        before = cp.state()
        with count("api.known_cases") as c:
            r = cp.call("POST", "/v1/apply", {"resources": docs},
                        token=ADMIN if who == "admin" else cp.tenant)
            c.outcome = str(r.status_code)
            try:
                check_answer(r, docs)
                if r.status_code != 200:
                    check_unchanged(cp, before, what)
                else:
                    failures.append(f"{what}: accepted")
                    cp.dirty = True
            except AssertionError as failure:
                failures.append(f"{what}: {str(failure).splitlines()[0]}")
    assert not failures, "\n".join(failures)
