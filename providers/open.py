"""Open a config provider from its URL: `file:PATH`, `etcd://...`, `vault://MOUNT/PATH`."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from providers.etcd import EtcdProvider
from providers.file import FileProvider
from providers.provider import ConfigProvider
from providers.vault import VaultProvider
from providers.vault_client import VaultSettings

SCHEMES = "file:PATH | etcd://HOST:PORT[,HOST:PORT...]/PREFIX | vault://MOUNT/PATH"


def open_provider(url: str, env: Mapping[str, str]) -> ConfigProvider:
    """The provider for `url`; ValueError naming the problem when the URL is not usable."""
    if url.startswith("file:"):
        path = url.removeprefix("file:").removeprefix("//")
        if not path:
            raise ValueError("file: URL needs a path, e.g. file:config/")
        return FileProvider(path)
    if url.startswith("etcd://"):
        return EtcdProvider.from_url(url, env)
    if url.startswith("vault://"):
        parts = urlsplit(url)
        mount, path = parts.netloc, parts.path.strip("/")
        if not mount or not path:
            raise ValueError(f"vault URL needs a mount and a path (vault://MOUNT/PATH): {url!r}")
        settings = VaultSettings.from_env(env)
        if settings is None:
            raise ValueError("vault:// config needs VAULT_ADDR (and VAULT_TOKEN or AppRole)")
        return VaultProvider(settings, mount=mount, path=path)
    raise ValueError(f"unknown config URL {url!r}; expected {SCHEMES}")
