"""The `ConfigProvider` protocol: where resources come from, and how changes arrive.

A provider hands out raw documents (JSON bytes or already-parsed mappings), not validated
resources: a value written straight into the store may be invalid, and the snapshot holder must
be able to skip it, keep the previous version and record the error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from providers.resources import ResourceKey
from providers.rollout import Canary

RawDoc = bytes | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Everything that changed at one store revision (one etcd transaction, one file reload).

    `full` means the batch is the complete state (after a compaction or a reconnect that could
    not resume): whatever the receiver holds that is not in `puts` is gone.
    """

    revision: int
    puts: Mapping[ResourceKey, RawDoc] = field(default_factory=dict)
    deletes: frozenset[ResourceKey] = frozenset()
    full: bool = False
    # Problems of the source itself that no key can carry (an unparsable file, a bad key).
    source_errors: tuple[str, ...] = ()
    # Where in the store this batch was read, when that differs from `revision`: a full load
    # is labelled with the config's revision but read at the store's (later) current one.
    position: int = 0
    # The canary record (providers/rollout.py), when this batch set or removed it: then
    # `canary_changed` is true and `canary` is the new record (None: no canary any more, by a
    # promote or an abort). A full batch always carries the current record.
    canary_changed: bool = False
    canary: Canary | None = None
    # With a full batch while a canary runs: what the canary revision changed, as it was before
    # (None: the resource did not exist), so a gateway that does not serve the canary can hold
    # the store's values of those resources back and serve these.
    canary_before: Mapping[ResourceKey, RawDoc | None] | None = None

    @property
    def resume_after(self) -> int:
        return max(self.revision, self.position)

    def __len__(self) -> int:
        return len(self.puts) + len(self.deletes)


class ProviderState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    state: ProviderState
    url: str
    endpoint: str | None = None
    last_error: str | None = None
    reconnects: int = 0
    # Full reloads forced because the store was ahead of what the watch had delivered.
    resyncs: int = 0


class ConfigProvider(Protocol):
    async def load(self) -> ChangeBatch:
        """The complete current state as a `full` batch, at one consistent revision."""
        ...

    def watch(self, after_revision: int) -> AsyncIterator[ChangeBatch]:
        """Batches for every revision after `after_revision`, in order, forever.

        Reconnects by itself with backoff; yields a `full` batch when it cannot resume exactly
        (compaction, a store that went back in time). Ends only when the provider is closed.
        """
        ...

    @property
    def status(self) -> ProviderStatus: ...

    async def close(self) -> None: ...
