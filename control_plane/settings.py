"""Process settings of the control plane: flag > environment (`WH_*`) > default, by presence."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from control_plane.body import DEFAULT_MAX_REQUEST_BYTES
from control_plane.dir_store import DirStore
from control_plane.etcd_store import EtcdStore
from control_plane.store import Store


class ApiLimits(BaseSettings):
    """The API's own limits; `create_api` reads them from the environment unless given."""

    model_config = SettingsConfigDict(env_prefix="WH_", extra="ignore", frozen=True)

    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES, ge=1024,
        description="largest request body accepted (413 above); applies bigger than this go "
        "in parts")


class ControlPlaneSettings(ApiLimits):
    store: str = Field(description="etcd://HOST:PORT[,...]/PREFIX | file:DIR")
    host: str = "127.0.0.1"
    port: int = Field(default=8070, ge=0, le=65535)
    admin_token: str | None = Field(default=None, repr=False)
    admin_token_file: Path | None = None
    allow_plaintext_secrets: bool = False
    log_json: bool = False
    log_level: str = "info"

    def admin(self) -> str | None:
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text().strip() or None
        return self.admin_token


def open_store(url: str, env: Mapping[str, str]) -> Store:
    if url.startswith("etcd://"):
        return EtcdStore.from_url(url, env)
    if url.startswith("file:"):
        path = url.removeprefix("file:").removeprefix("//")
        if not path:
            raise ValueError("file: store needs a directory, e.g. file:state/config")
        return DirStore(path)
    raise ValueError(f"unknown store {url!r}; expected etcd://HOST:PORT[,...]/PREFIX or file:DIR")
