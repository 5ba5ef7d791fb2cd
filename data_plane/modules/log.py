"""`log` step: one structured log line per webhook on logger `data_plane.modules.log`.

The message reads `webhook namespace=.. webhook=.. id=.. size=..` (plus `body=<JSON string>`
with `include_body`, JSON-quoted so a body cannot forge log lines), and the same values ride in
`extra={"whplane": {...}}` for JSON log formatters. Cannot fail.
"""

from __future__ import annotations

import json
import logging

from data_plane.clients import Clients
from data_plane.delivery import Delivery
from providers.snapshot import Endpoint
from providers.step_spec import LogStep

log = logging.getLogger(__name__)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


async def run(step: LogStep, endpoint: Endpoint, delivery: Delivery, clients: Clients) -> None:
    level = _LEVELS[step.config.level]
    if not log.isEnabledFor(level):
        return
    fields: dict[str, object] = {
        "namespace": delivery.namespace,
        "webhook": delivery.webhook,
        "id": delivery.id,
        "size": len(delivery.body),
    }
    if step.config.include_body:
        fields["body"] = delivery.body.decode("utf-8", errors="replace")
        log.log(
            level,
            "webhook namespace=%s webhook=%s id=%s size=%d body=%s",
            delivery.namespace, delivery.webhook, delivery.id, len(delivery.body),
            json.dumps(fields["body"]),
            extra={"whplane": fields},
        )  # fmt: skip
        return
    log.log(
        level,
        "webhook namespace=%s webhook=%s id=%s size=%d",
        delivery.namespace, delivery.webhook, delivery.id, len(delivery.body),
        extra={"whplane": fields},
    )  # fmt: skip
