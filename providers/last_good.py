"""The last good config on local disk, so a gateway can start and serve while its store is down.

Only unresolved documents are written (references intact): secrets never touch this file.

The file is a base and a journal. `write` replaces the whole file with every document (a
temporary file renamed over the old one, so a crash leaves the previous version); `append` adds
one revision's changes to its end, closed by a commit line, so the cost of saving a change is
the change's, not the config's: at a million webhooks a full rewrite takes seconds, every time.
A crash in the middle of an append leaves changes without their commit line, which `read`
ignores: it returns the last revision whose commit line it found.

    {"format": ..., "revision": R0, "source": ..., "docs": N}   header: N base documents follow
    {"key": [kind, namespace, name], "doc": {...}}               N times
    {"key": [...], "doc": {...}} | {"key": [...], "deleted": true}   changes of a revision
    {"revision": R1}                                             its commit line
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from providers.model import NAME_RE
from providers.provider import ChangeBatch, RawDoc
from providers.resources import KINDS, ResourceKey
from providers.shapes import is_name

log = logging.getLogger(__name__)
FORMAT = "whplane-last-good/1"


def default_state_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "whplane"


class _Lines:
    """`_line` for the documents of one whole file: the start of a line is the same for every
    key of a kind and namespace, and made once for them."""

    def __init__(self) -> None:
        # Keyed by a string, not a (kind, namespace) tuple: a dict of strings and bytes is
        # left alone by the cyclic GC, and this one grows to a key per namespace (100k at a
        # million webhooks) while the gateway serves; each new tuple key made the GC track
        # it again, and every young collection walked it (3-4 ms each, measured).
        self._starts: dict[str, bytes | None] = {}

    def __call__(self, key: ResourceKey, raw: RawDoc) -> bytes:
        kind, namespace, name = key
        at = kind if namespace is None else f"{kind}/{namespace}"
        start = self._starts.get(at, _UNSET)
        if start is _UNSET:
            start = self._starts[at] = (
                _key_json(ResourceKey(kind, namespace, "x"))[:-3]
                if kind in KINDS and (namespace is None or is_name(namespace)) else None)
        if start is None or not is_name(name) or not isinstance(raw, bytes):
            return _line(key, raw)
        return b"".join((b'{"key":', start, name.encode(), b'"],"doc":', raw, b"}\n"))


_UNSET: Any = object()


def _line(key: ResourceKey, raw: RawDoc | None) -> bytes:
    if raw is None:
        return b'{"key":' + _key_json(key) + b',"deleted":true}\n'
    doc = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    return b"".join((b'{"key":', _key_json(key), b',"doc":', doc, b"}\n"))


def _key_json(key: ResourceKey) -> bytes:
    kind, namespace, name = key
    # Names as the model takes them need no escaping (a whole file of keys is written at once).
    if kind in KINDS and NAME_RE.fullmatch(name) and (
            namespace is None or NAME_RE.fullmatch(namespace)):
        ns = b"null" if namespace is None else b'"' + namespace.encode() + b'"'
        return b'["' + kind.encode() + b'", ' + ns + b', "' + name.encode() + b'"]'
    return json.dumps(list(key)).encode()


def _parse_line(line: bytes) -> dict[str, Any]:
    """A line of the file; a document stays the bytes it was written as (validated, and
    its shape found, like a document read from the store)."""
    # `_line` writes {"key":KEY,"doc":DOC}: the first ',"doc":' ends KEY (a quote inside a
    # JSON string is escaped), and the line ends with the document's closing brace.
    if line.startswith(b'{"key":') and line.endswith(b"}\n"):
        at = line.find(b',"doc":')
        if at > 0:
            doc = line[at + 7:-2]
            if doc.startswith(b"{") and doc.endswith(b"}"):
                return {"key": json.loads(line[7:at]), "doc": doc}
    item = json.loads(line)
    if not isinstance(item, dict):
        raise ValueError(f"not a line of this file: {type(item).__name__}")
    return item


# Lines formatted between two moments the writing thread lets go of the interpreter, and how
# long it then stays away: a whole file is seconds of work at a million documents, done while
# the gateway serves, and the event loop must neither wait a switch interval for the GIL nor
# share it half and half. The file takes longer; ready never waited for it.
_CHUNK = 64
_PAUSE_S = 0.0005


def _write_chunk(f: BinaryIO, chunk: list[bytes], pause_s: float) -> int:
    n = len(chunk)
    f.write(b"".join(chunk))
    chunk.clear()
    time.sleep(pause_s)
    return n


class LastGood:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Changes appended since the last full write: past about the base's size, a rewrite
        # is cheaper to read back than the journal.
        self.journal_lines = 0
        self.base_docs = 0

    def write(self, revision: int, docs: Iterable[tuple[ResourceKey, RawDoc]], source: str,
              count: int | None = None, paced: bool = True) -> None:
        """Replace the file with these documents (blocking: run it off the event loop).

        With `count` (how many `docs` yields) the documents are streamed to the file, a few
        at a time, instead of gathered first: a million of them at once is hundreds of MB.
        `paced`: pause between chunks (`_PAUSE_S`), while the gateway serves; not when it
        stops and nothing waits on the GIL but its deadline.
        """
        pause_s = _PAUSE_S if paced else 0.0
        if count is None:
            docs = list(docs)
            count = len(docs)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".last-good-", dir=self.path.parent)
        written = 0
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps({"format": FORMAT, "revision": revision, "source": source,
                                    "docs": count}).encode() + b"\n")
                chunk: list[bytes] = []
                line = _Lines()
                for key, raw in docs:
                    chunk.append(line(key, raw))
                    if len(chunk) == _CHUNK:
                        written += _write_chunk(f, chunk, pause_s)
                written += _write_chunk(f, chunk, pause_s)
                if written != count:
                    raise ValueError(f"{written} documents written, {count} announced")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.journal_lines, self.base_docs = 0, count

    def append(self, revision: int, changes: Iterable[tuple[ResourceKey, RawDoc | None]]) -> None:
        """Add one revision's changes (None: deleted) to a file `write` made (blocking)."""
        lines = [_line(key, raw) for key, raw in changes]
        lines.append(b'{"revision":%d}\n' % int(revision))
        with self.path.open("ab") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        self.journal_lines += len(lines)

    def read(self, source: str) -> ChangeBatch | None:
        """The saved config as a full batch, or None if there is none for this source."""
        try:
            with self.path.open("rb") as f:
                header = json.loads(f.readline())
                if header.get("format") != FORMAT:
                    log.warning("ignoring %s: unknown format %r", self.path, header.get("format"))
                    return None
                if header.get("source") != source:
                    log.warning(
                        "ignoring %s: saved from %s, not %s", self.path, header["source"], source
                    )
                    return None
                revision = int(header["revision"])
                base = header.get("docs")  # absent: a file of base documents only
                puts: dict[ResourceKey, Any] = {}
                pending: list[dict[str, Any]] = []
                for n, line in enumerate(f):
                    try:
                        item = _parse_line(line)
                    except ValueError:
                        if base is not None and n >= base:
                            break  # a torn append: its revision never committed
                        raise
                    if base is None or n < base:
                        puts[ResourceKey(*item["key"])] = item["doc"]
                    elif "key" in item:
                        pending.append(item)
                    else:
                        for change in pending:
                            key = ResourceKey(*change["key"])
                            if change.get("deleted"):
                                puts.pop(key, None)
                            else:
                                puts[key] = change["doc"]
                        pending.clear()
                        revision = int(item["revision"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable last good config %s: %s", self.path, exc)
            return None
        return ChangeBatch(revision=revision, puts=puts, full=True)
