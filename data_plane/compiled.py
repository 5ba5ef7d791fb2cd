"""Per-webhook objects built once and reused by every request: the verifier, the payload check.

Keyed by the identity of the frozen `Webhook` object: a snapshot change that does not touch a
webhook keeps the very same object, so its compiled form survives config changes for free, and
a changed webhook is a new object that compiles on its first request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from data_plane.chain import all_instant
from data_plane.verify import Verifier, build_verifier
from data_plane.verify import payload_schema as payload_schema_check
from providers.resources import Webhook


@dataclass(frozen=True, slots=True)
class CompiledWebhook:
    webhook: Webhook
    verifier: Verifier | None
    payload_check: Callable[[bytes], None] | None
    error: str | None = None  # why it cannot serve (a spec the verifier cannot use)
    instant: bool = False  # data_plane.chain.all_instant of its chain: run with `run_instant`


def compile_webhook(webhook: Webhook) -> CompiledWebhook:
    try:
        verifier = build_verifier(webhook.spec.verify)
        schema = webhook.spec.payload_schema
        check = payload_schema_check.build(schema) if schema is not None else None
    except ValueError as exc:
        return CompiledWebhook(webhook, None, None, error=str(exc))
    return CompiledWebhook(webhook, verifier, check, instant=all_instant(webhook.spec.chain.steps))


class CompiledCache:
    def __init__(self, max_entries: int = 200_000) -> None:
        self._max = max_entries
        self._items: OrderedDict[int, CompiledWebhook] = OrderedDict()

    def get(self, webhook: Webhook) -> CompiledWebhook:
        key = id(webhook)
        hit = self._items.get(key)
        # The stored object keeps `webhook` alive, so its id cannot be reused while cached.
        if hit is not None and hit.webhook is webhook:
            return hit
        compiled = compile_webhook(webhook)
        self._items[key] = compiled
        if len(self._items) > self._max:
            self._items.popitem(last=False)
        return compiled

    def __len__(self) -> int:
        return len(self._items)
