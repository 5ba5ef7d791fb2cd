"""OpenBao (the Vault API) in dev mode on loopback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cli.servers.ports import LOOPBACK, free_port
from cli.servers.process import START_TIMEOUT, ServerProcess, child_env, find_binary, http_json

if TYPE_CHECKING:
    import hvac


class VaultServer(ServerProcess):
    """OpenBao in dev mode: unsealed, root token ``token``, KV v2 mounted at ``secret/``.

    Dev mode keeps everything in memory: restart() (or kill() + start()) gives an empty server.
    """

    kind = "bao"
    binary = "bao"

    def __init__(
        self,
        port: int | None = None,
        token: str = "root",
        *,
        extra_args: Sequence[str] = (),
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__("bao", base_dir, start_timeout)
        # Dev mode always opens its cluster listener on port + 1, so reserve that too.
        self.port = port if port is not None else free_port(consecutive=2)
        self.token = token
        self.extra_args = tuple(extra_args)

    @property
    def addr(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self) -> hvac.Client:
        """A new hvac client authenticated with the root token."""
        import hvac
        import requests

        session = requests.Session()
        session.trust_env = False  # no proxies or netrc from the environment for loopback
        return hvac.Client(url=self.addr, token=self.token, session=session)

    def _prepare(self) -> None:
        (self.base_dir / "home").mkdir(exist_ok=True)

    def _argv(self) -> list[str]:
        return [
            find_binary(self.binary),
            "server",
            "-dev",
            f"-dev-root-token-id={self.token}",
            f"-dev-listen-address={LOOPBACK}:{self.port}",
            "-dev-no-store-token",
            *self.extra_args,
        ]

    def _env(self) -> dict[str, str]:
        # A private HOME and no VAULT_*/BAO_* variables: the user's config, token helper or
        # BAO_ADDR must not leak in. Dev mode already disables mlock.
        return child_env(
            ("VAULT_", "BAO_"),
            HOME=str(self.base_dir / "home"),
            BAO_API_ADDR=self.addr,
        )

    def _healthy(self) -> bool:
        try:
            status, _ = http_json("GET", f"{self.addr}/v1/sys/health", timeout=1.0)
        except (OSError, ValueError):
            return False
        return status == 200

    def _describe(self) -> str:
        return f"bao@{LOOPBACK}:{self.port}"


