"""A small synchronous Vault/OpenBao KV client (over hvac) with async bulk helpers.

Everything the config layer needs of Vault goes through `VaultClient`: KV v1 or v2 reads,
writes, lists and metadata under one mount, authenticated by a token or by AppRole. Each call
has a timeout; every failure comes out as a `SecretBackendError` (a `VaultRequestError`) naming
the operation, the path and the kind of failure, never a secret value.

The client is called from a thread pool: each thread gets its own hvac client and HTTP session
(requests sessions are not thread safe), all sharing one current token. With AppRole, a token
that stops working (403: revoked or expired) is replaced by logging in again, once per call,
and only by one thread at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated, Any, Self, TypeVar
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from providers.errors import SecretBackendError
from providers.url_settings import SETTINGS_CONFIG, PositiveSeconds, env_values, validate

if TYPE_CHECKING:  # hvac and requests are imported by the first call to a Vault
    import hvac
    import requests

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

# Enough for the default read concurrency of a few callers at once; threads start lazily.
MAX_THREADS = 64
_REASON_MAX = 200


# Where `VaultSettings.from_env` reads each field.
_VARIABLES = {
    "addr": "VAULT_ADDR",
    "token": "VAULT_TOKEN",
    "role_id": "VAULT_ROLE_ID",
    "secret_id": "VAULT_SECRET_ID",
    "namespace": "VAULT_NAMESPACE",
    "mount": "WH_VAULT_MOUNT",
    "kv_version": "WH_VAULT_KV_VERSION",
    "timeout_s": "WH_VAULT_TIMEOUT",
    "verify": "VAULT_CACERT",
}


@dataclass(frozen=True, config=SETTINGS_CONFIG, repr=False)
class VaultSettings:
    addr: str
    token: str | None = None
    role_id: str | None = None
    secret_id: str | None = None
    approle_mount: str = "approle"
    namespace: str | None = None
    mount: str = "secret"
    kv_version: Annotated[int, Field(ge=1, le=2, description="KV engine version: 1 or 2")] = 2
    timeout_s: PositiveSeconds = 5.0
    verify: bool | str = True  # False, True, or the path of a CA bundle

    @field_validator("addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        if not value.strip("/"):
            raise ValueError("must name a mount, not be empty or only slashes")
        return value.strip("/")

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.role_id and not self.secret_id:
            raise ValueError("role_id is set but secret_id is not")
        if self.secret_id and not self.role_id:
            raise ValueError("secret_id is set but role_id is not")
        if not self.token and not self.role_id:
            raise ValueError("Vault needs a token, or an AppRole role_id and secret_id")
        return self

    @property
    def uses_approle(self) -> bool:
        return bool(self.role_id and self.secret_id)

    def __repr__(self) -> str:
        def mask(value: str | None) -> str:
            return "None" if value is None else "'***'"

        return (
            f"VaultSettings(addr={self.addr!r}, token={mask(self.token)}, "
            f"role_id={self.role_id!r}, secret_id={mask(self.secret_id)}, "
            f"approle_mount={self.approle_mount!r}, namespace={self.namespace!r}, "
            f"mount={self.mount!r}, kv_version={self.kv_version!r}, "
            f"timeout_s={self.timeout_s!r}, verify={self.verify!r})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VaultSettings | None:
        """Settings from VAULT_* / WH_VAULT_* variables; None when VAULT_ADDR is unset.

        Empty values count as unset. A malformed value raises ValueError naming the variable.
        """
        values = env_values(env, _VARIABLES)
        if "addr" not in values:
            return None
        return validate(cls, values, _VARIABLES)


class VaultRequestError(SecretBackendError):
    """One Vault operation failed. `unreachable` when Vault could not answer at all
    (connection refused, timeout, sealed, 5xx), as opposed to refusing us (403, 400)."""

    def __init__(self, op: str, path: str, reason: str, unreachable: bool) -> None:
        self.op = op
        self.path = path
        self.reason = reason
        self.unreachable = unreachable
        super().__init__(f"Vault {op} {path!r} failed: {reason}")


def _vault_reason(exc: hvac.exceptions.VaultError) -> str:
    # Vault's own error strings describe the request, never the data we sent or read.
    errors = exc.errors if isinstance(exc.errors, list) else []
    text = "; ".join(str(e) for e in errors)
    return text[:_REASON_MAX] if text else ""


def _connection_reason(exc: requests.ConnectionError) -> str:
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "cannot resolve host"),
        ("nodename nor servname", "cannot resolve host"),
        ("Temporary failure in name resolution", "cannot resolve host"),
        ("Connection reset", "connection reset"),
        ("Remote end closed", "connection closed by server"),
    ):
        if needle in text:
            return reason
    return "connection failed"


def _translate(exc: Exception, op: str, path: str, timeout_s: float) -> VaultRequestError:
    """A VaultRequestError for `exc`; the message never contains request or response data."""
    import hvac.exceptions
    import requests

    e = hvac.exceptions
    if isinstance(exc, requests.Timeout):
        return VaultRequestError(op, path, f"timed out after {timeout_s:g}s", unreachable=True)
    if isinstance(exc, requests.ConnectionError):
        return VaultRequestError(op, path, _connection_reason(exc), unreachable=True)
    if isinstance(exc, requests.RequestException):
        return VaultRequestError(op, path, f"request failed ({type(exc).__name__})", True)
    if isinstance(exc, e.Forbidden):
        return VaultRequestError(op, path, "permission denied", unreachable=False)
    if isinstance(exc, e.Unauthorized):
        return VaultRequestError(op, path, "unauthorized", unreachable=False)
    if isinstance(exc, e.InvalidRequest):
        detail = _vault_reason(exc)
        return VaultRequestError(op, path, f"rejected{': ' + detail if detail else ''}", False)
    if isinstance(exc, e.InvalidPath):
        detail = _vault_reason(exc)
        return VaultRequestError(op, path, f"not found{': ' + detail if detail else ''}", False)
    if isinstance(exc, e.RateLimitExceeded):
        return VaultRequestError(op, path, "rate limited (429)", unreachable=True)
    if isinstance(exc, e.VaultDown):
        return VaultRequestError(op, path, "sealed or in maintenance (503)", unreachable=True)
    if isinstance(exc, e.VaultNotInitialized):
        return VaultRequestError(op, path, "not initialized (501)", unreachable=True)
    if isinstance(exc, e.InternalServerError | e.BadGateway):
        detail = _vault_reason(exc)
        return VaultRequestError(
            op, path, f"server error{': ' + detail if detail else ''}", unreachable=True
        )
    if isinstance(exc, e.VaultError):
        detail = _vault_reason(exc) or type(exc).__name__
        return VaultRequestError(op, path, f"unexpected answer: {detail}", unreachable=False)
    if isinstance(exc, ValueError | KeyError | TypeError):
        return VaultRequestError(op, path, "unreadable answer from Vault", unreachable=False)
    return VaultRequestError(op, path, f"{type(exc).__name__}", unreachable=False)


def _norm(path: str) -> str:
    return path.strip("/")


class VaultClient:
    """KV operations under `settings.mount`; paths are relative to the mount."""

    def __init__(self, settings: VaultSettings, max_threads: int = MAX_THREADS) -> None:
        self.settings = settings
        self._mount = settings.mount.strip("/")
        self._max_threads = max_threads
        self._local = threading.local()
        self._clients: list[hvac.Client] = []
        self._lock = threading.Lock()  # guards _clients, _pool, _closed
        self._token_lock = threading.Lock()  # serialises logins
        self._token: str | None = settings.token
        self._token_generation = 0
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<VaultClient {self.settings.addr} mount={self._mount!r}>"

    @property
    def logins(self) -> int:
        """How many times this client logged in with AppRole (the first login included)."""
        return self._token_generation

    # -- public, synchronous ----------------------------------------------------------------

    def read(self, path: str) -> dict[str, Any] | None:
        """The data of the secret at `path`; None when it does not exist or its latest version
        is deleted or destroyed."""
        return self.read_versioned(path)[0]

    def read_versioned(self, path: str) -> tuple[dict[str, Any] | None, int | None]:
        """(data, version) of the secret at `path`; version is None on KV v1 and when missing."""
        path = _norm(path)
        if self.settings.kv_version == 1:
            body = self._request("read", path, "GET", self._url(path), missing_ok=True)
            data = body.get("data") if body is not None else None
            return (dict(data) if isinstance(data, Mapping) else None), None
        body = self._request("read", path, "GET", self._url("data", path), missing_ok=True)
        inner = body.get("data") if body is not None else None
        if not isinstance(inner, Mapping):
            return None, None
        data = inner.get("data")
        meta = inner.get("metadata") or {}
        # A deleted or destroyed latest version comes back without data (a 404 carrying the
        # metadata). A deletion_time in the future (delete_version_after) is not a deletion yet.
        if not isinstance(data, Mapping):
            return None, None
        version = meta.get("version")
        return dict(data), version if isinstance(version, int) else None

    def write(self, path: str, data: Mapping[str, Any]) -> None:
        path = _norm(path)
        if self.settings.kv_version == 1:
            self._request("write", path, "POST", self._url(path), json=dict(data))
        else:
            self._request("write", path, "POST", self._url("data", path), json={"data": dict(data)})

    def delete(self, path: str) -> None:
        """Remove the secret (on KV v2: its metadata and every version). Missing is fine."""
        path = _norm(path)
        url = self._url(path) if self.settings.kv_version == 1 else self._url("metadata", path)
        self._request("delete", path, "DELETE", url)

    def list(self, path: str = "") -> list[str]:
        """Keys directly under `path` ('dir/' for folders); [] when there is nothing."""
        path = _norm(path)
        url = self._url(path) if self.settings.kv_version == 1 else self._url("metadata", path)
        body = self._request("list", path, "LIST", url, missing_ok=True)
        keys = (body or {}).get("data", {}).get("keys") or []
        return [str(k) for k in keys]

    def read_metadata(self, path: str) -> dict[str, Any] | None:
        """KV v2 metadata (current_version, versions, ...); None when the secret does not exist."""
        path = _norm(path)
        if self.settings.kv_version != 2:
            raise VaultRequestError("read metadata", path, "metadata needs KV v2", False)
        body = self._request(
            "read metadata", path, "GET", self._url("metadata", path), missing_ok=True
        )
        data = body.get("data") if body is not None else None
        return dict(data) if isinstance(data, Mapping) else None

    def health(self) -> bool:
        """True when Vault answers as initialized, unsealed and active (or a standby)."""
        import requests

        try:
            response = self._hvac().adapter.get("/v1/sys/health", raise_exception=False)
        except Exception as exc:  # any failure means "not healthy"; the reason is logged
            log.debug("Vault health check failed: %s", _translate(exc, "health", "", 0))
            return False
        status = response.status_code if isinstance(response, requests.Response) else 200
        return status in (200, 429, 472, 473)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            clients, self._clients = self._clients, []
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for client in clients:
            client.adapter.close()

    # -- public, async ----------------------------------------------------------------------

    async def call(self, fn: Callable[..., R], *args: Any) -> R:
        """Run the blocking `fn(*args)` (usually a method of this client) in the client's pool."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor(), fn, *args)
        except RuntimeError:  # the pool was shut down between the two lines
            raise VaultRequestError("call", "", "client is closed", False) from None
        try:
            return await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Not our cancellation: close() dropped the queued call.
            raise VaultRequestError("call", "", "client is closed", False) from None

    async def call_many(
        self, fn: Callable[[K], R], items: Iterable[K], concurrency: int = 16
    ) -> dict[K, R | SecretBackendError]:
        """fn(item) for every distinct item, at most `concurrency` at once; failures are returned
        per item, not raised."""
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(item: K) -> tuple[K, R | SecretBackendError]:
            async with gate:
                try:
                    return item, await self.call(fn, item)
                except SecretBackendError as exc:
                    return item, exc

        pairs = await asyncio.gather(*(one(i) for i in dict.fromkeys(items)))
        return dict(pairs)

    async def read_many(
        self, paths: Iterable[str], concurrency: int = 16
    ) -> dict[str, dict[str, Any] | SecretBackendError | None]:
        """read(path) for every path, bounded parallel; per-path errors in the result."""
        return await self.call_many(self.read, paths, concurrency)

    # -- internals --------------------------------------------------------------------------

    def _url(self, *parts: str) -> str:
        path = "/".join(p for p in parts if p)
        return f"/v1/{self._mount}/{quote(path, safe='/')}"

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise VaultRequestError("call", "", "client is closed", unreachable=False)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_threads, thread_name_prefix="vault")
            return self._pool

    def _hvac(self) -> hvac.Client:
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is not None:
            return client
        import hvac
        import requests

        with self._lock:
            if self._closed:
                raise VaultRequestError("call", "", "client is closed", unreachable=False)
        session = requests.Session()
        # hvac copies a truthy session.verify over its own verify argument: set it here.
        session.verify = self.settings.verify
        client = hvac.Client(
            url=self.settings.addr,
            namespace=self.settings.namespace,
            timeout=self.settings.timeout_s,
            verify=self.settings.verify,
            session=session,
        )
        with self._lock:
            self._clients.append(client)
        self._local.client = client
        return client

    def _current_token(self) -> tuple[str | None, int]:
        with self._token_lock:
            if self._token is None and self.settings.uses_approle:
                self._login_locked()
            return self._token, self._token_generation

    def _relogin(self, stale_generation: int) -> None:
        with self._token_lock:
            # Another thread may already have replaced the token that failed for us.
            if self._token_generation == stale_generation:
                self._login_locked()

    def _login_locked(self) -> None:
        mount = self.settings.approle_mount.strip("/")
        adapter = self._hvac().adapter
        adapter.token = None
        try:
            body = adapter.post(
                f"/v1/auth/{mount}/login",
                json={"role_id": self.settings.role_id, "secret_id": self.settings.secret_id},
            )
            token = body["auth"]["client_token"]
        except Exception as exc:
            raise _translate(
                exc, "AppRole login", f"auth/{mount}", self.settings.timeout_s
            ) from None
        if not isinstance(token, str) or not token:
            raise VaultRequestError("AppRole login", f"auth/{mount}", "no token in answer", False)
        self._token = token
        self._token_generation += 1
        log.info("logged in to Vault with AppRole (mount %s)", mount)

    def _request(
        self,
        op: str,
        path: str,
        method: str,
        url: str,
        missing_ok: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        """One HTTP call; a dict for a JSON answer, None for 204 or (when missing_ok) 404."""
        import hvac.exceptions

        where = f"{self._mount}/{path}"
        if self._closed:
            raise VaultRequestError(op, where, "client is closed", unreachable=False)
        for attempt in (0, 1):
            token, generation = self._current_token()
            adapter = self._hvac().adapter
            adapter.token = token
            try:
                answer = adapter.request(method, url, **kwargs)
            except hvac.exceptions.InvalidPath as exc:
                errors = exc.errors if isinstance(exc.errors, list) else []
                # Vault answers a missing secret with an empty error list; anything else (such
                # as "no handler for route": the mount does not exist) is a real failure.
                if missing_ok and not any("no handler" in str(e) for e in errors):
                    return None
                raise _translate(exc, op, where, self.settings.timeout_s) from None
            except hvac.exceptions.Forbidden as exc:
                if attempt == 0 and self.settings.uses_approle:
                    log.info("Vault refused our token for %s %s: logging in again", op, where)
                    self._relogin(generation)
                    continue
                raise _translate(exc, op, where, self.settings.timeout_s) from None
            except Exception as exc:
                raise _translate(exc, op, where, self.settings.timeout_s) from None
            return answer if isinstance(answer, dict) else None
        raise AssertionError("unreachable")  # the loop returns or raises
