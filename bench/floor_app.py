"""The floor: a bare ASGI app doing the same GitHub HMAC check as the gateway, nothing else."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

SECRET = os.environ.get("BENCH_SECRET", "bench-secret").encode()
STATUS = int(os.environ.get("BENCH_STATUS", "200"))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    sig = dict(scope["headers"]).get(b"x-hub-signature-256", b"").decode()
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    status = STATUS if hmac.compare_digest(sig, expected) else 401
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
