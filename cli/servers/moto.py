"""moto's server on loopback: an S3 and SQS endpoint (any keys, region ``us-east-1``)."""

from __future__ import annotations

from cli.servers.ports import LOOPBACK
from cli.servers.process import PortServer, child_env, find_binary, http_json

REGION = "us-east-1"


class MotoServer(PortServer):
    """``moto_server`` (from the moto[server] wheel). Everything is in memory: a restart, or
    ``reset()``, gives empty buckets and queues."""

    kind = "moto"
    binary = "moto_server"


    @property
    def url(self) -> str:
        """The endpoint URL to give an S3 or SQS client."""
        return f"http://{LOOPBACK}:{self.port}"

    def reset(self) -> None:
        """Forget every bucket, object and queue."""
        http_json("POST", f"{self.url}/moto-api/reset", timeout=10.0)

    def _argv(self) -> list[str]:
        return [find_binary(self.binary), "-H", LOOPBACK, "-p", str(self.port), *self.extra_args]

    def _env(self) -> dict[str, str]:
        # AWS_* from the parent could point moto at real credentials or another region.
        return child_env(("AWS_", "MOTO_"))

    def _healthy(self) -> bool:
        try:
            status, _ = http_json("GET", f"{self.url}/moto-api/data.json", timeout=1.0)
        except (OSError, ValueError):
            return False
        return status == 200

    def _describe(self) -> str:
        return f"moto@{LOOPBACK}:{self.port}"
