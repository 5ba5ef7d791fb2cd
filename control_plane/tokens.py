"""Who is calling: the admin token, or a namespace token (stored as a hash, never in clear)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from control_plane.store import Store
from providers.resources import ResourceKey

TOKEN_PREFIX = "whp_"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    namespace: str | None  # None: admin

    @property
    def admin(self) -> bool:
        return self.namespace is None

    def can_read(self, key: ResourceKey) -> bool:
        if self.admin:
            return True
        if key.kind == "Namespace":
            return key.name == self.namespace
        # Global connections are shared infrastructure: visible, not writable, to tenants.
        return key.namespace in (self.namespace, None)

    def can_write(self, key: ResourceKey) -> bool:
        # A tenant cannot raise its own namespace limits: Namespace resources are admin-only.
        return self.admin or (key.kind != "Namespace" and key.namespace == self.namespace)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, store: Store, admin_token: str | None, cache_s: float = 30.0) -> None:
        self._store = store
        self._admin = admin_token.encode() if admin_token else None
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._cache_s = cache_s

    async def authenticate(self, token: str) -> Principal | None:
        if self._admin is not None and hmac.compare_digest(token.encode(), self._admin):
            return Principal("admin", None)
        if not token.startswith(TOKEN_PREFIX):
            return None
        d = digest(token)
        hit = self._cache.get(d)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        record = await self._store.get_token(d)
        if record is None:
            return None
        principal = Principal(f"token:{d[:12]}", str(record["namespace"]))
        self._cache[d] = (time.monotonic() + self._cache_s, principal)
        if len(self._cache) > 1024:
            self._cache.popitem(last=False)
        return principal

    async def create(self, namespace: str, by: Principal) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record: dict[str, Any] = {"namespace": namespace, "created": time.time(),
                                  "created_by": by.name}
        await self._store.put_token(digest(token), record)
        return token
