"""The local directory store, laid out like a Kubernetes ConfigMap volume:

    DIR/..data -> ..gen-00000000000000000042      one atomic symlink swap per apply
    DIR/..gen-00000000000000000042/
        resources/{namespace or _global}/{Kind}/{name}.json
        .revision                                 "42"
        .change.json                              this apply's history record
        canary.json                               the running canary's record, if one runs
    DIR/history/00000000000000000042.json         history, kept across generations
    DIR/gateways/{id}.json                        gateway heartbeats
    DIR/tokens/{digest}.json                      namespace tokens (hashed)
    DIR/.lock, DIR/.lock-tokens                   one writer at a time (flock)

A gateway reading `file:DIR` resolves `..data` once per read and so sees each apply whole. The
history record and the canary record travel inside the generation, so the swap publishes them
with the resources. The canary record is carried into each new generation until the commit that
promotes or aborts the canary leaves it out.

A crash may stop an apply between any two steps; whatever it leaves is repaired by the next
apply, and at start:

- before the rename: a `..tmp-*` directory nobody reads (or a `.tmp-*` file next to a history or
  token record), removed once it is an hour old;
- after the rename, before the swap: a generation newer than `..data`, never published: removed,
  so the next apply can take its revision;
- a leftover `..data-N` link of an interrupted swap: removed;
- after the swap, before the record is copied to `history/`: copied by the next apply or read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from control_plane.store import Conflict, Draft, HistoryRecord, Stored, StoreFailed, stored_doc
from providers.file import DATA_LINK, REVISION_FILE
from providers.resources import GLOBAL, KINDS, ResourceKey
from providers.rollout import CANARY_FILE, Canary

log = logging.getLogger(__name__)

CHANGE_FILE = ".change.json"
KEEP_GENERATIONS = 3  # old generations kept for readers still inside one


class DirStore:
    def __init__(self, root: Path | str, gateway_ttl_s: float = 15.0) -> None:
        self.root = Path(root)
        self.url = f"file:{self.root}"
        self.gateway_ttl_s = gateway_ttl_s
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._recover()

    # -- reading ----------------------------------------------------------------------------

    def _current(self) -> tuple[int, Path | None]:
        link = self.root / DATA_LINK
        if not link.exists():
            if link.is_symlink():
                raise StoreFailed(
                    f"{link} points to {os.readlink(link)}, which does not exist: point it at "
                    "the newest ..gen-* directory (ln -sfn ..gen-N ..data) or restore that one")
            return 0, None
        gen = link.resolve()
        rev_file = gen / REVISION_FILE
        return (int(rev_file.read_text()) if rev_file.exists() else 0), gen

    def _read(self) -> tuple[int, dict[ResourceKey, Stored]]:
        revision, gen = self._current()
        out: dict[ResourceKey, Stored] = {}
        if gen is None:
            return revision, out
        base = gen / "resources"
        for path in base.glob("*/*/*.json"):
            ns, kind, name = path.parent.parent.name, path.parent.name, path.stem
            if kind not in KINDS:
                continue
            key = ResourceKey(kind, None if ns == GLOBAL else ns, name)
            doc = stored_doc(key, path.read_bytes())
            out[key] = Stored(key, doc, int(doc.get("metadata", {}).get("revision", revision)))
        return revision, out

    async def read(self) -> tuple[int, dict[ResourceKey, Stored]]:
        return await asyncio.to_thread(self._read)

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str = "") -> Iterator[None]:
        with open(self.root / f".lock{name and '-' + name}", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _recover(self) -> None:
        """Repair what an interrupted commit left (see the module docstring); needs the lock."""
        current, gen = self._current()
        if gen is not None:
            self._settle_history(gen)
        for path in self.root.glob("..gen-*"):
            if _generation(path) > current and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
        for link in self.root.glob(f"{DATA_LINK}-*"):
            link.unlink(missing_ok=True)

    def _commit(self, draft: Draft, base_revision: int) -> int:
        with self._locked():
            current, old_gen = self._current()
            if current != base_revision:
                raise Conflict(
                    f"the config changed since revision {base_revision} (now {current})", current
                )
            self._recover()
            revision = current + 1
            gen = self.root / f"..gen-{revision:020d}"
            tmp = Path(tempfile.mkdtemp(prefix="..tmp-", dir=self.root))
            try:
                if old_gen is not None and (old_gen / "resources").exists():
                    shutil.copytree(old_gen / "resources", tmp / "resources")
                for key in draft.deletes:
                    (tmp / _relpath(key)).unlink(missing_ok=True)
                for key, doc in draft.puts.items():
                    path = tmp / _relpath(key)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(doc, indent=2))
                (tmp / REVISION_FILE).write_text(str(revision))
                record = draft.record(revision)
                canary = _canary_in(old_gen) if not draft.clear_canary else None
                if draft.canary is not None:
                    # Its revision is this commit's, known only now.
                    canary = dataclasses.replace(draft.canary, revision=revision)
                    if record.rollout is not None and "canary" in record.rollout:
                        record = dataclasses.replace(
                            record, rollout={**record.rollout, "canary": canary.to_json()})
                if canary is not None:
                    (tmp / CANARY_FILE).write_text(json.dumps(canary.to_json()))
                (tmp / CHANGE_FILE).write_text(json.dumps(record.as_dict()))
                _fsync_tree(tmp)
                os.rename(tmp, gen)
                _fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            link_tmp = self.root / f"{DATA_LINK}-{revision}"
            link_tmp.symlink_to(gen.name)
            os.replace(link_tmp, self.root / DATA_LINK)  # the one atomic step
            _fsync_dir(self.root)
            self._settle_history(gen)
            self._collect(keep=gen)
            return revision

    async def commit(self, draft: Draft, base_revision: int) -> int:
        return await asyncio.to_thread(self._commit, draft, base_revision)

    def _settle_history(self, gen: Path) -> None:
        change = gen / CHANGE_FILE
        if not change.exists():
            return
        record = json.loads(change.read_text())
        target = self.root / "history" / f"{int(record['revision']):020d}.json"
        if not target.exists():
            _atomic_write(target, json.dumps(record))

    def _collect(self, keep: Path) -> None:
        gens = sorted(p for p in self.root.glob("..gen-*") if p.is_dir())
        for old in gens[:-KEEP_GENERATIONS]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
        # Left by a crash mid-write; an hour old, no writer can still be at it.
        stale = [*self.root.glob("..tmp-*"), *self.root.glob("*/.tmp-*")]
        for path in stale:
            with contextlib.suppress(FileNotFoundError):  # another process got there first
                if time.time() - path.stat().st_mtime > 3600:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink()

    def _canary(self) -> Canary | None:
        for _ in range(3):
            _, gen = self._current()
            try:
                return _canary_in(gen, missing_ok=False)
            except FileNotFoundError:
                continue  # that generation was collected as we read it: read the new one
        return None

    async def canary(self) -> Canary | None:
        return await asyncio.to_thread(self._canary)

    # -- history, gateways, tokens ------------------------------------------------------------

    def _history(self, limit: int) -> list[HistoryRecord]:
        _, gen = self._current()
        if gen is not None:
            self._settle_history(gen)
        files = sorted((self.root / "history").glob("*.json"), reverse=True)[:limit]
        return [HistoryRecord.from_dict(json.loads(f.read_text())) for f in files]

    async def history(self, limit: int = 100) -> list[HistoryRecord]:
        return await asyncio.to_thread(self._history, limit)

    def _history_get(self, revision: int) -> HistoryRecord | None:
        _, gen = self._current()
        if gen is not None:
            self._settle_history(gen)
        path = self.root / "history" / f"{revision:020d}.json"
        return HistoryRecord.from_dict(json.loads(path.read_text())) if path.exists() else None

    async def history_get(self, revision: int) -> HistoryRecord | None:
        return await asyncio.to_thread(self._history_get, revision)

    def _gateways(self) -> list[dict[str, Any]]:
        out = []
        now = time.time()
        for path in (self.root / "gateways").glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            age = now - float(record.get("heartbeat", 0))
            out.append({**record, "live": age <= self.gateway_ttl_s, "age_s": age})
        return out

    async def gateways(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._gateways)

    def _token_path(self, digest: str) -> Path:
        return self.root / "tokens" / f"{digest}.json"

    async def put_token(self, digest: str, record: Mapping[str, Any]) -> None:
        await asyncio.to_thread(_atomic_write, self._token_path(digest), json.dumps(dict(record)))

    async def get_token(self, digest: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(_read_json, self._token_path(digest))

    def _list_tokens(self) -> dict[str, dict[str, Any]]:
        out = {}
        for path in (self.root / "tokens").glob("*.json"):
            record = _read_json(path)
            if record is not None:
                out[path.stem] = record
        return out

    async def list_tokens(self) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(self._list_tokens)

    def _touch_token(self, digest: str, fields: Mapping[str, Any]) -> None:
        # Under the lock, so a revoke in between cannot be undone by writing the record back.
        with self._locked("tokens"):
            record = _read_json(self._token_path(digest))
            if record is not None:
                _atomic_write(self._token_path(digest), json.dumps({**record, **fields}))

    async def touch_token(self, digest: str, fields: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._touch_token, digest, fields)

    def _delete_token(self, digest: str) -> bool:
        with self._locked("tokens"):
            try:
                self._token_path(digest).unlink()
            except FileNotFoundError:
                return False
            return True

    async def delete_token(self, digest: str) -> bool:
        return await asyncio.to_thread(self._delete_token, digest)

    async def close(self) -> None:
        return None


def _canary_in(gen: Path | None, missing_ok: bool = True) -> Canary | None:
    """The canary record of a generation; None without one, or with an unreadable one (a
    gateway treats that as no canary too, so the control plane must not hold writes for it)."""
    if gen is None:
        return None
    path = gen / CANARY_FILE
    try:
        return Canary.from_json(path.read_bytes())
    except FileNotFoundError:
        if not missing_ok and not gen.exists():
            raise
        return None
    except ValueError as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None


def _relpath(key: ResourceKey) -> Path:
    return Path("resources") / (key.namespace or GLOBAL) / key.kind / f"{key.name}.json"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _generation(path: Path) -> int:
    try:
        return int(path.name.removeprefix("..gen-"))
    except ValueError:
        return -1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
