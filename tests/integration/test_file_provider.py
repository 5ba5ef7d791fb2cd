"""file: provider: hot reload of files and directories, and the ConfigMap symlink swap."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from providers.file import FileProvider
from providers.holder import SnapshotHolder
from providers.snapshot import Snapshot
from tests.docs import webhook


def hook_yaml(*names: str, timeout: float = 30) -> str:
    return yaml.safe_dump_all(
        [webhook(n, secret="{$S}", chain={"timeout_s": timeout, "steps": [{"module": "log"}]})
         for n in names]
    )


class Follower:
    def __init__(self, provider: FileProvider) -> None:
        self.provider = provider
        self.holder = SnapshotHolder(env={"S": "x"})
        self.published: list[Snapshot] = []
        self.holder.on_publish(self.published.append)
        self.task = asyncio.create_task(self.holder.run(provider))

    async def until(self, check: object, timeout: float = 10) -> Snapshot:
        async def wait() -> Snapshot:
            while not (self.holder.ready and check(self.holder.current)):  # type: ignore[operator]
                await asyncio.sleep(0.02)
            return self.holder.current

        return await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def follow() -> AsyncIterator[list[Follower]]:
    made: list[Follower] = []
    yield made
    for f in made:
        f.task.cancel()
        await asyncio.gather(f.task, return_exceptions=True)
        await f.provider.close()


async def test_single_file_hot_reload(tmp_path: Path, follow: list[Follower]) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(hook_yaml("a"))
    f = Follower(FileProvider(cfg, poll_interval_s=30))
    follow.append(f)
    first = await f.until(lambda s: s.webhook("acme", "a") is not None)
    # Editors often write a new file and rename it over the old one.
    tmp = tmp_path / ".config.yaml.swp"
    tmp.write_text(hook_yaml("a", "b"))
    os.replace(tmp, cfg)
    snap = await f.until(lambda s: s.webhook("acme", "b") is not None)
    assert snap.revision == first.revision + 1
    cfg.write_text(hook_yaml("b"))
    snap = await f.until(lambda s: s.webhook("acme", "a") is None)
    # A broken edit keeps what the file had, and says why.
    cfg.write_text("apiVersion: [")
    snap = await f.until(lambda s: any(k.startswith("source:") for k in s.errors))
    assert snap.webhook("acme", "b") is not None


async def test_directory_and_invalid_document(tmp_path: Path, follow: list[Follower]) -> None:
    (tmp_path / "a.yaml").write_text(hook_yaml("a"))
    f = Follower(FileProvider(tmp_path, poll_interval_s=30))
    follow.append(f)
    await f.until(lambda s: s.webhook("acme", "a") is not None)
    bad = webhook("a", secret="{$S}", chain={"steps": []})
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text(json.dumps(webhook("b", secret="{$S}")))
    snap = await f.until(lambda s: s.webhook("acme", "b") is not None)
    assert snap.webhook("acme", "a") is not None  # the invalid update did not remove it
    assert "spec.chain.steps" in snap.errors["Webhook/acme/a"]


def publish_generation(root: Path, gen: int, text: str, revision: int | None = None) -> None:
    """Write a ConfigMap-style generation and swap `..data` to it atomically."""
    d = root / f"..gen-{gen}"
    d.mkdir()
    (d / "hooks.yaml").write_text(text)
    if revision is not None:
        (d / ".revision").write_text(str(revision))
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(d.name)
    os.replace(tmp_link, root / "..data")
    top = root / "hooks.yaml"
    if not top.is_symlink():
        top.symlink_to("..data/hooks.yaml")


async def test_configmap_symlink_swap_is_one_change(tmp_path: Path, follow: list[Follower]) -> None:
    publish_generation(tmp_path, 1, hook_yaml("a", "b", timeout=1), revision=41)
    f = Follower(FileProvider(tmp_path, poll_interval_s=30))
    follow.append(f)
    snap = await f.until(lambda s: s.webhook("acme", "a") is not None)
    assert snap.revision == 41
    n = len(f.published)
    publish_generation(tmp_path, 2, hook_yaml("a", "b", "c", timeout=2), revision=42)
    snap = await f.until(lambda s: s.revision == 42)
    assert len(f.published) == n + 1, "one swap, one snapshot"
    assert {s.webhook("acme", "a").spec.chain.timeout_s for s in f.published[n:]} == {2}  # type: ignore[union-attr]
    assert snap.webhook("acme", "c") is not None
