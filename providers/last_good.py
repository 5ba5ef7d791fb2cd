"""The last good config on local disk, so a gateway can start and serve while its store is down.

Only unresolved documents are written (references intact): secrets never touch this file.
Writes go to a temporary file renamed over the old one, so a crash leaves the previous version.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from providers.provider import ChangeBatch, RawDoc
from providers.resources import ResourceKey

log = logging.getLogger(__name__)
FORMAT = "whplane-last-good/1"


def default_state_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "whplane"


class LastGood:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, revision: int, docs: Iterable[tuple[ResourceKey, RawDoc]], source: str) -> None:
        """Replace the file with these documents (blocking: run it off the event loop)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".last-good-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps({"format": FORMAT, "revision": revision, "source": source}))
                f.write("\n")
                for key, raw in docs:
                    doc = raw.decode() if isinstance(raw, bytes) else json.dumps(raw)
                    f.write(f'{{"key":{json.dumps(list(key))},"doc":{doc}}}\n')
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, source: str) -> ChangeBatch | None:
        """The saved config as a full batch, or None if there is none for this source."""
        try:
            with self.path.open(encoding="utf-8") as f:
                header = json.loads(f.readline())
                if header.get("format") != FORMAT:
                    log.warning("ignoring %s: unknown format %r", self.path, header.get("format"))
                    return None
                if header.get("source") != source:
                    log.warning(
                        "ignoring %s: saved from %s, not %s", self.path, header["source"], source
                    )
                    return None
                puts: dict[ResourceKey, Any] = {}
                for line in f:
                    item = json.loads(line)
                    puts[ResourceKey(*item["key"])] = item["doc"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable last good config %s: %s", self.path, exc)
            return None
        return ChangeBatch(revision=int(header["revision"]), puts=puts, full=True)
