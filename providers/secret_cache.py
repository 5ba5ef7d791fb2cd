"""The gateway's cache of Vault secrets, read when snapshots are built.

`fetch()` reads the secrets a batch of resources needs (only the ones not cached yet, one read
per path however many fields are used), then the snapshot builder resolves every reference with
the synchronous, cache-only `lookup()`. `refresh()` re-reads everything cached and reports which
paths changed, so the resources using them are rebuilt: that is how rotation is picked up.

When Vault is down, a failed read never replaces a value already cached: secrets that resolved
once keep resolving. A path never read successfully fails its lookups with the reason.

The cache belongs to one event loop: call it from the loop's thread only. No method logs or
raises a secret value.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from providers.errors import ReferenceError_, SecretBackendError
from providers.references import VaultRef
from providers.vault_client import VaultClient, VaultRequestError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SecretStatus:
    configured: bool
    reachable: bool | None  # None until Vault was first asked
    cached: int
    last_error: str | None
    last_refresh: float | None  # time.time() of the last refresh() that reached Vault


@dataclass(slots=True)
class _Entry:
    # `known` is False until one read succeeded; then `data` is the secret (None: not found).
    known: bool = False
    data: dict[str, Any] | None = None
    error: SecretBackendError | None = None  # of the latest read, when it failed


def _short(exc: SecretBackendError) -> str:
    return exc.reason if isinstance(exc, VaultRequestError) else str(exc)


def _unreachable(exc: SecretBackendError) -> bool:
    return isinstance(exc, VaultRequestError) and exc.unreachable


class SecretCache:
    def __init__(
        self,
        client: VaultClient | None,
        ttl_s: float = 60.0,
        max_entries: int = 100_000,
        concurrency: int = 16,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._max_entries = max(1, max_entries)
        self._concurrency = max(1, concurrency)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._reachable: bool | None = None
        self._last_error: str | None = None
        self._last_refresh: float | None = None
        self._refreshed_at = time.monotonic()

    # -- reading from Vault -----------------------------------------------------------------

    async def fetch(self, paths: Iterable[str]) -> None:
        """Make sure every path is cached; reads only those without a value yet."""
        wanted = list(dict.fromkeys(paths))
        for path in wanted:
            entry = self._entries.get(path)
            if entry is not None:
                self._entries.move_to_end(path)
        missing = [p for p in wanted if not self._has_value(p)]
        if not missing or self._client is None:
            return
        results = await self._client.read_many(missing, self._concurrency)
        self._store(results)

    async def refresh(self) -> set[str]:
        """Re-read every cached path; the paths whose data changed (or appeared, or vanished).

        A failed read keeps the previous value and is recorded in `status`.
        """
        if self._client is None or not self._entries:
            self._refreshed_at = time.monotonic()
            return set()
        before = {p: (e.known, e.data) for p, e in self._entries.items()}
        results = await self._client.read_many(list(before), self._concurrency)
        self._store(results)
        self._refreshed_at = time.monotonic()
        if self._reachable:
            self._last_refresh = time.time()
        changed = set()
        for path, (known, data) in before.items():
            entry = self._entries.get(path)
            if entry is not None and entry.known and (not known or entry.data != data):
                changed.add(path)
        if changed:
            log.info("secrets changed at %d path(s)", len(changed))
        return changed

    def retain(self, paths: Iterable[str]) -> None:
        """Forget secrets no resource references any more: they are not re-read."""
        keep = set(paths)
        for path in [p for p in self._entries if p not in keep]:
            del self._entries[path]

    def due(self) -> bool:
        """True when `ttl_s` has passed since the last refresh (or since creation)."""
        return time.monotonic() - self._refreshed_at >= self._ttl_s

    # -- resolving --------------------------------------------------------------------------

    def lookup(self, ref: VaultRef) -> str:
        """The value of `ref` from the cache: str() of non-strings, strings exactly as stored.

        The default applies when the secret or the field does not exist, not when Vault could
        not be read: a default must never stand in for a real secret during an outage.
        """
        where = f"{ref.path}#{ref.field}"
        if self._client is None:
            raise ReferenceError_(f"vault secret {where}: no Vault configured")
        entry = self._entries.get(ref.path)
        if entry is None:
            raise ReferenceError_(f"vault secret {where}: not fetched from Vault yet")
        self._entries.move_to_end(ref.path)
        if not entry.known:
            err = entry.error
            if err is not None and _unreachable(err):
                raise ReferenceError_(f"vault secret {where}: Vault unreachable: {_short(err)}")
            reason = _short(err) if err is not None else "not read yet"
            raise ReferenceError_(f"vault secret {where}: cannot read it: {reason}")
        if entry.data is None:
            if ref.default is not None:
                return ref.default
            raise ReferenceError_(f"vault secret {where}: not found")
        if ref.field not in entry.data:
            if ref.default is not None:
                return ref.default
            raise ReferenceError_(f"vault secret {where}: no such field {ref.field!r}")
        value = entry.data[ref.field]
        return value if isinstance(value, str) else str(value)

    # -- state ------------------------------------------------------------------------------

    @property
    def status(self) -> SecretStatus:
        return SecretStatus(
            configured=self._client is not None,
            reachable=self._reachable,
            cached=sum(1 for e in self._entries.values() if e.known),
            last_error=self._last_error,
            last_refresh=self._last_refresh,
        )

    def __len__(self) -> int:
        return len(self._entries)

    def _has_value(self, path: str) -> bool:
        entry = self._entries.get(path)
        return entry is not None and entry.known

    def _store(self, results: dict[str, dict[str, Any] | SecretBackendError | None]) -> None:
        errors: list[SecretBackendError] = []
        for path, result in results.items():
            entry = self._entries.get(path)
            if entry is None:
                entry = self._entries[path] = _Entry()
            else:
                self._entries.move_to_end(path)
            if isinstance(result, SecretBackendError):
                entry.error = result
                errors.append(result)
            else:
                entry.known, entry.data, entry.error = True, result, None
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        if not results:
            return
        # Reachable unless every failure of this round was "could not talk to Vault" and
        # nothing succeeded.
        down = [e for e in errors if _unreachable(e)]
        self._reachable = not (down and len(down) == len(results))
        if errors:
            first = down[0] if down else errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            self._last_error = f"{first}{more}"
            log.warning(
                "Vault reads failed for %d of %d path(s): %s", len(errors), len(results), first
            )
        else:
            self._last_error = None
