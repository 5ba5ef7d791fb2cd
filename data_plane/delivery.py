"""One accepted webhook on its way to its destinations: what the chain, the queue and the
worker pass around. Serialised to flat string fields for Redis streams."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

# The names of to_fields(), in its order, each with its length: see to_packed.
_PACKED = b"".join(b"%d:%s%%d:%%s" % (len(name), name) for name in (
    b"id", b"namespace", b"webhook", b"body", b"headers", b"revision", b"received_at",
    b"attempt", b"request_id"))


# Not frozen, though nothing changes one once built: one is built per webhook, and a frozen
# init (each field set through `object.__setattr__`) costs five times a plain one.
@dataclass(slots=True)
class Delivery:
    namespace: str
    webhook: str
    body: bytes
    headers: Mapping[str, str]  # lower-case names of the request headers worth passing on
    revision: int  # config revision of the snapshot that accepted it
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    received_at: float = field(default_factory=time.time)
    attempt: int = 0
    request_id: str = ""

    def to_fields(self) -> dict[str, bytes]:
        return {
            "id": self.id.encode(),
            "namespace": self.namespace.encode(),
            "webhook": self.webhook.encode(),
            "body": self.body,
            "headers": _headers_json(self.headers),
            "revision": str(self.revision).encode(),
            "received_at": repr(self.received_at).encode(),
            "attempt": str(self.attempt).encode(),
            "request_id": self.request_id.encode(),
        }

    def to_packed(self) -> bytes:
        """`to_fields()` as the queue's scripts read it, "<len>:<bytes>" per name and value
        (data_plane/queue.py): one formatting step, as it is done once per async request."""
        i, n, w, b = self.id.encode(), self.namespace.encode(), self.webhook.encode(), self.body
        h, rev, at = _headers_json(self.headers), b"%d" % self.revision, b"%r" % self.received_at
        n_at, rid = b"%d" % self.attempt, self.request_id.encode()
        return _PACKED % (len(i), i, len(n), n, len(w), w, len(b), b, len(h), h, len(rev), rev,
                          len(at), at, len(n_at), n_at, len(rid), rid)

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> Delivery:
        return cls(
            id=fields[b"id"].decode(),
            namespace=fields[b"namespace"].decode(),
            webhook=fields[b"webhook"].decode(),
            body=fields[b"body"],
            headers=orjson.loads(fields[b"headers"]),
            revision=int(fields[b"revision"]),
            received_at=float(fields[b"received_at"]),
            attempt=int(fields.get(b"attempt", b"0")),
            request_id=fields.get(b"request_id", b"").decode(),
        )

    def next_attempt(self) -> Delivery:
        return Delivery(self.namespace, self.webhook, self.body, self.headers, self.revision,
                        self.id, self.received_at, self.attempt + 1, self.request_id)


def _headers_json(headers: Mapping[str, str]) -> bytes:
    # orjson: the standard library's encoder costs more than the rest of an enqueue together.
    return orjson.dumps(headers if type(headers) is dict else dict(headers))
