"""Which relay channels the served config declares, and who may connect to them.

A channel exists in namespace NS when a webhook of NS has a `relay` step naming it; its token
is that step's `token`, resolved like every reference when the snapshot was built. Several
webhooks may relay to one channel: each of their tokens is accepted (a way to rotate one), and
the channel's settings are those of the first step by webhook name.

The index is derived from the snapshot on first use after each config change; between changes
a lookup is one dict access and one constant-time comparison per token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from providers.resources import ResourceKey, Webhook
from providers.snapshot import Snapshot
from providers.step_spec import RelayConfig, RelayStep


@dataclass(frozen=True, slots=True)
class Channel:
    namespace: str
    name: str
    config: RelayConfig
    token_digests: tuple[bytes, ...]

    def accepts(self, token: str) -> bool:
        given = _digest(token)
        # Every digest is compared, so the time taken says nothing about which one matched.
        matched = False
        for digest in self.token_digests:
            matched |= hmac.compare_digest(given, digest)
        return matched


def _digest(token: str) -> bytes:
    # Compared as digests: equal length whatever was sent, and the token itself is not kept.
    return hashlib.sha256(token.encode()).digest()


class Channels:
    """The channel index of the snapshot `current()` returns, rebuilt when it changes."""

    def __init__(self, current: Callable[[], Snapshot]) -> None:
        self._current = current
        self._snapshot: Snapshot | None = None
        self._index: dict[tuple[str, str], Channel] = {}

    def get(self, namespace: str, name: str) -> Channel | None:
        return self._fresh().get((namespace, name))

    def authorize(self, namespace: str, name: str, token: str | None) -> Channel | None:
        """The channel if `token` is one of its tokens; None for a wrong token, no token and a
        channel that does not exist alike (the caller answers 401 to all three)."""
        channel = self.get(namespace, name)
        if channel is None or not token or not channel.accepts(token):
            return None
        return channel

    def all(self) -> list[Channel]:
        return list(self._fresh().values())

    def namespaces(self) -> set[str]:
        return {ns for ns, _ in self._fresh()}

    def _fresh(self) -> dict[tuple[str, str], Channel]:
        snap = self._current()
        if snap is not self._snapshot:
            self._index = _index(snap)
            self._snapshot = snap
        return self._index


def _index(snap: Snapshot) -> dict[tuple[str, str], Channel]:
    found: dict[tuple[str, str], tuple[RelayConfig, list[bytes]]] = {}
    hooks = sorted(((key, entry.resource) for key, entry in snap.entries.items()
                    if key.kind == "Webhook" and _relays(entry.resource)), key=lambda kv: kv[0])
    for key, hook in hooks:
        assert isinstance(hook, Webhook) and isinstance(key, ResourceKey)
        for step in hook.spec.chain.steps:
            if isinstance(step, RelayStep) and key.namespace:
                at = (key.namespace, step.config.channel)
                _, digests = found.setdefault(at, (step.config, []))
                digest = _digest(step.config.token)
                if digest not in digests:
                    digests.append(digest)
    return {at: Channel(at[0], at[1], config, tuple(digests))
            for at, (config, digests) in found.items()}


def _relays(resource: object) -> bool:
    return isinstance(resource, Webhook) and any(
        isinstance(s, RelayStep) for s in resource.spec.chain.steps)
