"""What gateway and connector say to each other, on every transport: JSON objects with a `type`.

Gateway to connector:

    {"type": "hello", "session": S, "window": N, "heartbeat_s": H, "visibility_timeout_s": V}
    {"type": "message", "id": ENTRY_ID, "delivery": ID, "namespace", "webhook", "channel",
     "attempt": n, "received_at": t, "headers": {...}, "body": BASE64}
    {"type": "heartbeat"}

Connector to gateway (WebSocket frames, or the body of `POST .../ack`):

    {"type": "ack", "ids": [ENTRY_ID, ...]}
    {"type": "nack", "id": ENTRY_ID, "error": "HTTP 503"}
    {"type": "heartbeat"}

`id` is what an ack names; `delivery` is the webhook's own id, the same on every redelivery,
which the connector passes on as `X-Whplane-Delivery` so a receiver can drop duplicates.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from data_plane.relay.store import Taken

ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
MAX_IDS = 1000  # per ack
MAX_ERROR = 500


def message(taken: Taken, channel: str) -> dict[str, Any]:
    d = taken.delivery
    return {
        "type": "message", "id": taken.entry_id, "delivery": d.id, "namespace": d.namespace,
        "webhook": d.webhook, "channel": channel, "attempt": taken.failures + 1,
        "received_at": d.received_at, "headers": dict(d.headers),
        "body": base64.b64encode(d.body).decode(),
    }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one ack request or frame settles."""

    acks: tuple[str, ...] = ()
    nacks: tuple[tuple[str, str], ...] = ()  # (entry id, error)


class BadFrame(ValueError):
    """A frame or ack body that is not what the connector protocol allows."""


def settlement(obj: Any) -> Settlement:
    """Parse an ack, a nack, or an ack body holding both (`{"ids": [...], "nacks": [...]}`)."""
    if not isinstance(obj, dict):
        raise BadFrame("expected a JSON object")
    kind = obj.get("type", "ack")
    if kind == "heartbeat":
        return Settlement()
    if kind == "nack":
        return Settlement(nacks=(_nack(obj),))
    if kind != "ack":
        raise BadFrame(f"unknown type {str(kind)[:40]!r}")
    ids, nacks = obj.get("ids", []), obj.get("nacks", [])
    if not isinstance(ids, list) or not isinstance(nacks, list):
        raise BadFrame("ids and nacks must be lists")
    if len(ids) + len(nacks) > MAX_IDS:
        raise BadFrame(f"at most {MAX_IDS} ids per ack")
    return Settlement(tuple(_entry_id(i) for i in ids), tuple(_nack(n) for n in nacks))


def _nack(obj: Any) -> tuple[str, str]:
    if not isinstance(obj, dict):
        raise BadFrame("a nack is an object")
    error = obj.get("error", "")
    return _entry_id(obj.get("id")), str(error)[:MAX_ERROR]


def _entry_id(value: Any) -> str:
    if not isinstance(value, str) or not ENTRY_ID.fullmatch(value):
        raise BadFrame("ids are stream entry ids (digits-digits)")
    return value
