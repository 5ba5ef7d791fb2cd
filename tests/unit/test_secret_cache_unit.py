"""SecretCache logic with a fake client (no Vault): LRU bound, values, errors, status, ttl."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pytest

from providers import secret_cache as secret_cache_module
from providers.errors import ReferenceError_, SecretBackendError
from providers.references import VaultRef
from providers.secret_cache import SecretCache, SecretStatus
from providers.vault_client import VaultRequestError

Result = dict[str, Any] | SecretBackendError | None


class FakeClient:
    """Stands in for VaultClient.read_many: serves `data`, or fails every read when `down`."""

    def __init__(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data
        self.down = False
        self.forbidden: set[str] = set()
        self.batches: list[list[str]] = []

    async def read_many(self, paths: Iterable[str], concurrency: int = 16) -> dict[str, Result]:
        batch = list(dict.fromkeys(paths))
        self.batches.append(batch)
        out: dict[str, Result] = {}
        for p in batch:
            if self.down:
                out[p] = VaultRequestError("read", f"secret/{p}", "connection refused", True)
            elif p in self.forbidden:
                out[p] = VaultRequestError("read", f"secret/{p}", "permission denied", False)
            else:
                out[p] = self.data.get(p)
        return out


def _cache(data: dict[str, dict[str, Any]], **kwargs: Any) -> tuple[SecretCache, FakeClient]:
    fake = FakeClient(data)
    return SecretCache(fake, **kwargs), fake  # type: ignore[arg-type]


async def test_values_are_returned_exactly() -> None:
    cache, _ = _cache({"p": {"s": "  x\t\n", "n": 3, "f": 1.5, "b": False, "e": ""}})
    await cache.fetch(["p"])
    assert cache.lookup(VaultRef("p", "s")) == "  x\t\n"
    assert cache.lookup(VaultRef("p", "n")) == "3"
    assert cache.lookup(VaultRef("p", "f")) == "1.5"
    assert cache.lookup(VaultRef("p", "b")) == "False"
    # An empty value exists: the default does not replace it.
    assert cache.lookup(VaultRef("p", "e", "dflt")) == ""


async def test_only_missing_paths_are_read() -> None:
    cache, fake = _cache({"a": {"k": "1"}, "b": {"k": "2"}})
    await cache.fetch(["a", "a", "b"])
    await cache.fetch(["a", "b", "c"])
    await cache.fetch(["a", "b", "c"])  # "c" is known missing: nothing to read
    assert fake.batches == [["a", "b"], ["c"]]


async def test_lru_bound_evicts_least_recently_used() -> None:
    cache, fake = _cache({p: {"k": p} for p in "abcd"}, max_entries=3)
    await cache.fetch(["a", "b", "c"])
    assert cache.lookup(VaultRef("a", "k")) == "a"  # "a" is now the most recent
    await cache.fetch(["d"])  # evicts "b"
    assert len(cache) == 3
    with pytest.raises(ReferenceError_, match="not fetched"):
        cache.lookup(VaultRef("b", "k"))
    assert cache.lookup(VaultRef("a", "k")) == "a"
    await cache.fetch(["b"])
    assert fake.batches[-1] == ["b"]
    assert cache.status.cached == 3


async def test_failed_refresh_keeps_values_and_reports() -> None:
    cache, fake = _cache({"a": {"k": "v1"}})
    await cache.fetch(["a"])
    fake.down = True
    assert await cache.refresh() == set()
    assert cache.lookup(VaultRef("a", "k")) == "v1"
    status = cache.status
    assert status.reachable is False
    assert status.last_error is not None and "connection refused" in status.last_error
    assert status.last_refresh is None

    fake.down = False
    fake.data["a"] = {"k": "v2"}
    assert await cache.refresh() == {"a"}
    assert cache.lookup(VaultRef("a", "k")) == "v2"
    assert cache.status.reachable is True and cache.status.last_error is None


async def test_error_messages_name_path_and_reason_not_values() -> None:
    cache, fake = _cache({"ok": {"k": "SECRETVALUE"}, "denied": {"k": "OTHERSECRET"}})
    fake.forbidden.add("denied")
    await cache.fetch(["ok", "denied"])
    messages = []
    for ref in (VaultRef("ok", "nope"), VaultRef("denied", "k"), VaultRef("gone", "k")):
        with pytest.raises(ReferenceError_) as info:
            cache.lookup(ref)
        messages.append(str(info.value))
    assert messages[0] == "vault secret ok#nope: no such field 'nope'"
    assert messages[1] == "vault secret denied#k: cannot read it: permission denied"
    assert "not fetched" in messages[2]
    assert not any("SECRET" in m for m in messages)
    # Denied is not "unreachable": Vault answered.
    assert cache.status.reachable is True
    assert cache.status.last_error is not None and "permission denied" in cache.status.last_error


async def test_failed_path_is_retried_by_fetch_and_refresh() -> None:
    cache, fake = _cache({"a": {"k": "1"}})
    fake.down = True
    await cache.fetch(["a"])
    assert cache.status.cached == 0
    fake.down = False
    await cache.fetch(["a"])
    assert cache.lookup(VaultRef("a", "k")) == "1"

    fake.down = True
    await cache.fetch(["b"])
    fake.down = False
    fake.data["b"] = {"k": "2"}
    assert await cache.refresh() == {"b"}  # resolvable now: its users must be rebuilt
    assert cache.lookup(VaultRef("b", "k")) == "2"


async def test_no_vault_configured() -> None:
    cache = SecretCache(None)
    await cache.fetch(["a"])
    assert await cache.refresh() == set()
    with pytest.raises(ReferenceError_, match="no Vault configured"):
        cache.lookup(VaultRef("a", "k", "dflt"))
    assert cache.status == SecretStatus(
        configured=False, reachable=None, cached=0, last_error=None, last_refresh=None
    )


async def test_due_after_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(secret_cache_module.time, "monotonic", lambda: now[0])
    cache, _ = _cache({}, ttl_s=60)
    assert not cache.due()
    now[0] += 60
    assert cache.due()
    await cache.refresh()
    assert not cache.due()
    now[0] += 59.9
    assert not cache.due()


async def test_values_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cache, fake = _cache({"a": {"k": "SECRETVALUE"}})
    await cache.fetch(["a"])
    fake.data["a"] = {"k": "SECRETVALUE2"}
    await cache.refresh()
    fake.down = True
    await cache.refresh()
    cache.lookup(VaultRef("a", "k"))
    assert caplog.records
    assert "SECRETVALUE" not in caplog.text
