"""whctl against a fake control plane (httpx.MockTransport): the client's own logic only.

The end-to-end tests against the real control plane live elsewhere and inject a client the same
way: `runner.invoke(app, args, obj=httpx.Client(...))` or `obj=ApiClient(...)`.
"""

from __future__ import annotations

import io
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import yaml
from rich.console import Console
from typer.testing import CliRunner, Result

from cli import render
from cli.client import ApiClient
from cli.rollout import parse_duration
from cli.whctl import app
from providers.loader import load_paths

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOKEN = "t0k-from-env"

WEBHOOK: dict[str, Any] = {
    "apiVersion": "whplane/v1",
    "kind": "Webhook",
    "metadata": {"name": "github-push", "namespace": "acme", "labels": {"source": "github"},
                 "generation": 3},
    "spec": {
        "verify": {"scheme": "github", "secret": "{$vault:acme/github#webhook_secret}"},
        "delivery": {"mode": "sync"},
        "chain": {"steps": [{"module": "log"}, {"module": "http", "connection": "acme-api"}]},
    },
}
CONNECTION: dict[str, Any] = {
    "apiVersion": "whplane/v1",
    "kind": "Connection",
    "metadata": {"name": "acme-api", "namespace": "acme"},
    "spec": {"type": "http", "url": "https://user:pw@api.acme.example:8443/hooks?q=1",
             "headers": {"Authorization": "Bearer {$vault:acme/api#token}"}},
}
GLOBAL_CONNECTION: dict[str, Any] = {
    "apiVersion": "whplane/v1",
    "kind": "Connection",
    "metadata": {"name": "events"},
    "spec": {"type": "redis", "url": "{$WH_REDIS_URL:redis://:secretpw@10.0.0.5:6379/0}"},
}
NAMESPACE: dict[str, Any] = {
    "apiVersion": "whplane/v1",
    "kind": "Namespace",
    "metadata": {"name": "acme"},
    "spec": {"description": "Acme Corp :smile: [bold]x[/bold]"},
}

Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeControlPlane:
    """Answers by (method, path); records every request it saw."""

    routes: dict[tuple[str, str], Handler | httpx.Response | Any] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"detail": "not found"})
        if callable(route):
            return route(request)
        if isinstance(route, httpx.Response):
            return route
        return httpx.Response(200, json=route)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self), base_url="http://cp.test")

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)


@pytest.fixture
def cp() -> FakeControlPlane:
    return FakeControlPlane()


def run(cp: FakeControlPlane | None, *args: str, env: dict[str, str | None] | None = None) -> Result:
    environment: dict[str, str | None] = {"WHCTL_TOKEN": TOKEN, "WHCTL_SERVER": None}
    environment.update(env or {})
    obj = cp.client() if cp is not None else None
    return CliRunner().invoke(app, list(args), env=environment, obj=obj)


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return path


def apply_answer(*changes: tuple[str, str, str | None, str], revision: int = 7,
                 dry_run: bool = False) -> dict[str, Any]:
    return {"revision": revision, "dry_run": dry_run, "changes": [
        {"op": op, "kind": kind, "namespace": ns, "name": name} for op, kind, ns, name in changes
    ]}


# --- validate (offline) --------------------------------------------------------------------------


def test_validate_examples_ok() -> None:
    result = run(None, "validate", "-f", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "23 resource(s) valid"


def test_validate_reports_every_error_with_location_and_field(tmp_path: Path) -> None:
    bad = dict(WEBHOOK, metadata={"name": "Bad_Name", "namespace": "acme"})
    bad_scheme = json.loads(json.dumps(WEBHOOK))
    bad_scheme["spec"]["verify"]["scheme"] = "nope"
    f = write(tmp_path / "bad.yaml", bad, bad_scheme)
    result = run(None, "validate", "-f", str(f))
    assert result.exit_code == 1
    assert re.search(rf"{f}:\d+ \(document 1, Webhook acme/Bad_Name\): metadata.name: invalid "
                     "name", result.stderr), result.stderr
    assert re.search(rf"{f}:\d+ \(document 2, Webhook acme/github-push\): spec.verify: unknown "
                     "scheme 'nope'", result.stderr), result.stderr
    assert result.stdout == ""


def test_validate_rejects_plaintext_secret_unless_allowed(tmp_path: Path) -> None:
    hook = json.loads(json.dumps(WEBHOOK))
    hook["spec"]["verify"]["secret"] = "hunter2-plain"
    f = write(tmp_path / "plain.yaml", NAMESPACE, hook)
    result = run(None, "validate", "-f", str(f))
    assert result.exit_code == 1
    # Written as one string, named as written: `secret`, not the schema's `secret[0]`.
    assert re.search(rf"{f}:\d+ \(document 2, Webhook acme/github-push\): spec.verify.secret: "
                     "plaintext secret", result.stderr), result.stderr
    assert "hunter2-plain" not in result.output
    assert run(None, "validate", "-f", str(f), "--allow-plaintext-secrets").exit_code == 0


def test_validate_missing_file_exits_1(tmp_path: Path) -> None:
    result = run(None, "validate", "-f", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "cannot read" in result.stderr and "nope.yaml" in result.stderr


# --- apply ------------------------------------------------------------------------------------------


def test_apply_sends_documents_as_parsed_with_sources_and_flags(
    cp: FakeControlPlane, tmp_path: Path
) -> None:
    f = write(tmp_path / "acme.yaml", NAMESPACE, CONNECTION, WEBHOOK)
    cp.routes["POST", "/v1/apply"] = apply_answer(
        ("create", "Namespace", None, "acme"), ("update", "Connection", "acme", "acme-api"),
        ("unchanged", "Webhook", "acme", "github-push"))
    result = run(cp, "apply", "-f", str(f), "--prune", "-m", "rotate [keys]",
                 "--expected-revision", "6")
    assert result.exit_code == 0, result.output
    request = cp.requests[0]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert cp.body() == {
        "resources": [NAMESPACE, CONNECTION, WEBHOOK],  # nothing added, nothing stripped
        "dry_run": False,
        "prune": True,
        "expected_revision": 6,
        "message": "rotate [keys]",
        "sources": [f"{f}[0]", f"{f}[1]", f"{f}[2]"],
    }
    assert result.stdout.splitlines() == [
        "namespace acme created",
        "connection acme/acme-api updated",
        "webhook acme/github-push unchanged",
        "revision 7",
    ]


def test_apply_dry_run_and_json_output(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    answer = apply_answer(("create", "Webhook", "acme", "github-push"), dry_run=True)
    cp.routes["POST", "/v1/apply"] = answer
    result = run(cp, "apply", "-f", str(f), "--dry-run", "-o", "json")
    assert result.exit_code == 0, result.output
    assert cp.body()["dry_run"] is True
    assert json.loads(result.stdout) == answer
    text = run(cp, "apply", "-f", str(f), "--dry-run").stdout
    assert "webhook acme/github-push created (dry run)" in text
    assert "revision 7 (dry run: nothing written)" in text


def test_apply_invalid_files_send_nothing(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "bad.yaml", dict(WEBHOOK, spec={"verify": {"scheme": "github"}}))
    result = run(cp, "apply", "-f", str(f))
    assert result.exit_code == 1
    assert re.search(rf"{f}:\d+ \(document 1, Webhook acme/github-push\): spec.chain",
                     result.stderr), result.stderr
    assert cp.requests == []


def test_apply_422_prints_each_server_error(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "acme.yaml", CONNECTION, WEBHOOK)
    cp.routes["POST", "/v1/apply"] = httpx.Response(422, json={"detail": {"errors": [
        {"source": f"{f}", "document": 1, "field": "spec.chain.steps[1].connection",
         "reason": "unknown connection 'acme-api'"},
        {"source": "store", "document": None, "field": "", "reason": "quota exceeded"},
    ]}})
    result = run(cp, "apply", "-f", str(f))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "error: 2 errors in the documents"
    assert re.fullmatch(rf"{f}:\d+ \(document 2, Webhook acme/github-push\): "
                        r"spec.chain.steps\[1\].connection: unknown connection 'acme-api'",
                        lines[1].strip()), lines[1]
    assert lines[2].strip() == "store: quota exceeded"
    assert result.stdout == ""


def test_apply_409_names_current_revision(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    cp.routes["POST", "/v1/apply"] = httpx.Response(
        409, json={"detail": {"error": "revision conflict", "current_revision": 9}})
    result = run(cp, "apply", "-f", str(f), "--expected-revision", "8")
    assert result.exit_code == 1
    assert "error: revision conflict (current revision 9)" in result.stderr


def test_apply_401_and_403_hints(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    cp.routes["POST", "/v1/apply"] = httpx.Response(401, json={"detail": "invalid token"})
    result = run(cp, "apply", "-f", str(f))
    assert result.exit_code == 1
    assert "invalid token" in result.stderr and "WHCTL_TOKEN" in result.stderr
    cp.routes["POST", "/v1/apply"] = httpx.Response(403, json={"detail": "namespace acme"})
    assert "may not use that namespace" in run(cp, "apply", "-f", str(f)).stderr


# --- apply --canary, --wait ---------------------------------------------------------------------


def test_apply_canary_sends_selector_and_windows(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    cp.routes["POST", "/v1/apply"] = apply_answer(("update", "Webhook", "acme", "github-push"))
    result = run(cp, "apply", "-f", str(f), "--canary", "canary=true,zone=b",
                 "--promote-after", "1m30s", "--max-error-rate", "0.05")
    assert result.exit_code == 0, result.output
    body = cp.body()
    assert (body["canary"], body["promote_after_s"], body["max_error_rate"]) == (
        "canary=true,zone=b", 90, 0.05)
    run(cp, "apply", "-f", str(f), "--canary", "canary=true")
    body = cp.body()
    assert (body["canary"], body["promote_after_s"], body["max_error_rate"]) == (
        "canary=true", None, None)
    run(cp, "apply", "-f", str(f))
    assert "canary" not in cp.body()  # a plain apply's body is as it always was


@pytest.mark.parametrize("args", [
    ("--canary", "nope"), ("--canary", "a=b", "--promote-after", "soon"),
    ("--promote-after", "60s"), ("--max-error-rate", "0.1"),
    ("--canary", "a=b", "--max-error-rate", "1.5"), ("--canary", "a=b", "--promote-after", "0"),
    ("--wait=never",),
])
def test_apply_canary_and_wait_usage_errors(cp: FakeControlPlane, tmp_path: Path,
                                            args: tuple[str, ...]) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    result = run(cp, "apply", "-f", str(f), *args)
    assert result.exit_code == 2, result.output
    assert cp.requests == []


def test_apply_409_names_the_running_canary(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    cp.routes["POST", "/v1/apply"] = httpx.Response(409, json={"detail": {
        "error": "canary revision 12 (canary=true, by admin) is running: promote it or abort it "
                 "first (whctl rollout promote | abort)",
        "current_revision": 12, "canary": {"revision": 12, "selector": {"canary": "true"}}}})
    result = run(cp, "apply", "-f", str(f))
    assert result.exit_code == 1
    assert "canary revision 12 (canary=true, by admin) is running" in result.stderr


def status(revision: int, *gateways: dict[str, Any], canary: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    rows = [{"id": g["id"], "revision": g.get("revision"), "refused": g.get("refused", []),
             "applied": (g.get("revision") or 0) >= revision and not g.get("refused")}
            for g in gateways]
    done = sum(r["applied"] for r in rows)
    return {"revision": revision, "complete": bool(rows) and done == len(rows),
            "live": len(rows), "applied": done, "gateways": rows,
            "refusals": [{"gateway": r["id"], **x} for r in rows for x in r["refused"]],
            "canary": canary}


NACK = {"resource": "Webhook/acme/github-push", "reason": "unresolved reference {$SECRET_C}"}


@pytest.mark.parametrize("flag", [("--wait",), ("--wait=2s",), ("--wait", "2s")])
def test_apply_wait_follows_the_new_revision(cp: FakeControlPlane, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             flag: tuple[str, ...]) -> None:
    monkeypatch.setattr("cli.rollout.POLL_INTERVAL_S", 0.01)
    f = write(tmp_path / "w.yaml", WEBHOOK)
    cp.routes["POST", "/v1/apply"] = apply_answer(("update", "Webhook", "acme", "github-push"),
                                                  revision=8)
    answers = iter([status(8, {"id": "gw-a", "revision": 7}),
                    status(8, {"id": "gw-a", "revision": 8})])
    cp.routes["GET", "/v1/rollout/status"] = lambda _: httpx.Response(200, json=next(answers))
    # --wait before -f too: a bare --wait is followed by an option, not by a value
    result = run(cp, "apply", *flag, "-f", str(f))
    assert result.exit_code == 0, result.output
    assert cp.requests[1].url.params["revision"] == "8"
    assert "revision 8: applied by 1/1" in result.stderr


def test_apply_wait_exits_1_at_once_naming_the_refusal(cp: FakeControlPlane,
                                                        tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    cp.routes["POST", "/v1/apply"] = apply_answer(("update", "Webhook", "acme", "github-push"),
                                                  revision=8)
    cp.routes["GET", "/v1/rollout/status"] = status(
        8, {"id": "gw-a", "revision": 8}, {"id": "gw-b", "revision": 8, "refused": [NACK]})
    result = run(cp, "apply", "-f", str(f), "--wait=1h")  # exits long before an hour
    assert result.exit_code == 1, result.output
    assert "gw-b: Webhook/acme/github-push: unresolved reference {$SECRET_C}" in result.stderr
    assert "gw-a:" not in result.stderr


def test_apply_wait_with_json_output_keeps_stdout_json(cp: FakeControlPlane,
                                                       tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    answer = apply_answer(("update", "Webhook", "acme", "github-push"), revision=8)
    cp.routes["POST", "/v1/apply"] = answer
    cp.routes["GET", "/v1/rollout/status"] = status(8, {"id": "gw-a", "revision": 8})
    result = run(cp, "apply", "-f", str(f), "-o", "json", "--wait")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == answer


def test_apply_dry_run_does_not_wait(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    cp.routes["POST", "/v1/apply"] = apply_answer(dry_run=True)
    assert run(cp, "apply", "-f", str(f), "--dry-run", "--wait").exit_code == 0
    assert len(cp.requests) == 1


# --- diff ----------------------------------------------------------------------------------------------


def test_diff_exit_codes_and_coloured_unified_diff(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    cp.routes["POST", "/v1/diff"] = {"revision": 4, "changes": [
        {"op": "unchanged", "kind": "Webhook", "namespace": "acme", "name": "github-push",
         "before": WEBHOOK, "after": WEBHOOK}]}
    same = run(cp, "diff", "-f", str(f))
    assert same.exit_code == 0, same.output
    assert same.stdout == ""
    assert cp.body() == {"resources": [WEBHOOK], "prune": False}

    after = json.loads(json.dumps(WEBHOOK))
    after["spec"]["delivery"]["mode"] = "async"
    cp.routes["POST", "/v1/diff"] = {"revision": 4, "changes": [
        {"op": "update", "kind": "Webhook", "namespace": "acme", "name": "github-push",
         "before": WEBHOOK, "after": after},
        {"op": "delete", "kind": "Connection", "namespace": None, "name": "events",
         "before": GLOBAL_CONNECTION, "after": None}]}
    differ = run(cp, "diff", "-f", str(f), "--prune")
    assert differ.exit_code == 1, differ.output
    assert cp.body()["prune"] is True
    lines = differ.stdout.splitlines()
    assert "--- Webhook/acme/github-push (revision 4)" in lines
    assert "+++ Webhook/acme/github-push (local)" in lines
    assert "-    mode: sync" in lines and "+    mode: async" in lines
    assert "+++ /dev/null" in lines and "-kind: Connection" in lines
    assert "\x1b[" not in differ.stdout  # not a terminal: no colour codes

    terminal = Console(file=io.StringIO(), force_terminal=True, color_system="standard")
    terminal.print(render.diff_text(["-    mode: sync", "+    mode: async"]), end="")
    coloured = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[31m-    mode: sync" in coloured and "\x1b[32m+    mode: async" in coloured


def test_diff_errors_exit_2(cp: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "w.yaml", WEBHOOK)
    cp.routes["POST", "/v1/diff"] = httpx.Response(
        422, json={"detail": {"errors": [{"source": "w.yaml", "document": 0, "field": "x",
                                          "reason": "bad"}]}})
    result = run(cp, "diff", "-f", str(f))
    assert result.exit_code == 2
    assert "w.yaml[0]: x: bad" in result.stderr
    bad = write(tmp_path / "bad.yaml", {"kind": "Nope"})
    assert run(cp, "diff", "-f", str(bad)).exit_code == 2


# --- get -----------------------------------------------------------------------------------------------


def test_get_webhooks_table(cp: FakeControlPlane) -> None:
    cp.routes["GET", "/v1/resources"] = {"revision": 3, "items": [WEBHOOK]}
    result = run(cp, "get", "webhooks", "-n", "acme")
    assert result.exit_code == 0, result.output
    assert dict(cp.requests[0].url.params) == {"kind": "Webhook", "namespace": "acme"}
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "NAMESPACE", "SCHEME", "MODE", "STEPS"]
    assert row.split() == ["github-push", "acme", "github", "sync", "log,http"]


def test_get_connections_table_shows_host_only(cp: FakeControlPlane) -> None:
    cp.routes["GET", "/v1/resources"] = {"revision": 3, "items": [CONNECTION, GLOBAL_CONNECTION]}
    result = run(cp, "get", "connections", "-A")
    assert result.exit_code == 0, result.output
    assert "namespace" not in cp.requests[0].url.params
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["NAME", "NAMESPACE", "TYPE", "URL", "HOST"]
    assert rows[1] == ["acme-api", "acme", "http", "api.acme.example"]
    assert rows[2] == ["events", "_global", "redis", "{$WH_REDIS_URL:...}"]
    for secretish in ("Bearer", "vault:acme/api", "pw", "secretpw", "/hooks"):
        assert secretish not in result.stdout


def test_get_namespaces_table(cp: FakeControlPlane) -> None:
    cp.routes["GET", "/v1/resources"] = {"revision": 3, "items": [NAMESPACE]}
    result = run(cp, "get", "namespaces")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split(None, 1) == ["acme", NAMESPACE["spec"]["description"]]


def test_get_json_is_a_list(cp: FakeControlPlane) -> None:
    cp.routes["GET", "/v1/resources"] = {"revision": 3, "items": [WEBHOOK, NAMESPACE]}
    result = run(cp, "get", "webhooks", "-o", "json")
    assert json.loads(result.stdout) == [WEBHOOK, NAMESPACE]


def test_get_yaml_round_trips_through_apply(cp: FakeControlPlane, tmp_path: Path) -> None:
    items = [NAMESPACE, CONNECTION, WEBHOOK]
    cp.routes["GET", "/v1/resources"] = {"revision": 3, "items": items}
    result = run(cp, "get", "webhooks", "-o", "yaml")
    assert result.exit_code == 0, result.output
    exported = tmp_path / "exported.yaml"
    exported.write_text(result.stdout, encoding="utf-8")
    assert len(load_paths([exported])) == 3  # valid as it stands
    cp.routes["POST", "/v1/apply"] = apply_answer()
    assert run(cp, "apply", "-f", str(exported)).exit_code == 0
    assert cp.body()["resources"] == items


def test_get_one_by_name(cp: FakeControlPlane) -> None:
    cp.routes["GET", "/v1/resources/Webhook/acme/github-push"] = WEBHOOK
    result = run(cp, "get", "webhooks", "github-push", "-n", "acme", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [WEBHOOK]
    cp.routes["GET", "/v1/resources/Namespace/_global/acme"] = NAMESPACE
    assert run(cp, "get", "namespaces", "acme", "-o", "json").exit_code == 0
    # Without -n: searched in every namespace the token may read.
    cp.routes["GET", "/v1/resources"] = {"revision": 3, "items": [WEBHOOK]}
    assert run(cp, "get", "webhooks", "github-push", "-o", "json").exit_code == 0
    missing = run(cp, "get", "webhooks", "other")
    assert missing.exit_code == 1 and "other not found" in missing.stderr
    gone = run(cp, "get", "webhooks", "gone", "-n", "acme")
    assert gone.exit_code == 1 and "error: not found" in gone.stderr


def test_get_usage_errors(cp: FakeControlPlane) -> None:
    assert run(cp, "get", "webhooks", "-n", "acme", "-A").exit_code == 2
    assert run(cp, "get", "namespaces", "-n", "acme").exit_code == 2
    assert run(cp, "get", "gadgets").exit_code == 2
    assert cp.requests == []


# --- delete ------------------------------------------------------------------------------------------


def test_delete(cp: FakeControlPlane) -> None:
    cp.routes["DELETE", "/v1/resources/Webhook/acme/github-push"] = apply_answer(
        ("delete", "Webhook", "acme", "github-push"), revision=8)
    result = run(cp, "delete", "webhook", "github-push", "-n", "acme", "-m", "gone")
    assert result.exit_code == 0, result.output
    assert cp.requests[0].url.params["message"] == "gone"
    assert result.stdout.splitlines() == ["webhook acme/github-push deleted", "revision 8"]
    cp.routes["DELETE", "/v1/resources/Connection/_global/events"] = apply_answer(
        ("delete", "Connection", None, "events"))
    assert run(cp, "delete", "connection", "events").stdout.startswith("connection events deleted")
    assert run(cp, "delete", "webhook", "github-push").exit_code == 2  # needs -n
    assert run(cp, "delete", "webhook", "nope", "-n", "acme").exit_code == 1  # 404


# --- rollout -----------------------------------------------------------------------------------------


def rollout(revision: int, *applied: tuple[str, int | None]) -> dict[str, Any]:
    gws = [{"id": gid, "revision": rev, "applied": rev is not None and rev >= revision}
           for gid, rev in applied]
    done = sum(g["applied"] for g in gws)
    return {"revision": revision, "complete": done == len(gws), "live": len(gws),
            "applied": done, "gateways": gws}


def test_rollout_status_waits_for_the_first_answers_revision(
    cp: FakeControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cli.rollout.POLL_INTERVAL_S", 0.01)
    answers = iter([rollout(5, ("gw-a", 5), ("gw-b", 4)), rollout(5, ("gw-a", 5), ("gw-b", 5))])
    cp.routes["GET", "/v1/rollout/status"] = lambda _: httpx.Response(200, json=next(answers))
    result = run(cp, "rollout", "status")
    assert result.exit_code == 0, result.output
    assert "revision" not in cp.requests[0].url.params
    assert cp.requests[1].url.params["revision"] == "5"
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["GATEWAY", "REVISION", "APPLIED"], ["gw-a", "5", "yes"], ["gw-b", "5", "yes"]]
    assert "applied by 2/2" in result.stderr


def test_rollout_status_timeout_names_lagging_gateways(cp: FakeControlPlane) -> None:
    cp.routes["GET", "/v1/rollout/status"] = rollout(6, ("gw-a", 6), ("gw-b", 5), ("gw-c", None))
    result = run(cp, "rollout", "status", "--revision", "6", "--timeout", "50ms")
    assert result.exit_code == 1, result.output
    assert cp.requests[0].url.params["revision"] == "6"
    assert "timed out after 0.05s" in result.stderr
    assert "gw-b is at revision 5" in result.stderr and "gw-c is at revision -" in result.stderr
    assert "gw-a is at" not in result.stderr
    assert "gw-b" in result.stdout  # the final table, on stdout


def test_rollout_status_exits_1_at_once_on_a_refusal_of_the_awaited_revision(
    cp: FakeControlPlane,
) -> None:
    cp.routes["GET", "/v1/rollout/status"] = status(
        6, {"id": "gw-a", "revision": 6}, {"id": "gw-b", "revision": 6, "refused": [NACK]},
        {"id": "gw-c", "revision": 5, "refused": [{"resource": "Webhook/acme/old",
                                                     "reason": "not about revision 6"}]})
    result = run(cp, "rollout", "status", "--timeout", "1h")
    assert result.exit_code == 1, result.output
    assert len(cp.requests) == 1  # no waiting for the timeout
    assert "gw-b: Webhook/acme/github-push: unresolved reference {$SECRET_C}" in result.stderr
    assert "Webhook/acme/old" not in result.stderr  # gw-c has not reached revision 6 yet
    assert result.stdout.splitlines()[0].split() == ["GATEWAY", "REVISION", "APPLIED", "REFUSED"]


CANARY = {"revision": 12, "base": 11, "selector": {"canary": "true"},
          "selector_text": "canary=true", "started": 1_700_000_000, "by": "admin",
          "promote_after_s": 60.0, "promote_in_s": 42.0, "max_error_rate": 0.05,
          "requests": 40, "errors": 1, "error_rate": 0.025, "message": "try it",
          "waiting": "healthy; promotes itself in 42s",
          "gateways": [{"id": "gw-a", "revision": 12, "serving": True, "refused": []}]}


def test_rollout_status_shows_a_canary_complete_once_canary_gateways_serve_it(
    cp: FakeControlPlane,
) -> None:
    cp.routes["GET", "/v1/rollout/status"] = status(
        12, {"id": "gw-a", "revision": 12}, {"id": "gw-b", "revision": 11},
        {"id": "gw-c", "revision": 11}, canary=CANARY)
    result = run(cp, "rollout", "status", "--timeout", "1h")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0].split() == ["GATEWAY", "REVISION", "APPLIED", "CANARY"]
    assert out.splitlines()[1].split() == ["gw-a", "12", "yes", "yes"]
    assert out.splitlines()[2].split() == ["gw-b", "11", "no", "no"]
    assert "canary revision 12 (from revision 11), selector canary=true" in out
    assert "canary gateway gw-a: revision 12, serving" in out
    assert "40 request(s), 1 error(s) (2.5%), aborts itself above 5.0%" in out
    assert "42s left" in out
    assert "served by 1/1 canary gateway(s); 2 other gateway(s) stay at revision 11" in (
        result.stderr)


def test_rollout_status_of_a_canary_nobody_serves_times_out(cp: FakeControlPlane) -> None:
    nobody = {**CANARY, "gateways": []}
    cp.routes["GET", "/v1/rollout/status"] = status(12, {"id": "gw-b", "revision": 11},
                                                    canary=nobody)
    result = run(cp, "rollout", "status", "--timeout", "10ms")
    assert result.exit_code == 1
    assert "no live gateway matches the canary selector canary=true" in result.stderr


def test_waiting_for_a_canary_that_is_aborted_exits_1_saying_why(
    cp: FakeControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cli.rollout.POLL_INTERVAL_S", 0.01)
    behind = {**CANARY, "gateways": [{"id": "gw-a", "revision": 11, "serving": False}]}
    answers = iter([
        status(12, {"id": "gw-a", "revision": 11}, {"id": "gw-b", "revision": 11}, canary=behind),
        # aborted: everyone is at the revert, past 12, and no canary runs
        status(12, {"id": "gw-a", "revision": 13}, {"id": "gw-b", "revision": 13}),
    ])
    cp.routes["GET", "/v1/rollout/status"] = lambda _: httpx.Response(200, json=next(answers))
    cp.routes["GET", "/v1/history"] = {"items": [{
        "revision": 13, "author": "control plane (automatic)", "changes": [],
        "rollout": {"action": "abort", "canary": {"revision": 12},
                    "reason": "canary gateway NACK: gw-a refused Webhook/acme/x: boom"}}]}
    result = run(cp, "rollout", "status", "--timeout", "1h")
    assert result.exit_code == 1, result.output
    assert ("canary revision 12 was aborted by control plane (automatic) in revision 13: "
            "canary gateway NACK: gw-a refused Webhook/acme/x: boom") in result.stderr


def test_rollout_promote_and_abort(cp: FakeControlPlane) -> None:
    cp.routes["POST", "/v1/rollout/promote"] = apply_answer(revision=13)
    result = run(cp, "rollout", "promote", "-m", "looks good")
    assert result.exit_code == 0, result.output
    assert cp.body() == {"message": "looks good"}
    assert result.stdout.splitlines() == ["revision 13"]
    assert "promoted" in result.stderr
    cp.routes["POST", "/v1/rollout/abort"] = apply_answer(
        ("update", "Webhook", "acme", "github-push"), revision=14)
    result = run(cp, "rollout", "abort")
    assert result.exit_code == 0, result.output
    assert cp.body() == {"message": ""}
    assert result.stdout.splitlines() == ["webhook acme/github-push updated", "revision 14"]
    cp.routes["POST", "/v1/rollout/abort"] = httpx.Response(
        404, json={"detail": "no canary is running"})
    result = run(cp, "rollout", "abort")
    assert result.exit_code == 1 and "no canary is running" in result.stderr


def test_rollout_history_shows_canary_decisions(cp: FakeControlPlane) -> None:
    canary = {"revision": 12, "selector": {"canary": "true"}}
    cp.routes["GET", "/v1/history"] = {"items": [
        {"revision": 13, "author": "control plane (automatic)", "message": "abort", "time": 0,
         "changes": [], "rollout": {"action": "abort", "canary": canary,
                                    "reason": "canary gateway NACK"}},
        {"revision": 12, "author": "admin", "message": "m", "time": 0, "changes": [],
         "rollout": {"action": "canary", "canary": canary}}]}
    result = run(cp, "rollout", "history")
    assert result.exit_code == 0, result.output
    assert "canary revision 12 aborted: canary gateway NACK" in result.stdout
    assert "canary started for canary=true" in result.stdout


def test_rollout_status_rejects_bad_duration(cp: FakeControlPlane) -> None:
    assert run(cp, "rollout", "status", "--timeout", "soon").exit_code == 2
    assert cp.requests == []


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("2m", 120), ("500ms", 0.5), ("1.5", 1.5), ("1m30s", 90), ("1h", 3600), ("0", 0),
    ("30d", 30 * 86400),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "-1s", "10x", "1s2", "inf", "nan", "m30s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_rollout_history(cp: FakeControlPlane) -> None:
    cp.routes["GET", "/v1/history"] = {"items": [{
        "revision": 12, "author": "admin", "message": "rotate", "time": 1_700_000_000,
        "changes": [{"op": "update", "kind": "Webhook", "namespace": "acme",
                     "name": "github-push"}]}]}
    result = run(cp, "rollout", "history", "-n", "acme", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert dict(cp.requests[0].url.params) == {"namespace": "acme", "limit": "5"}
    row = result.stdout.splitlines()[1]
    for part in ("12", "2023-11-14T22:13:20Z", "admin", "rotate", "updated webhook acme/github-push"):
        assert part in row


def test_rollout_undo(cp: FakeControlPlane) -> None:
    cp.routes["POST", "/v1/rollback"] = apply_answer(
        ("update", "Webhook", "acme", "github-push"), revision=13)
    result = run(cp, "rollout", "undo", "-n", "acme", "--to-revision", "10", "-m", "oops")
    assert result.exit_code == 0, result.output
    assert cp.body() == {"namespace": "acme", "to_revision": 10, "message": "oops"}
    assert result.stdout.splitlines() == ["webhook acme/github-push updated", "revision 13"]
    run(cp, "rollout", "undo", "-n", "acme")
    assert cp.body() == {"namespace": "acme", "to_revision": None, "message": ""}
    assert run(cp, "rollout", "undo").exit_code == 2  # -n is required


# --- gateways, tokens ------------------------------------------------------------------------------


def test_gateways(cp: FakeControlPlane) -> None:
    items = [{"id": "gw-a", "revision": 5, "version": "0.1.0", "health": "ok", "last_error": None,
              "heartbeat": "2024-05-01T10:00:00Z", "live": True},
             {"id": "gw-b", "revision": 5, "version": "0.1.0", "health": "degraded",
              "last_error": None, "heartbeat": "2024-05-01T10:00:00Z", "live": True,
              "labels": {"zone": "b", "canary": "true"},
              "refused": [{"resource": "Webhook/acme/x", "reason": "r1"},
                          {"resource": "Webhook/acme/y", "reason": "r2"}]}]
    cp.routes["GET", "/v1/gateways"] = {"items": items}
    table = run(cp, "gateways")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "REVISION", "VERSION", "HEALTH", "REFUSED", "LABELS",
                                "LIVE", "HEARTBEAT", "LAST", "ERROR"]
    assert lines[1].split() == ["gw-a", "5", "0.1.0", "ok", "0", "-", "yes",
                                "2024-05-01T10:00:00Z"]
    assert lines[2].split() == ["gw-b", "5", "0.1.0", "degraded", "2", "canary=true,zone=b",
                                "yes", "2024-05-01T10:00:00Z"]
    assert json.loads(run(cp, "gateways", "-o", "json").stdout) == items


def test_tokens_create_prints_only_the_token(cp: FakeControlPlane) -> None:
    cp.routes["POST", "/v1/tokens"] = {"token": "ns-acme.s3cr3t:smile:[b]", "namespace": "acme"}
    result = run(cp, "tokens", "create", "--namespace", "acme")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ns-acme.s3cr3t:smile:[b]\n"
    assert cp.body() == {"namespace": "acme"}


def test_tokens_create_expires(cp: FakeControlPlane) -> None:
    cp.routes["POST", "/v1/tokens"] = {"token": "whp_x", "namespace": "acme", "id": "abc",
                                       "expires": 1_700_000_000}
    result = run(cp, "tokens", "create", "-n", "acme", "--expires", "30d")
    assert result.exit_code == 0, result.output
    assert result.stdout == "whp_x\n"
    assert cp.body() == {"namespace": "acme", "expires_in_s": 30 * 86400}
    assert "expires 2023-11-14T22:13:20Z" in result.stderr
    assert run(cp, "tokens", "create", "-n", "acme", "--expires", "soon").exit_code == 2
    assert run(cp, "tokens", "create", "-n", "acme", "--expires", "0s").exit_code == 2
    assert len(cp.requests) == 1


def test_tokens_list_never_shows_a_token(cp: FakeControlPlane) -> None:
    items = [{"id": "0123456789ab", "namespace": "acme", "created": 1_700_000_000,
              "expires": None, "last_used": None, "created_by": "admin"}]
    cp.routes["GET", "/v1/tokens"] = {"items": items}
    table = run(cp, "tokens", "list")
    assert table.exit_code == 0, table.output
    assert [line.split() for line in table.stdout.splitlines()] == [
        ["ID", "NAMESPACE", "CREATED", "EXPIRES", "LAST", "USED"],
        ["0123456789ab", "acme", "2023-11-14T22:13:20Z", "never", "never"]]
    assert json.loads(run(cp, "tokens", "list", "-o", "json").stdout) == items


def test_tokens_revoke(cp: FakeControlPlane) -> None:
    cp.routes["DELETE", "/v1/tokens/0123456789ab"] = {"id": "0123456789ab", "namespace": "acme",
                                                      "revoked": True}
    result = run(cp, "tokens", "revoke", "0123456789ab")
    assert result.exit_code == 0, result.output
    assert "0123456789ab of namespace acme revoked" in result.stderr
    cp.routes["DELETE", "/v1/tokens/nope"] = httpx.Response(
        404, json={"detail": "no token with id 'nope'"})
    missing = run(cp, "tokens", "revoke", "nope")
    assert missing.exit_code == 1 and "no token with id 'nope'" in missing.stderr


def test_other_namespace_is_refused_not_empty(cp: FakeControlPlane) -> None:
    refused = httpx.Response(403, json={"detail": "token:abc may not read namespace 't2'"})
    cp.routes["GET", "/v1/resources"] = refused
    cp.routes["GET", "/v1/history"] = refused
    for args in (("get", "webhooks", "-n", "t2"), ("rollout", "history", "-n", "t2")):
        result = run(cp, *args)
        assert result.exit_code == 1, result.output
        assert "may not read namespace 't2'" in result.stderr and result.stdout == ""


# --- server, token, transport errors ---------------------------------------------------------------


def test_token_from_env_file_or_nowhere(cp: FakeControlPlane, tmp_path: Path) -> None:
    cp.routes["GET", "/v1/gateways"] = {"items": []}
    assert run(cp, "gateways").exit_code == 0
    assert cp.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"

    token_file = tmp_path / "token"
    token_file.write_text("from-file\n", encoding="utf-8")
    assert run(cp, "--token-file", str(token_file), "gateways").exit_code == 0
    assert cp.requests[-1].headers["authorization"] == "Bearer from-file"  # the flag wins

    assert run(cp, "gateways", env={"WHCTL_TOKEN": None}).exit_code == 0
    assert "authorization" not in cp.requests[-1].headers

    missing = run(cp, "--token-file", str(tmp_path / "none"), "gateways")
    assert missing.exit_code == 2 and "cannot read the token file" in missing.stderr


def test_no_token_on_the_command_line(cp: FakeControlPlane) -> None:
    result = run(cp, "--token", "abc", "gateways")
    assert result.exit_code == 2
    assert cp.requests == []

    def options(command: Any) -> list[str]:
        names = [o for p in command.params for o in getattr(p, "opts", [])]
        for sub in getattr(command, "commands", {}).values():
            names += options(sub)
        return names

    assert not [o for o in options(typer.main.get_command(app)) if o.startswith("--token")
                and o != "--token-file"]


def test_connection_refused_names_the_server(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    url = f"http://127.0.0.1:{port}"
    result = run(None, "gateways", env={"WHCTL_SERVER": url})
    assert result.exit_code == 2
    assert f"cannot reach the control plane at {url}: connection refused" in result.stderr
    assert "--server" in result.stderr and "WHCTL_SERVER" in result.stderr
    f = write(tmp_path / "w.yaml", WEBHOOK)
    assert run(None, "--server", url, "diff", "-f", str(f)).exit_code == 2


def test_timeout_is_applied_and_reported() -> None:
    seen: list[Any] = []

    def slow(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        raise httpx.ReadTimeout("timed out", request=request)

    client = httpx.Client(transport=httpx.MockTransport(slow), base_url="http://cp.test")
    result = CliRunner().invoke(app, ["--request-timeout", "2.5", "gateways"], obj=client,
                                env={"WHCTL_TOKEN": TOKEN})
    assert result.exit_code == 2
    assert "no answer within 2.5 s" in result.stderr
    assert seen[0]["read"] == 2.5


def test_injected_api_client_is_used_as_is(cp: FakeControlPlane) -> None:
    cp.routes["GET", "/v1/gateways"] = {"items": []}
    api = ApiClient(token="injected", http=cp.client())
    assert "injected" not in repr(api)
    result = CliRunner().invoke(app, ["gateways"], obj=api, env={"WHCTL_TOKEN": "ignored"})
    assert result.exit_code == 0, result.output
    assert cp.requests[0].headers["authorization"] == "Bearer injected"
