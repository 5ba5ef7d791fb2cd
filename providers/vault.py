"""Config provider for `vault://MOUNT/PATH`: resources kept as KV v2 secrets.

Layout, like the store's (DESIGN.md section 3):

    MOUNT/PATH/{namespace or _global}/{Kind}/{name}    one secret per resource

The data of each secret is the resource document itself (apiVersion, kind, metadata, spec).
A secret anywhere else under PATH is reported as a source error and otherwise ignored.

Vault has neither a global revision nor a watch API, so:

- Revisions are a counter local to this process: 1 for the first `load()`, +1 for every batch
  after it. They order this provider's batches and mean nothing to another process or after a
  restart. When `watch()` is asked to resume after a revision this object did not produce (the
  holder started from a saved last-good snapshot), it starts with a `full` batch numbered above
  both that revision and its own counter.
- `watch()` polls: it lists PATH recursively, reads each secret's metadata and re-reads only the
  secrets whose current version changed (or appeared); a vanished secret, or one whose latest
  version is deleted or destroyed, is a deletion. One batch per poll that found something. The
  cost of a poll is one LIST per folder plus one metadata read per secret.
- A load is not a consistent snapshot: secrets written while it runs may or may not be in it;
  the next poll catches up.

Vault errors while polling mark the provider DISCONNECTED and are retried with capped
exponential backoff and jitter; the watch never ends on them. Blocking hvac calls run in the
client's thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from providers.backoff import backoff
from providers.errors import SecretBackendError, StoreUnavailable
from providers.provider import ChangeBatch, ProviderState, ProviderStatus, RawDoc
from providers.resources import GLOBAL, KINDS, ResourceKey
from providers.vault_client import VaultClient, VaultSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
MIN_POLL_S = 0.5
MAX_POLL_S = 300.0
BACKOFF_CAP_S = 30.0
CONCURRENCY = 16
_DEPTH = 3  # namespace / Kind / name


class _Closed:
    """Returned instead of a result when close() interrupted the work."""


_CLOSED = _Closed()


def _is_past(timestamp: str) -> bool:
    """True when an RFC 3339 time from Vault is not in the future (unparsable counts as past)."""
    text = timestamp.strip().replace("Z", "+00:00")
    # Vault writes nanoseconds; Python parses at most microseconds.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= datetime.now(UTC)


def live_version(metadata: Mapping[str, Any] | None) -> int | None:
    """The current version of a KV v2 secret, or None when it is gone, deleted or destroyed."""
    if not metadata:
        return None
    current = metadata.get("current_version")
    if not isinstance(current, int) or current < 1:
        return None
    info = (metadata.get("versions") or {}).get(str(current)) or {}
    if info.get("destroyed"):
        return None
    deleted = info.get("deletion_time")
    # A future deletion_time is a scheduled deletion (delete_version_after): still readable.
    if isinstance(deleted, str) and deleted and _is_past(deleted):
        return None
    return current


def parse_url(url: str) -> tuple[str, str]:
    """(mount, path) of `vault://MOUNT/PATH`; ValueError naming the URL when malformed."""
    if not url.startswith("vault://"):
        raise ValueError(f"config URL {url!r} is not vault://MOUNT/PATH")
    mount, _, path = url[len("vault://") :].partition("/")
    if not mount:
        raise ValueError(f"config URL {url!r} names no mount: use vault://MOUNT/PATH")
    return mount, path.strip("/")


class VaultProvider:
    def __init__(
        self,
        settings: VaultSettings,
        mount: str,
        path: str,
        poll_interval_s: float = 5.0,
    ) -> None:
        self.settings = dataclasses.replace(settings, mount=mount.strip("/"), kv_version=2)
        self._root = path.strip("/")
        self.url = f"vault://{self.settings.mount}/{self._root}"
        self._where = f"{self.settings.mount}/{self._root}" if self._root else self.settings.mount
        self.poll_interval_s = min(MAX_POLL_S, max(MIN_POLL_S, poll_interval_s))
        self._client = VaultClient(self.settings)
        # secret path (relative to the mount) -> (its key, the version we delivered)
        self._known: dict[str, tuple[ResourceKey, int | None]] = {}
        self._bad: frozenset[str] = frozenset()
        self._revision = 0
        self._state = ProviderState.CONNECTING
        self._last_error: str | None = None
        self._reconnects = 0
        self._closed = asyncio.Event()

    @classmethod
    def from_url(
        cls, url: str, env: Mapping[str, str], poll_interval_s: float = 5.0
    ) -> VaultProvider:
        mount, path = parse_url(url)
        settings = VaultSettings.from_env(env)
        if settings is None:
            raise ValueError(f"{url} needs VAULT_ADDR and VAULT_TOKEN (or AppRole) to be set")
        return cls(settings, mount, path, poll_interval_s)

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def status(self) -> ProviderStatus:
        return ProviderStatus(
            state=self._state,
            url=self.url,
            endpoint=self.settings.addr,
            last_error=self._last_error,
            reconnects=self._reconnects,
        )

    # -- load -------------------------------------------------------------------------------

    async def load(self) -> ChangeBatch:
        """Every resource under PATH as a `full` batch; StoreUnavailable when Vault fails."""
        try:
            batch = await self._load_full(self._revision + 1)
        except SecretBackendError as exc:
            self._mark_down(exc)
            raise StoreUnavailable(f"{self.url}: {exc}") from None
        self._mark_up()
        return batch

    async def _load_full(self, revision: int) -> ChangeBatch:
        paths, bad = await self._list_all()
        keys = self._classify(paths, bad)
        results = await self._client.call_many(self._client.read_versioned, list(keys), CONCURRENCY)
        puts: dict[ResourceKey, RawDoc] = {}
        known: dict[str, tuple[ResourceKey, int | None]] = {}
        for path, result in results.items():
            if isinstance(result, SecretBackendError):
                raise result
            data, version = result
            if data is None:  # latest version deleted
                continue
            puts[keys[path]] = data
            known[path] = (keys[path], version)
        self._known, self._bad, self._revision = known, frozenset(bad), revision
        log.info("loaded %d resources from %s (revision %d)", len(puts), self.url, revision)
        return ChangeBatch(revision, puts, full=True, source_errors=self._errors(bad))

    # -- watch ------------------------------------------------------------------------------

    async def watch(self, after_revision: int) -> AsyncIterator[ChangeBatch]:
        """Poll every `poll_interval_s`; one batch per poll that found changes."""
        resume = self._revision > 0 and after_revision == self._revision
        attempt = 0
        while not self._closed.is_set():
            work = (
                self._poll() if resume else self._load_full(max(self._revision, after_revision) + 1)
            )
            try:
                batch = await self._unless_closed(work)
            except SecretBackendError as exc:
                self._mark_down(exc)
                delay = backoff(attempt, base=self.poll_interval_s, cap=self._backoff_cap())
                attempt += 1
                log.info("polling %s again in %.2fs", self.url, delay)
                await self._sleep(delay)
                continue
            if isinstance(batch, _Closed):
                return
            resume = True
            if attempt:
                self._reconnects += 1
                log.info("%s reachable again after %d failed poll(s)", self.url, attempt)
            attempt = 0
            self._mark_up()
            if batch is not None:
                yield batch
            await self._sleep(self.poll_interval_s)

    async def _poll(self) -> ChangeBatch | None:
        paths, bad = await self._list_all()
        keys = self._classify(paths, bad)
        metas = await self._client.call_many(self._client.read_metadata, list(keys), CONCURRENCY)
        live: dict[str, int] = {}
        for path, meta in metas.items():
            if isinstance(meta, SecretBackendError):
                raise meta
            version = live_version(meta)
            if version is not None:
                live[path] = version
        stale = [p for p, v in live.items() if p not in self._known or self._known[p][1] != v]
        reads = await self._client.call_many(self._client.read_versioned, stale, CONCURRENCY)

        known = {p: kv for p, kv in self._known.items() if p in live and p not in reads}
        puts: dict[ResourceKey, RawDoc] = {}
        for path, result in reads.items():
            if isinstance(result, SecretBackendError):
                raise result
            data, version = result
            if data is None:  # deleted between the metadata read and this one
                continue
            puts[keys[path]] = data
            known[path] = (keys[path], version)
        deletes = frozenset(key for p, (key, _) in self._known.items() if p not in known)
        new_bad = sorted(set(bad) - self._bad)
        self._known, self._bad = known, frozenset(bad)
        if not (puts or deletes or new_bad):
            return None
        self._revision += 1
        log.info(
            "%s revision %d: %d put(s), %d delete(s)",
            self.url, self._revision, len(puts), len(deletes),
        )  # fmt: skip
        return ChangeBatch(self._revision, puts, deletes, source_errors=self._errors(new_bad))

    # -- listing ----------------------------------------------------------------------------

    async def _list_all(self) -> tuple[list[str], list[str]]:
        """(secret paths, misplaced paths) under the root, relative to the mount.

        Walks at most the depth of the layout: a folder where a resource should be is reported,
        not descended into.
        """
        secrets: list[str] = []
        bad: list[str] = []
        level = [self._root]
        for depth in range(_DEPTH):
            if not level:
                break
            listed = await self._client.call_many(self._client.list, level, CONCURRENCY)
            below: list[str] = []
            for folder, result in listed.items():
                if isinstance(result, SecretBackendError):
                    raise result
                for name in result:
                    full = f"{folder}/{name}" if folder else name
                    if not name.endswith("/"):
                        secrets.append(full)
                    elif depth < _DEPTH - 1:
                        below.append(full.rstrip("/"))
                    else:
                        bad.append(full)
            level = below
        return secrets, bad

    def _classify(self, paths: Iterable[str], bad: list[str]) -> dict[str, ResourceKey]:
        """ResourceKey of every path in the layout; the others are appended to `bad`."""
        keys: dict[str, ResourceKey] = {}
        skip = len(self._root) + 1 if self._root else 0
        for path in paths:
            parts = path[skip:].split("/")
            if len(parts) != _DEPTH or parts[1] not in KINDS or not all(parts):
                bad.append(path)
                continue
            ns, kind, name = parts
            keys[path] = ResourceKey(kind, None if ns == GLOBAL else ns, name)
        return keys

    def _errors(self, bad: Iterable[str]) -> tuple[str, ...]:
        # The holder keys source errors by the text before the first ':', so start with the
        # path itself: one entry per misplaced secret.
        mount = self.settings.mount
        return tuple(
            f"{mount}/{p} is not {self._where}/<namespace or {GLOBAL}>/<Kind>/<name>"
            for p in sorted(bad)
        )

    # -- state ------------------------------------------------------------------------------

    def _backoff_cap(self) -> float:
        return max(BACKOFF_CAP_S, self.poll_interval_s)

    def _mark_up(self) -> None:
        self._state = ProviderState.CONNECTED
        self._last_error = None

    def _mark_down(self, exc: Exception) -> None:
        if self._state is ProviderState.CLOSED:
            return
        if self._state is not ProviderState.DISCONNECTED:
            log.warning("Vault config store %s: %s", self.url, exc)
        self._state = ProviderState.DISCONNECTED
        self._last_error = str(exc)

    async def _unless_closed(self, work: Awaitable[T]) -> T | _Closed:
        """The result of `work`, or _CLOSED as soon as close() is called (work is cancelled)."""
        task = asyncio.ensure_future(work)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()
        if not task.done() or task.cancelled():
            return _CLOSED
        return task.result()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closed.wait(), seconds)
        except TimeoutError:
            pass

    async def close(self) -> None:
        self._closed.set()
        self._state = ProviderState.CLOSED
        self._client.close()
