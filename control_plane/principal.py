"""Who is calling, and what each kind of caller may read and write.

The admin may do anything. A namespace token reads and writes only its namespace: its webhooks
and connections, and it reads (never writes) its Namespace resource and the global connections,
which are shared infrastructure its webhooks may use.
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.store import scope
from providers.resources import GLOBAL, ResourceKey


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # recorded as the author of its changes
    namespace: str | None  # None: admin

    @property
    def admin(self) -> bool:
        return self.namespace is None

    def owns(self, key: ResourceKey) -> bool:
        """The key belongs to this principal's namespace (everything is the admin's)."""
        return self.admin or scope(key) == self.namespace

    def can_read(self, key: ResourceKey) -> bool:
        return self.owns(key) or (key.kind == "Connection" and key.namespace is None)

    def can_write(self, key: ResourceKey) -> bool:
        # A tenant cannot raise its own namespace limits: Namespace resources are admin-only.
        return self.admin or (key.kind != "Namespace" and key.namespace == self.namespace)

    def can_list(self, namespace: str) -> bool:
        """May list the resources of `namespace` (`_global`: the global connections)."""
        return self.admin or namespace in (self.namespace, GLOBAL)

    def can_manage(self, namespace: str) -> bool:
        """May read the history of `namespace` and roll it back."""
        return self.admin or namespace == self.namespace
