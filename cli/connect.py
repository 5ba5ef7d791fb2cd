"""`whplane connect`: run a relay connector (data_plane/relay/connector.py) until Ctrl-C or
SIGTERM. The channel token comes from `WH_CONNECT_TOKEN` or `--token-file`, never from the
command line, where any user of the machine could read it in the process list."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from cli import event_loop
from cli.console import stderr

TOKEN_ENV = "WH_CONNECT_TOKEN"


def connect(
    gateway: Annotated[str, typer.Option(help="the gateway's URL: http(s)://HOST[:PORT]")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="the channel's namespace")],
    channel: Annotated[str, typer.Option(help="the channel, as its relay steps name it")],
    forward: Annotated[str, typer.Option(help="local URL each webhook is POSTed to")],
    transport: Annotated[str, typer.Option(help="ws | sse | poll")] = "ws",
    token_file: Annotated[Path | None, typer.Option(
        help=f"file holding the channel's token [or env {TOKEN_ENV}]")] = None,
    token: Annotated[str | None, typer.Option(
        hidden=True, help="refused: the process list would show it")] = None,
    window: Annotated[int, typer.Option(help="messages in flight at most")] = 10,
    heartbeat: Annotated[float, typer.Option(
        help="seconds between heartbeats; 3 missed ones end a connection")] = 10.0,
    forward_timeout: Annotated[float, typer.Option(
        help="seconds the local URL has to answer")] = 10.0,
    log_json: Annotated[bool, typer.Option("--log-json/--log-text")] = False,
) -> None:
    """Pull a relay channel's webhooks from a gateway and forward them to a local URL."""
    from data_plane.logs import configure
    from data_plane.relay.connector import Connector, ConnectorSettings, Unauthorized

    if token is not None:
        stderr().print(f"[red]error:[/] never give the token on the command line (every user of "
                  f"this machine can read it in the process list): set {TOKEN_ENV} or use "
                  "--token-file")
        raise typer.Exit(2)
    secret = _read_token(token_file)
    if transport not in ("ws", "sse", "poll"):
        stderr().print("[red]error:[/] --transport is ws, sse or poll")
        raise typer.Exit(2)
    try:
        settings = ConnectorSettings(
            gateway=gateway, namespace=namespace, channel=channel, forward=forward,
            token=secret, transport=transport, window=window,  # type: ignore[arg-type]
            heartbeat_s=heartbeat, forward_timeout_s=forward_timeout)
    except ValueError as exc:
        stderr().print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    configure("info", log_json)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        connector = Connector(settings)
        try:
            await connector.run(stop)
        finally:
            await connector.aclose()

    try:
        event_loop.run(run())
    except Unauthorized:
        stderr().print(f"[red]error:[/] the gateway refused the token for {namespace}/{channel} "
                  "(401)")
        raise typer.Exit(1) from None


def _read_token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            secret = token_file.read_text().strip()
        except OSError as exc:
            stderr().print(f"[red]error:[/] cannot read --token-file: {exc.strerror}")
            raise typer.Exit(2) from None
    else:
        secret = os.environ.get(TOKEN_ENV, "").strip()
    if not secret:
        stderr().print(f"[red]error:[/] no token: set {TOKEN_ENV} or use --token-file")
        raise typer.Exit(2)
    return secret
