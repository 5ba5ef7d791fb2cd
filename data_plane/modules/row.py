"""A delivery as one table row, for the SQL modules (`postgres`, `mysql`).

    id           text, primary key: the delivery id, so a retry or a replay never adds a row
    namespace    text
    webhook      text
    received_at  timestamp (UTC): when the gateway accepted the webhook
    headers      JSON object: the request headers worth passing on (lower-case names)
    payload      JSON: the body itself when it is JSON, else {"body": ..., "body_encoding":
                 "utf-8" | "base64"} (the `redis_publish` envelope's rule)
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from data_plane.delivery import Delivery


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    namespace: str
    webhook: str
    received_at: datetime  # aware, UTC
    headers: str  # JSON text
    payload: str  # JSON text


def row(delivery: Delivery) -> Row:
    return Row(
        id=delivery.id,
        namespace=delivery.namespace,
        webhook=delivery.webhook,
        received_at=datetime.fromtimestamp(delivery.received_at, tz=UTC),
        headers=json.dumps(dict(delivery.headers), separators=(",", ":")),
        payload=payload_json(delivery.body),
    )


def payload_json(body: bytes) -> str:
    """The body as JSON text: itself when it parses as JSON, else wrapped (see the module doc).
    Re-serialised either way, so the text is always what a JSON column accepts."""
    try:
        value = json.loads(body, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError):
        try:
            value = {"body": body.decode("utf-8"), "body_encoding": "utf-8"}
        except UnicodeDecodeError:
            value = {"body": base64.b64encode(body).decode("ascii"), "body_encoding": "base64"}
    return json.dumps(value, separators=(",", ":"))


def _not_json(constant: str) -> object:
    # NaN and Infinity parse in Python but are not JSON: no JSON column would take them back.
    raise ValueError(constant)


def quoted(table: str, quote: str) -> str:
    """`schema.table` quoted part by part with `quote` ('"' or '`'). Safe because the step
    model only admits letters, digits, '_', '-' and one '.' in a table name."""
    return ".".join(f"{quote}{part}{quote}" for part in table.split("."))
