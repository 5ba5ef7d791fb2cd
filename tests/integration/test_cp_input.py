"""Bad and oversized input against a real control-plane process: authentication comes before
the body is read, bodies have a size limit, and every malformed body is a 4xx that names what
is wrong and changes nothing."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.processes import ControlPlaneProcess
from cli.servers import EtcdServer

ADMIN = "admin-token-for-input"
LIMIT = 1024 * 1024


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def hook(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Webhook",
            "metadata": {"name": name, "namespace": "acme"},
            "spec": {"verify": {"scheme": "github", "secret": "{$vault:acme/gh#secret}"},
                     "chain": {"steps": [{"module": "log"}]}}}


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    env = {"WH_MAX_REQUEST_BYTES": str(LIMIT)}
    with ControlPlaneProcess(f"file:{tmp_path / 'store'}", ADMIN, env) as proc:
        yield proc


def raw_request(url: str, head: str, body: bytes, timeout: float = 5) -> bytes:
    """Send `head` and the start of a body, then read the answer: it must not need the rest."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_authentication_comes_before_the_body(cp: ControlPlaneProcess) -> None:
    # 57 MB announced, 64 KiB sent: the answer must come without the rest of the body.
    head = ("POST /v1/apply HTTP/1.1\r\nHost: cp\r\nContent-Type: application/json\r\n"
            f"Content-Length: {57 * 1024 * 1024}\r\n\r\n")
    answer = raw_request(cp.url, head, b'{"resources": [' + b" " * 65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    bad = head.replace("Host: cp\r\n", "Host: cp\r\nAuthorization: Bearer whp_nope\r\n")
    assert raw_request(cp.url, bad, b"{").startswith(b"HTTP/1.1 401")


def test_bodies_over_the_limit_are_413(cp: ControlPlaneProcess) -> None:
    head = ("POST /v1/apply HTTP/1.1\r\nHost: cp\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {ADMIN}\r\nContent-Length: {LIMIT + 1}\r\n\r\n")
    answer = raw_request(cp.url, head, b"{")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"resources": [], "message": "'
        for _ in range(LIMIT // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    r = httpx.post(f"{cp.url}/v1/apply", content=chunks(), timeout=30,
                   headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 413
    assert f"limit of {LIMIT} bytes" in r.json()["detail"]
    assert "WH_MAX_REQUEST_BYTES" in r.json()["detail"]


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("NaN", b'{"resources": [], "expected_revision": NaN}', "NaN"),
    ("Infinity", b'{"resources": [], "expected_revision": Infinity}', "Infinity"),
    ("-Infinity", b'{"resources": [], "expected_revision": -Infinity}', "-Infinity"),
    ("huge float", b'{"resources": [], "expected_revision": 1e999}', "1e999"),
    ("not UTF-8", b'{"resources": [], "message": "caf\xe9"}', "not UTF-8: byte 33 (0xe9)"),
    ("lone surrogate", b'{"resources": [], "message": "\\ud800"}', "message"),
    ("surrogate deep", b'{"resources": [{"kind": "Webhook", "metadata": {"name": "\\udfff"}}]}',
     '["body", "resources", 0, "metadata", "name"]'),
    ("duplicate key", b'{"resources": [], "dry_run": true, "dry_run": false}', "'dry_run'"),
    ("nested duplicate", b'{"resources": [{"kind": "A", "kind": "B"}]}', "'kind'"),
    ("too deep", b'{"resources": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ("not JSON", b'{"resources": [', "not JSON"),
    ("not an object", b'[1, 2]', "body"),
]


@pytest.mark.parametrize(("what", "body", "named"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_422_naming_the_problem(cp: ControlPlaneProcess, what: str, body: bytes,
                                               named: str) -> None:
    headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    base = httpx.post(f"{cp.url}/v1/apply", json={"resources": [ns("acme")]}, headers=headers)
    assert base.status_code == 200
    for route in ("/v1/apply", "/v1/diff", "/v1/rollback", "/v1/tokens"):
        r = httpx.post(f"{cp.url}{route}", content=body, headers=headers, timeout=30)
        assert r.status_code == 422, (route, r.status_code, r.text[:300])
        if route == "/v1/apply":
            assert named in json.dumps(r.json()["detail"]), r.text[:300]
    history = httpx.get(f"{cp.url}/v1/history", headers=headers).json()["items"]
    assert [h["revision"] for h in history] == [base.json()["revision"]]


def test_revisions_beyond_int64_are_422(cp: ControlPlaneProcess) -> None:
    headers = {"authorization": f"Bearer {ADMIN}"}
    huge = 2**64
    for route, body in (("/v1/apply", {"resources": [], "expected_revision": huge}),
                        ("/v1/rollback", {"namespace": "acme", "to_revision": huge})):
        r = httpx.post(f"{cp.url}{route}", json=body, headers=headers)
        assert r.status_code == 422 and "revision" in r.text, r.text
    for path, params in ((f"/v1/history/{huge}", {}), ("/v1/rollout/status", {"revision": huge})):
        assert httpx.get(f"{cp.url}{path}", params=params, headers=headers).status_code == 422


@pytest.fixture
def small_etcd() -> Iterator[EtcdServer]:
    # etcd's own limit on one request, and gRPC's a little above it (RESOURCE_EXHAUSTED).
    with EtcdServer(extra_args=("--max-request-bytes", str(LIMIT))) as server:
        yield server


def test_etcd_size_refusals_are_413_with_the_fix(small_etcd: EtcdServer) -> None:
    with ControlPlaneProcess(f"etcd://{small_etcd.endpoint}/wh/", ADMIN) as cp:
        headers = {"authorization": f"Bearer {ADMIN}"}
        assert httpx.post(f"{cp.url}/v1/apply", json={"resources": [ns("acme")]},
                          headers=headers).status_code == 200
        # Applies far over etcd's request limit are split to fit it: they go through whole.
        docs = [hook(f"h{i:05d}") for i in range(2500)]
        r = httpx.post(f"{cp.url}/v1/apply", json={"resources": docs}, headers=headers,
                       timeout=120)
        assert r.status_code == 200, r.text[:300]
        # One resource larger than one etcd request cannot be split: 413 with the fix.
        big = hook("big")
        big["metadata"]["labels"] = {"blob": "x" * (LIMIT + 1000)}
        r = httpx.post(f"{cp.url}/v1/apply", json={"resources": [big]}, headers=headers,
                       timeout=120)
        assert r.status_code == 413, r.text[:300]
        assert "--max-request-bytes" in r.json()["detail"]
        items = httpx.get(f"{cp.url}/v1/resources", headers=headers).json()["items"]
        assert sorted({d["kind"] for d in items}) == ["Namespace", "Webhook"]
        assert len(items) == 2501
