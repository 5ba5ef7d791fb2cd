"""Bearer tokens: the admin token, and namespace tokens kept in the store as hashes, never in clear.

A token's id is the start of its hash: it names the token in `tokens list`, `tokens revoke` and as
the author of its changes (`token:ID`), and cannot be used to authenticate.

Lookups are cached for `cache_s` seconds. Revoking a token drops it from this process's cache at
once; another control-plane process on the same store may accept it until its own cache entry
expires, so `cache_s` bounds how long a revoked token keeps working anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.errors import NotFound
from control_plane.principal import Principal
from control_plane.store import Store

TOKEN_PREFIX = "whp_"
ID_LENGTH = 12
CACHE_S = 5.0
CACHE_ENTRIES = 1024
LAST_USED_EVERY_S = 60.0  # a store write per token at most this often, not per request


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown of a token: never the token, never its whole hash."""

    id: str
    namespace: str
    created: float | None
    expires: float | None
    last_used: float | None
    created_by: str

    @classmethod
    def of(cls, d: str, record: Mapping[str, Any]) -> TokenInfo:
        def when(field: str) -> float | None:
            value = record.get(field)
            return float(value) if isinstance(value, int | float) else None

        return cls(d[:ID_LENGTH], str(record.get("namespace", "")), when("created"),
                   when("expires"), when("last_used"), str(record.get("created_by", "")))

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "namespace": self.namespace, "created": self.created,
                "expires": self.expires, "last_used": self.last_used,
                "created_by": self.created_by}


class Tokens:
    def __init__(self, store: Store, admin_token: str | None, cache_s: float = CACHE_S) -> None:
        self._store = store
        self._admin = admin_token.encode() if admin_token else None
        # digest -> (monotonic deadline, principal)
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._cache_s = cache_s

    async def authenticate(self, token: str) -> Principal | None:
        if self._admin is not None and hmac.compare_digest(token.encode(), self._admin):
            return Principal("admin", None)
        if not token.startswith(TOKEN_PREFIX):
            return None
        d = digest(token)
        hit = self._cache.get(d)
        if hit is not None:
            if hit[0] > time.monotonic():
                return hit[1]
            del self._cache[d]
        record = await self._store.get_token(d)
        if record is None:
            return None
        info = TokenInfo.of(d, record)
        now = time.time()
        if info.expired(now):
            return None
        principal = Principal(f"token:{info.id}", info.namespace)
        ttl = self._cache_s if info.expires is None else min(self._cache_s, info.expires - now)
        self._cache[d] = (time.monotonic() + ttl, principal)
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        if info.last_used is None or now - info.last_used >= LAST_USED_EVERY_S:
            await self._store.touch_token(d, {"last_used": now})
        return principal

    async def create(self, namespace: str, by: Principal,
                     expires_in_s: float | None = None) -> tuple[str, TokenInfo]:
        if expires_in_s is not None and not (math.isfinite(expires_in_s) and expires_in_s > 0):
            raise ValueError("expires_in_s must be a positive number of seconds")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        record: dict[str, Any] = {
            "namespace": namespace, "created": now, "created_by": by.name,
            "expires": None if expires_in_s is None else now + expires_in_s,
        }  # fmt: skip
        d = digest(token)
        await self._store.put_token(d, record)
        return token, TokenInfo.of(d, record)

    async def list(self) -> list[TokenInfo]:
        records = await self._store.list_tokens()
        infos = [TokenInfo.of(d, r) for d, r in records.items()]
        return sorted(infos, key=lambda t: (t.namespace, t.created or 0, t.id))

    async def revoke(self, token_id: str) -> TokenInfo:
        records = await self._store.list_tokens()
        # Two tokens share an id only if their hashes share 48 bits; the id then names both.
        matches = [d for d in records if d[:ID_LENGTH] == token_id]
        if not matches:
            raise NotFound(f"no token with id {token_id!r} (see GET /v1/tokens)")
        for d in matches:
            await self._store.delete_token(d)
            self._cache.pop(d, None)
        return TokenInfo.of(matches[0], records[matches[0]])
