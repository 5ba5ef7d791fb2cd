"""`whplane`: the command that starts servers (gateway, worker, control-plane, up), and the
relay connector (`connect`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cli import event_loop
from cli.connect import connect
from cli.console import stderr, stdout

# Plain click help, as whctl's: rich's panels cut option names at 80 columns.
app = typer.Typer(help="Start whplane servers.", no_args_is_help=True, rich_markup_mode=None)
app.command("connect")(connect)
CONFIG_HELP = "file:PATH | etcd://HOST:PORT[,...]/PREFIX | vault://MOUNT/PATH [env WH_CONFIG]"


def _given(**flags: Any) -> dict[str, Any]:
    """Only the flags the user gave: presence, not equality with a default, decides."""
    return {k: v for k, v in flags.items() if v is not None}


@contextlib.contextmanager
def _long_lived() -> Iterator[None]:
    """For the imports of a server: what they make lives as long as the process (modules,
    classes, validators), and they make a few hundred thousand objects, which the cyclic GC
    would rescan over and over meanwhile (4% of a gateway's import time) and at every full
    collection after. None is collected meanwhile; then they are set aside for good (a few
    hundred of them are garbage, measured: not worth a full pass to find)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _settings_error(exc: ValidationError) -> None:
    for e in exc.errors():
        field = ".".join(str(p) for p in e["loc"])
        stderr().print(f"[red]error:[/] {field}: {e['msg']} (flag --{field.replace('_', '-')} "
                  f"or WH_{field.upper()})")
    raise typer.Exit(2)


@app.command()
def gateway(
    config: Annotated[str | None, typer.Option(help=CONFIG_HELP)] = None,
    port: Annotated[int | None, typer.Option(help="[env WH_PORT, default 8080]")] = None,
    host: Annotated[str | None, typer.Option(help="[env WH_HOST, default 127.0.0.1]")] = None,
    workers: Annotated[int | None, typer.Option(help="processes [env WH_WORKERS]")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="[env WH_STATE_DIR]")] = None,
    redis_url: Annotated[str | None, typer.Option(help="[env WH_REDIS_URL]")] = None,
    gateway_id: Annotated[str | None, typer.Option(help="[env WH_GATEWAY_ID]")] = None,
    labels: Annotated[str | None, typer.Option(
        help="k=v,k2=v2: shown in the fleet, matched by canary selectors "
             "[env WH_GATEWAY_LABELS]")] = None,
    log_json: Annotated[bool | None, typer.Option("--log-json/--log-text",
                                                  help="[env WH_LOG_JSON]")] = None,
    max_concurrent_requests: Annotated[int | None, typer.Option(
        help="webhook requests handled at once, body reads not counted "
             "[env WH_MAX_CONCURRENT_REQUESTS, default 1000]")] = None,
    max_connections: Annotated[int | None, typer.Option(
        help="open connections per process [env WH_MAX_CONNECTIONS, default 4096]")] = None,
    max_connections_per_ip: Annotated[int | None, typer.Option(
        help="open connections per peer address, 0 for no cap "
             "[env WH_MAX_CONNECTIONS_PER_IP, default 1024]")] = None,
    max_header_bytes: Annotated[int | None, typer.Option(
        help="request line and headers [env WH_MAX_HEADER_BYTES, default 65536]")] = None,
    header_timeout_s: Annotated[float | None, typer.Option(
        help="seconds for a request's head [env WH_HEADER_TIMEOUT_S, default 10]")] = None,
    body_timeout_s: Annotated[float | None, typer.Option(
        help="seconds for a request's body [env WH_BODY_TIMEOUT_S, default 30]")] = None,
    keepalive_timeout_s: Annotated[float | None, typer.Option(
        help="seconds an idle connection is kept [env WH_KEEPALIVE_TIMEOUT_S, default 5]")] = None,
) -> None:
    """Serve webhooks from the shared config."""
    with _long_lived():
        import uvicorn

        from data_plane.app import create_app, server_options
        from data_plane.logs import configure
        from data_plane.settings import GatewaySettings

    flags = _given(config=config, port=port, host=host, workers=workers, state_dir=state_dir,
                   redis_url=redis_url, gateway_id=gateway_id, labels=labels,
                   log_json=log_json, max_concurrent_requests=max_concurrent_requests,
                   max_connections=max_connections,
                   max_connections_per_ip=max_connections_per_ip,
                   max_header_bytes=max_header_bytes, header_timeout_s=header_timeout_s,
                   body_timeout_s=body_timeout_s, keepalive_timeout_s=keepalive_timeout_s)
    try:
        settings = GatewaySettings(**flags)
    except ValidationError as exc:
        _settings_error(exc)
        return
    configure(settings.log_level, settings.log_json)
    if settings.workers > 1:
        # Each process builds its own gateway from the environment: hand the flags on there.
        for key, value in flags.items():
            name = "GATEWAY_LABELS" if key == "labels" else key.upper()
            os.environ[f"WH_{name}"] = str(value)
        uvicorn.run("data_plane.app:app_from_env", factory=True, workers=settings.workers,
                    **server_options(settings))
        return
    try:
        application = create_app(settings)
    except ValueError as exc:
        stderr().print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    uvicorn.run(application, lifespan="on", **server_options(settings))


@app.command()
def worker(
    config: Annotated[str | None, typer.Option(help="config URL [env WH_CONFIG]")] = None,
    redis_url: Annotated[str | None, typer.Option(help="[env WH_REDIS_URL]")] = None,
    gateway_id: Annotated[str | None, typer.Option(help="[env WH_GATEWAY_ID]")] = None,
    log_json: Annotated[bool | None, typer.Option("--log-json/--log-text",
                                                  help="[env WH_LOG_JSON]")] = None,
) -> None:
    """Deliver queued (async) webhooks without serving HTTP."""
    with _long_lived():
        from data_plane.gateway import Gateway
        from data_plane.logs import configure
        from data_plane.relay.wiring import relay_store
        from data_plane.settings import GatewaySettings

    try:
        settings = GatewaySettings(**_given(config=config, redis_url=redis_url,
                                            gateway_id=gateway_id, log_json=log_json))
    except ValidationError as exc:
        _settings_error(exc)
        return
    if not settings.redis_url:
        stderr().print("[red]error:[/] the worker needs Redis: --redis-url or WH_REDIS_URL")
        raise typer.Exit(2)
    configure(settings.log_level, settings.log_json)

    async def run() -> None:
        gw = Gateway(settings, dict(os.environ))
        relay_store(gw)  # async chains with a relay step append to its channels
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # finish in-flight work, like the gateway
            loop.add_signal_handler(sig, stop.set)
        await gw.start()
        try:
            await stop.wait()
        finally:
            await gw.stop()

    try:
        event_loop.run(run())
    except KeyboardInterrupt:
        pass


@app.command("control-plane")
def control_plane(
    store: Annotated[str | None, typer.Option(
        help="etcd://HOST:PORT[,...]/PREFIX | file:DIR [env WH_STORE]")] = None,
    port: Annotated[int | None, typer.Option(help="[env WH_PORT, default 8070]")] = None,
    host: Annotated[str | None, typer.Option(help="[env WH_HOST, default 127.0.0.1]")] = None,
    admin_token_file: Annotated[Path | None, typer.Option(
        help="file holding the admin token [or env WH_ADMIN_TOKEN]")] = None,
    allow_plaintext_secrets: Annotated[bool | None, typer.Option(
        "--allow-plaintext-secrets", help="accept secrets that are not references")] = None,
    max_request_bytes: Annotated[int | None, typer.Option(
        help="largest request body accepted [env WH_MAX_REQUEST_BYTES, default 16 MiB]")] = None,
    log_json: Annotated[bool | None, typer.Option("--log-json/--log-text")] = None,
) -> None:
    """Serve the control-plane API (the only writer of the config store)."""
    import uvicorn

    from control_plane.api import create_api
    from control_plane.errors import StoreError
    from control_plane.settings import ControlPlaneSettings, open_store
    from data_plane.logs import configure

    try:
        settings = ControlPlaneSettings(**_given(
            store=store, port=port, host=host, admin_token_file=admin_token_file,
            allow_plaintext_secrets=allow_plaintext_secrets, log_json=log_json,
            max_request_bytes=max_request_bytes))
        admin = settings.admin()
        backend = open_store(settings.store, dict(os.environ))
    except ValidationError as exc:
        _settings_error(exc)
        return
    except (ValueError, OSError, StoreError) as exc:
        stderr().print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if admin is None:
        stderr().print("[yellow]warning:[/] no admin token (WH_ADMIN_TOKEN or --admin-token-file): "
                  "only namespace tokens will work, and none can be created")
    configure(settings.log_level, settings.log_json)
    uvicorn.run(create_api(backend, admin, settings.allow_plaintext_secrets,
                           max_request_bytes=settings.max_request_bytes),
                host=settings.host, port=settings.port, log_config=None, access_log=False)


@app.command()
def up(
    etcd: Annotated[bool, typer.Option("--etcd", help="store in a real etcd (wheel)")] = False,
    vault: Annotated[bool, typer.Option("--vault", help="secrets from OpenBao (wheel)")] = False,
    redis: Annotated[bool, typer.Option("--redis", help="Redis for async delivery")] = False,
    examples: Annotated[Path, typer.Option(help="config to apply")] = Path("examples"),
    gateways: Annotated[int, typer.Option(min=1, max=9, help="gateway processes")] = 2,
    port: Annotated[int, typer.Option(help="control plane port; gateways from port+10")] = 8070,
    data_dir: Annotated[Path | None, typer.Option(
        help="keep state here (default: a temporary directory, removed on exit)")] = None,
) -> None:
    """Start the local stack: a control plane and gateways, with the examples applied."""
    from cli import up as local_stack

    raise typer.Exit(local_stack.run(stdout(), examples, data_dir, gateways, etcd, vault,
                                     redis, port))


dlq = typer.Typer(help="List and replay dead-lettered deliveries (needs WH_REDIS_URL).",
                  rich_markup_mode=None,
                  no_args_is_help=True)
app.add_typer(dlq, name="dlq")


CHANNEL_HELP = "a relay channel's dead letters (with -n): messages its connectors failed"


def _dead_letters(redis_url: str | None, namespace: str | None = None,
                  channel: str | None = None) -> Any:
    from data_plane import redis_keys
    from data_plane.dlq import DeadLetters
    from providers.model import NAME_RE

    url = redis_url or os.environ.get("WH_REDIS_URL")
    if not url:
        stderr().print("[red]error:[/] needs Redis: --redis-url or WH_REDIS_URL")
        raise typer.Exit(2)
    from data_plane.redis_connect import connect

    try:
        redis = connect(url)  # redis://, rediss://, Sentinel or Cluster, as the gateway reads it
    except ValueError as exc:
        stderr().print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if channel is None:
        return DeadLetters(redis)
    if namespace is None or not NAME_RE.match(namespace) or not NAME_RE.match(channel):
        stderr().print("[red]error:[/] --channel needs -n NAMESPACE, both valid names")
        raise typer.Exit(2)
    # Replayed messages go back to the channel's buffer, to its connectors.
    return DeadLetters(redis, redis_keys.relay_stream(namespace, channel))


@dlq.command("list")
def dlq_list(
    namespace: Annotated[str | None, typer.Option("-n", "--namespace")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
    redis_url: Annotated[str | None, typer.Option(help="[env WH_REDIS_URL]")] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="table | json")] = "table",
    channel: Annotated[str | None, typer.Option(help=CHANNEL_HELP)] = None,
) -> None:
    """Dead-lettered deliveries, oldest first."""
    import json

    from rich.table import Table

    letters = _dead_letters(redis_url, namespace, channel)
    entries = asyncio.run(letters.list(namespace=namespace, limit=limit))
    if output == "json":
        stdout().print_json(json.dumps([{
            "id": e.id, "namespace": e.delivery.namespace, "webhook": e.delivery.webhook,
            "delivery": e.delivery.id, "reason": e.reason, "attempts": e.attempts,
            "last_error": e.last_error, "failed_at": e.failed_at} for e in entries]))
        return
    table = Table("ID", "NAMESPACE", "WEBHOOK", "ATTEMPTS", "REASON", "LAST ERROR")
    for e in entries:
        table.add_row(e.id, e.delivery.namespace, e.delivery.webhook, str(e.attempts),
                      e.reason, e.last_error)
    # Piped output keeps whole ids (they are copied into `dlq replay`).
    stdout(width=None if sys.stdout.isatty() else 250).print(table)


@dlq.command("replay")
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="dead letter ids")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every dead letter")] = False,
    namespace: Annotated[str | None, typer.Option("-n", "--namespace")] = None,
    redis_url: Annotated[str | None, typer.Option(help="[env WH_REDIS_URL]")] = None,
    channel: Annotated[str | None, typer.Option(help=CHANNEL_HELP)] = None,
) -> None:
    """Put dead-lettered deliveries back on the queue (or the relay channel), attempts reset."""
    letters = _dead_letters(redis_url, namespace, channel)
    if all_:
        n = asyncio.run(letters.replay_all(namespace=namespace))
        stdout().print(f"replayed {n} deliveries")
        return
    if not ids:
        stderr().print("[red]error:[/] give dead letter ids, or --all")
        raise typer.Exit(2)
    for entry_id in ids:
        try:
            asyncio.run(letters.replay(entry_id))
        except KeyError:
            stderr().print(f"[red]error:[/] no dead letter {entry_id}")
            raise typer.Exit(1) from None
        stdout().print(f"replayed {entry_id}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
