"""Every Redis key and group name the data plane uses, in one place (like arq's constants.py).

    whplane:{q}:deliveries              stream: accepted deliveries not yet settled
    whplane:{q}:deliveries:scheduled    sorted set: retries waiting for their due time (score)
    whplane:{q}:deliveries:dead         stream: dead letters (MAXLEN ~ bounded)
    whplane:rl:<key>                    hash: one shared token bucket (expires when full)
    whplane:idem:<sha256>               string: one idempotency key (expires with its window)
    whplane:{relay:NS:CH}:messages      stream: a relay channel's messages not yet acknowledged
    whplane:{relay:NS:CH}:messages:dead stream: its dead letters (MAXLEN ~ bounded)
    whplane:{relay:NS:CH}:attempts      hash: entry id -> local delivery failures so far

The queue keys share the `{q}` hash tag so the Lua scripts that move an item between them
touch one Redis Cluster slot; a custom stream name should carry its own `{tag}` for the same
reason. A relay channel's keys share the `{relay:NS:CH}` tag for the same reason (namespace
and channel names hold no ':', so tags never collide).
"""

from __future__ import annotations

import hashlib

STREAM = "whplane:{q}:deliveries"
GROUP = "whplane-workers"
RATE_LIMIT_PREFIX = "whplane:rl:"
IDEMPOTENCY_PREFIX = "whplane:idem:"
RELAY_GROUP = "whplane-connectors"
# The consumer holding a relay channel's released and retry-delayed messages until one of the
# channel's sessions claims them (it never reads, so it never takes anything itself).
RELAY_PARKED = "whplane-parked"


def scheduled_key(stream: str) -> str:
    return f"{stream}:scheduled"


def dead_letters_key(stream: str) -> str:
    return f"{stream}:dead"


def rate_limit_key(key: str) -> str:
    return f"{RATE_LIMIT_PREFIX}{key}"


def idempotency_key(namespace: str, webhook: str, delivery_key: str) -> str:
    # Hashed: the sender chooses delivery_key, so its length and bytes are not ours to trust.
    raw = "\0".join((namespace, webhook, delivery_key)).encode()
    return f"{IDEMPOTENCY_PREFIX}{hashlib.sha256(raw).hexdigest()}"


def relay_stream(namespace: str, channel: str) -> str:
    return f"whplane:{{relay:{namespace}:{channel}}}:messages"


def relay_attempts(namespace: str, channel: str) -> str:
    return f"whplane:{{relay:{namespace}:{channel}}}:attempts"
