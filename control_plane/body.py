"""Request bodies: read up to a size limit, parsed as strict JSON, validated by a model.

FastAPI's own body parameters read and parse the body before any dependency runs, so an
unauthenticated caller could make the control plane buffer and parse any size. Routes take
`Body(Model)` instead, which depends on authorization and so reads nothing for a refused
caller. Strict JSON: UTF-8 only, no NaN or Infinity, no duplicate keys, no lone surrogates;
each is a 422 naming what and where, never a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from control_plane.authz import Who
from control_plane.errors import BadInput, TooLarge

M = TypeVar("M", bound=BaseModel)
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int | None, limit: int) -> TooLarge:
    what = f"{size} bytes" if size is not None else "more"
    return TooLarge(f"the request body is {what}, over the control plane's limit of {limit} "
                    "bytes: apply the documents in parts, or raise the limit "
                    "(WH_MAX_REQUEST_BYTES)")


def parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad([((), f"not UTF-8: byte {exc.start} (0x{raw[exc.start]:02x}) is "
                            f"{exc.reason}")]) from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite,
                           object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise _bad([((), f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]
                      ) from None
    except (ValueError, RecursionError) as exc:
        raise _bad([((), f"not acceptable JSON: {_reason(exc)}")]) from None
    surrogate = _surrogate(value, ())
    if surrogate is not None:
        raise _bad([(surrogate, "a lone UTF-16 surrogate (\\ud800-\\udfff) is not text")])
    return value


def _bad(problems: list[tuple[tuple[str | int, ...], str]]) -> BadInput:
    return BadInput([(("body", *loc), msg) for loc, msg in problems])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in one object")
        out[key] = value
    return out


def _surrogate(value: Any, path: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    """The path of the first string (or key) holding a lone surrogate, or None."""
    if isinstance(value, str):
        return path if not value.isascii() and _has_surrogate(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if not k.isascii() and _has_surrogate(k):
                return (*path, k.encode("utf-8", "backslashreplace").decode())
            found = _surrogate(v, (*path, k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate(v, (*path, i))
            if found is not None:
                return found
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """The route's `openapi_extra`: the body the route reads itself, for the docs."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def Body(model: type[M]) -> Any:
    async def read(request: Request, who: Who) -> M:
        raw = await read_limited(request, request.app.state.max_request_bytes)
        try:
            return model.model_validate(parse_json(raw))
        except ValidationError as exc:
            raise _bad([(tuple(e["loc"]), e["msg"]) for e in exc.errors(
                include_url=False, include_context=False, include_input=False)]) from None

    return Depends(read)
