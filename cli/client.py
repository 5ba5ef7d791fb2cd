"""A small typed client of the control-plane API (docs/design.md section 5).

    ClientError          base of everything this module raises
    ├── ApiError         the control plane answered with an error status (4xx, 5xx)
    └── Unreachable      no answer at all: connection refused, timeout, TLS or protocol failure

`ApiClient` owns an `httpx.Client` unless one is handed in: tests pass
`httpx.Client(transport=httpx.MockTransport(handler), base_url=...)`, end-to-end tests can pass
FastAPI's `TestClient(app)` (an `httpx.Client` too). The token is sent per request, so an injected
client needs no auth setup of its own, and every request carries the client's timeout.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from types import TracebackType
from typing import Any, TypedDict
from urllib.parse import quote

import httpx

__all__ = [
    "DEFAULT_SERVER",
    "DEFAULT_TIMEOUT",
    "GLOBAL",
    "ApiClient",
    "ApiError",
    "ClientError",
    "TokenInfo",
    "Unreachable",
]

DEFAULT_SERVER = "http://127.0.0.1:8070"
DEFAULT_TIMEOUT = 30.0
CONTROL_PLANE_TITLE = "whplane control plane"  # the title of its OpenAPI document
NO_TOKEN = ("no token was given: set WHCTL_TOKEN or pass --token-file (the admin token's file, "
            "or a namespace token from `whctl tokens create`)")
GLOBAL = "_global"  # the path segment of global connections and of Namespace resources

Doc = dict[str, Any]


class Change(TypedDict, total=False):
    op: str  # create | update | delete | unchanged
    kind: str
    namespace: str | None
    name: str
    before: Doc | None  # diff and history records only
    after: Doc | None


class ApplyAnswer(TypedDict, total=False):
    revision: int
    dry_run: bool
    changes: list[Change]


class DiffAnswer(TypedDict):
    revision: int
    changes: list[Change]


class ResourceList(TypedDict):
    revision: int
    items: list[Doc]


class HistoryRecord(TypedDict, total=False):
    revision: int
    author: str
    message: str
    time: str | float
    changes: list[Change]
    rollout: dict[str, Any]  # a canary decision: {"action", "canary", "reason"}


class Refusal(TypedDict, total=False):
    resource: str  # Kind/namespace/name
    reason: str


class Gateway(TypedDict, total=False):
    id: str
    revision: int | None
    version: str
    health: str
    last_error: str | None
    heartbeat: str | float | None
    live: bool
    labels: dict[str, str]
    refused: list[Refusal]


class GatewayProgress(TypedDict, total=False):
    id: str
    revision: int | None
    applied: bool
    health: str
    labels: dict[str, str]
    refused: list[Refusal]


class GatewayRefusal(TypedDict, total=False):
    gateway: str
    resource: str
    reason: str


class CanaryGateway(TypedDict, total=False):
    id: str
    revision: int | None
    health: str
    serving: bool
    refused: list[Refusal]
    requests: int
    errors: int


class CanaryStatus(TypedDict, total=False):
    revision: int
    base: int
    selector: dict[str, str]
    selector_text: str
    started: float
    promote_after_s: float | None
    max_error_rate: float | None
    by: str
    message: str
    gateways: list[CanaryGateway]
    requests: int
    errors: int
    error_rate: float | None
    promote_in_s: float | None
    waiting: str


class RolloutStatus(TypedDict, total=False):
    revision: int
    complete: bool
    live: int
    applied: int
    gateways: list[GatewayProgress]
    refusals: list[GatewayRefusal]
    canary: CanaryStatus | None


class TokenInfo(TypedDict, total=False):
    id: str
    namespace: str
    created: float | None
    expires: float | None
    last_used: float | None
    created_by: str


class TokenAnswer(TokenInfo, total=False):
    token: str


class ClientError(Exception):
    """Base class of the errors of talking to the control plane."""


class ApiError(ClientError):
    """The control plane answered `status` with FastAPI's `{"detail": ...}` body."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(str(self))

    @property
    def document_errors(self) -> list[dict[str, Any]]:
        """The per-document errors of a 422 answer to apply or diff (may be empty)."""
        if isinstance(self.detail, dict) and isinstance(self.detail.get("errors"), list):
            return [e for e in self.detail["errors"] if isinstance(e, dict)]
        return []

    def __str__(self) -> str:
        detail = self.detail
        if self.document_errors:
            n = len(self.document_errors)
            message = f"{n} error{'s' if n != 1 else ''} in the documents"
            if self.status == 403:  # the documents say why: no hint to add
                return f"{n} document{'s' if n != 1 else ''} this token may not write"
        elif isinstance(detail, dict) and "error" in detail:
            message = str(detail["error"])
            if detail.get("current_revision") is not None:
                message += f" (current revision {detail['current_revision']})"
        elif isinstance(detail, list):
            # FastAPI's own request validation: [{"loc": [...], "msg": ...}, ...]
            message = "; ".join(_fastapi_error(e) for e in detail)
        elif detail in (None, ""):
            message = f"HTTP {self.status}"
        else:
            message = str(detail)
        hint = _HINTS.get(self.status) if detail != NO_TOKEN else None
        return f"{message} ({hint})" if hint else message


_HINTS = {
    401: "the control plane refused the token: set WHCTL_TOKEN or --token-file",
    403: "this token may not use that namespace",
    413: "too large for the control plane",
}


def _fastapi_error(e: Any) -> str:
    if isinstance(e, dict) and "msg" in e:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        return f"{loc}: {e['msg']}" if loc else str(e["msg"])
    return str(e)


class Unreachable(ClientError):
    """No answer from the control plane; the message says how to point whctl elsewhere."""

    def __init__(self, server: str, reason: str) -> None:
        self.server = server
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"cannot reach the control plane at {self.server}: {self.reason} "
            "(set the URL with --server or WHCTL_SERVER; start one with `whplane control-plane`)"
        )


def _json_default(value: object) -> object:
    # YAML gives dates and bytes where JSON has none; send them the way YAML wrote them.
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot send a {type(value).__name__} value as JSON")


def _segment(value: str) -> str:
    return quote(value, safe="")


class ApiClient:
    """One method per control-plane endpoint; answers are the decoded JSON bodies."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(base_url=server)
        self.server = server if http is None else str(self._http.base_url).rstrip("/")
        self.timeout = timeout
        self._token = token

    def __repr__(self) -> str:
        # Never the token: reprs end up in tracebacks and logs.
        auth = "token" if self._token else "no token"
        return f"ApiClient({self.server!r}, {auth}, timeout={self.timeout:g})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """Send one request; return the JSON answer or raise ApiError / Unreachable."""
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = json.dumps(body, default=_json_default).encode()
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, path, params=query, content=content, headers=headers,
                timeout=self.timeout,
            )
        except httpx.ConnectError as exc:
            raise Unreachable(self.server, _connect_reason(exc)) from exc
        except httpx.TimeoutException as exc:
            raise Unreachable(
                self.server, f"no answer within {self.timeout:g} s (--request-timeout)"
            ) from exc
        except httpx.TransportError as exc:
            raise Unreachable(self.server, str(exc) or type(exc).__name__) from exc
        if response.status_code >= 400:
            detail = _detail(response)
            if response.status_code == 401 and not self._token:
                detail = NO_TOKEN
            elif response.status_code == 404 and detail == "Not Found":
                detail = self._not_a_control_plane() or detail
            raise ApiError(response.status_code, detail)
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "the answer is not JSON") from None

    def _not_a_control_plane(self) -> str | None:
        """Why an API route answered the framework's bare 404, when --server is not a control
        plane: a gateway (the usual slip: its port is the one in the curl line), or else."""
        try:
            about = self._http.get("/openapi.json", timeout=self.timeout).json()
            title = str(about.get("info", {}).get("title", ""))
        except (httpx.HTTPError, ValueError, AttributeError):
            title = ""
        if title == CONTROL_PLANE_TITLE:
            return None  # a control plane after all: its own 404 stands
        if "gateway" in title or self._is_gateway():
            return (f"{self.server} is a whplane gateway, not a control plane: point --server "
                    "(or WHCTL_SERVER) at the control plane (whplane up prints its URL)")
        return (f"{self.server} does not serve the control-plane API (/v1): is it a whplane "
                "control plane? (set the URL with --server or WHCTL_SERVER)")

    def _is_gateway(self) -> bool:
        # A gateway serves no OpenAPI page; its /status names its connection layer ("edge").
        try:
            status = self._http.get("/status", timeout=self.timeout).json()
        except (httpx.HTTPError, ValueError):
            return False
        return isinstance(status, dict) and "edge" in status

    # --- endpoints -----------------------------------------------------------------------------

    def apply(
        self,
        resources: list[Doc],
        *,
        sources: list[str] | None = None,
        dry_run: bool = False,
        prune: bool = False,
        expected_revision: int | None = None,
        message: str = "",
        canary: str | None = None,
        promote_after_s: float | None = None,
        max_error_rate: float | None = None,
    ) -> ApplyAnswer:
        body: dict[str, Any] = {
            "resources": resources,
            "dry_run": dry_run,
            "prune": prune,
            "expected_revision": expected_revision,
            "message": message,
            "sources": sources if sources is not None else [],
        }
        if canary is not None:
            body["canary"] = canary
            body["promote_after_s"] = promote_after_s
            body["max_error_rate"] = max_error_rate
        answer: ApplyAnswer = self.request("POST", "/v1/apply", body=body)
        return answer

    def diff(self, resources: list[Doc], *, prune: bool = False) -> DiffAnswer:
        body = {"resources": resources, "prune": prune}
        answer: DiffAnswer = self.request("POST", "/v1/diff", body=body)
        return answer

    def list_resources(self, kind: str, namespace: str | None = None) -> ResourceList:
        answer: ResourceList = self.request(
            "GET", "/v1/resources", params={"kind": kind, "namespace": namespace}
        )
        return answer

    def get_resource(self, kind: str, namespace: str | None, name: str) -> Doc:
        answer: Doc = self.request("GET", self._resource_path(kind, namespace, name))
        return answer

    def delete_resource(
        self, kind: str, namespace: str | None, name: str, *, message: str = ""
    ) -> ApplyAnswer:
        answer: ApplyAnswer = self.request(
            "DELETE", self._resource_path(kind, namespace, name), params={"message": message}
        )
        return answer

    def history(self, namespace: str | None = None, limit: int = 50) -> list[HistoryRecord]:
        answer = self.request("GET", "/v1/history", params={"namespace": namespace,
                                                            "limit": limit})
        items: list[HistoryRecord] = answer["items"]
        return items

    def history_record(self, revision: int) -> HistoryRecord:
        answer: HistoryRecord = self.request("GET", f"/v1/history/{revision}")
        return answer

    def rollback(
        self, namespace: str, *, to_revision: int | None = None, message: str = ""
    ) -> ApplyAnswer:
        body = {"namespace": namespace, "to_revision": to_revision, "message": message}
        answer: ApplyAnswer = self.request("POST", "/v1/rollback", body=body)
        return answer

    def gateways(self) -> list[Gateway]:
        items: list[Gateway] = self.request("GET", "/v1/gateways")["items"]
        return items

    def rollout_status(self, revision: int | None = None) -> RolloutStatus:
        answer: RolloutStatus = self.request(
            "GET", "/v1/rollout/status", params={"revision": revision}
        )
        return answer

    def promote(self, *, message: str = "") -> ApplyAnswer:
        answer: ApplyAnswer = self.request("POST", "/v1/rollout/promote",
                                           body={"message": message})
        return answer

    def abort(self, *, message: str = "") -> ApplyAnswer:
        answer: ApplyAnswer = self.request("POST", "/v1/rollout/abort", body={"message": message})
        return answer

    def create_token(self, namespace: str, expires_in_s: float | None = None) -> TokenAnswer:
        body: dict[str, Any] = {"namespace": namespace}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        answer: TokenAnswer = self.request("POST", "/v1/tokens", body=body)
        return answer

    def list_tokens(self) -> list[TokenInfo]:
        items: list[TokenInfo] = self.request("GET", "/v1/tokens")["items"]
        return items

    def revoke_token(self, token_id: str) -> TokenInfo:
        answer: TokenInfo = self.request("DELETE", f"/v1/tokens/{_segment(token_id)}")
        return answer

    @staticmethod
    def _resource_path(kind: str, namespace: str | None, name: str) -> str:
        ns = namespace or GLOBAL
        return f"/v1/resources/{_segment(kind)}/{_segment(ns)}/{_segment(name)}"


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        # A proxy's HTML error page, say: keep the start, it usually names the problem.
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


def _connect_reason(exc: httpx.ConnectError) -> str:
    text = str(exc)
    if "refused" in text.lower() or "Errno 111" in text:
        return "connection refused"
    return text or "connection failed"
