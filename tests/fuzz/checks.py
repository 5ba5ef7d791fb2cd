"""The properties the fuzz targets share: what a well-formed refusal looks like."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tests.fuzz.strategies import Path, render_path

_INDEX = re.compile(r"\[(\d+)\]")


def path_exists(doc: Any, path: str, root: bool = True) -> bool:
    """Whether a field path ("spec.chain.steps[0].config") names a place in `doc`: every step
    but the last must exist (the last may be the missing field the error is about).

    Keys may themselves hold '.' or '[' (header names, labels), so the walk tries every key
    that the rest of the path starts with.
    """
    if path == "":
        return True
    if path.endswith(")") and " (" in path:
        # "metadata.labels.{$X} (a mapping key)": a remark after the path, tolerated.
        path = path[:path.rindex(" (")]
    if isinstance(doc, Mapping):
        # The first step has no separator; a key may itself start with dots.
        rest = path if root else path.removeprefix(".")
        for key in doc:
            k = str(key)
            if rest.startswith(k) and (len(rest) == len(k) or rest[len(k)] in ".["):
                if path_exists(doc[key], rest[len(k):], root=False):
                    return True
        return _is_leaf(rest)
    if isinstance(doc, list | tuple):
        m = _INDEX.match(path)
        if m is None:
            return _is_leaf(path.lstrip("."))
        i = int(m.group(1))
        if i < len(doc):
            return path_exists(doc[i], path[m.end():], root=False)
        return m.end() == len(path)
    return _is_leaf(path.lstrip("."))


def _is_leaf(rest: str) -> bool:
    """One step left: a field or an index that is missing, which an error may well be about."""
    return bool(re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*|\[\d+\]", rest))


def related(error_path: str, mutated: Path) -> bool:
    """Whether an error about `error_path` can be the consequence of a change at `mutated`:
    the error is at the changed field, above it, or beside it (same parent)."""
    target = render_path(mutated)
    parent = render_path(mutated[:-1])
    return (_under(error_path, parent) or _under(target, error_path))


def _under(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or (
        path.startswith(prefix) and path[len(prefix)] in ".[")


def api_errors(body: Any) -> list[dict[str, Any]]:
    """The errors of a 422 answer from the control plane, whatever their exact spelling.

    Two shapes exist: the control plane's own `{"detail": {"errors": [DocumentError.as_dict()]}}`
    (source, document, field, reason) and FastAPI's request validation
    `{"detail": [{"loc": [...], "msg": ..., "type": ...}]}` for a malformed request body.
    Each is normalised to {"document": ..., "field": ..., "reason": ...}.
    """
    detail = body.get("detail") if isinstance(body, Mapping) else None
    out: list[dict[str, Any]] = []
    if isinstance(detail, Mapping) and isinstance(detail.get("errors"), list):
        for e in detail["errors"]:
            out.append({
                "document": e.get("document", e.get("location", e.get("source"))),
                "source": e.get("source", e.get("location")),
                "field": e.get("field", e.get("path")),
                "reason": e.get("reason", e.get("message")),
            })
    elif isinstance(detail, list):
        for e in detail:
            loc = e.get("loc") or []
            out.append({"document": "request", "source": "request",
                        "field": ".".join(map(str, loc)), "reason": e.get("msg")})
    return out
