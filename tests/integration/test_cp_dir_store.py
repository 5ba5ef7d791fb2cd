"""The directory store after a crash in the middle of an apply: the state a crash leaves is set
up on disk, then a real control plane starts on it and must apply as if nothing happened."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.processes import ControlPlaneProcess
from providers.file import DATA_LINK, FileProvider

ADMIN = "admin-token-for-dir-store"
HEADERS = {"authorization": f"Bearer {ADMIN}"}


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "whplane/v1", "kind": "Namespace", "metadata": {"name": name}}


def apply(cp: ControlPlaneProcess, *docs: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{cp.url}/v1/apply", json={"resources": list(docs)}, headers=HEADERS)


def generation(root: Path, revision: int) -> Path:
    return root / f"..gen-{revision:020d}"


@pytest.mark.parametrize("crash", ["after-rename", "after-link"])
def test_an_apply_after_a_crash_before_the_swap(tmp_path: Path, crash: str) -> None:
    root = tmp_path / "store"
    with ControlPlaneProcess(f"file:{root}", ADMIN) as cp:
        assert apply(cp, ns("acme")).status_code == 200
    # The crash: revision 2 was renamed into place (and its link made), never published.
    orphan = generation(root, 2)
    shutil.copytree(generation(root, 1), orphan)
    (orphan / "resources" / "_global" / "Namespace" / "ghost.json").write_text(
        json.dumps(ns("ghost")))
    (orphan / ".revision").write_text("2")
    if crash == "after-link":
        (root / f"{DATA_LINK}-2").symlink_to(orphan.name)

    with ControlPlaneProcess(f"file:{root}", ADMIN) as cp:
        r = apply(cp, ns("globex"))
        assert r.status_code == 200, r.text  # was: 500 "Directory not empty", for good
        assert r.json()["revision"] == 2
        r = apply(cp, ns("initech"))
        assert r.status_code == 200 and r.json()["revision"] == 3
        items = httpx.get(f"{cp.url}/v1/resources", headers=HEADERS).json()["items"]
        assert sorted(d["metadata"]["name"] for d in items) == ["acme", "globex", "initech"]
    assert not list(root.glob(f"{DATA_LINK}-*"))


def test_history_of_a_swapped_apply_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with ControlPlaneProcess(f"file:{root}", ADMIN) as cp:
        assert apply(cp, ns("acme")).status_code == 200
        assert apply(cp, ns("globex")).status_code == 200
    # The crash: revision 2 was published, its record not yet copied to history/.
    (root / "history" / f"{2:020d}.json").unlink()

    with ControlPlaneProcess(f"file:{root}", ADMIN) as cp:
        assert apply(cp, ns("initech")).status_code == 200
        history = httpx.get(f"{cp.url}/v1/history", headers=HEADERS).json()["items"]
        assert [h["revision"] for h in history] == [3, 2, 1]
    batch = asyncio.run(FileProvider(root).load())
    assert batch.revision == 3 and not batch.source_errors
