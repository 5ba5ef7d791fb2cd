"""`whctl rollout status|history|undo`: follow, list and undo config rollouts."""

from __future__ import annotations

import math
import re
import time
from typing import Annotated

import typer

from cli import render
from cli.client import RolloutStatus
from cli.common import (
    Message,
    NamespaceOpt,
    TableOrJson,
    api_of,
    err,
    out,
    print_answer,
    server_errors,
)

app = typer.Typer(help="Follow, list and undo config rollouts.", no_args_is_help=True)
POLL_INTERVAL_S = 0.5


@app.command("status")
def rollout_status(
    ctx: typer.Context,
    revision: Annotated[
        int | None, typer.Option(help="revision to wait for; default: the latest")
    ] = None,
    timeout: Annotated[
        str, typer.Option(help="how long to wait: 30s, 2m, 500ms, 1m30s or seconds")
    ] = "30s",
) -> None:
    """Wait until every live gateway applied the revision; progress goes to stderr.

    Prints the gateways' table at the end.
    Exit 0 complete; 1 timed out (naming the lagging gateways) or refused; 2 unreachable.
    """
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--timeout'") from None
    api = api_of(ctx)
    deadline = time.monotonic() + seconds
    with server_errors(), err.status("asking the control plane") as spinner:
        status = api.rollout_status(revision)
        while not status["complete"]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            spinner.update(f"{_progress(status)}; {remaining:.0f}s left")
            time.sleep(min(POLL_INTERVAL_S, remaining))
            # Pinned to the first answer's revision: a later apply must not move the target.
            status = api.rollout_status(status["revision"])
    render.print_table(out, render.rollout_table(status))
    if status["complete"]:
        err.print(_progress(status), markup=False, highlight=False)
        return
    lagging = [
        f"{gw['id']} is at revision {gw['revision'] if gw['revision'] is not None else '-'}"
        for gw in status["gateways"] if not gw["applied"]
    ]
    render.print_errors(err, f"timed out after {seconds:g}s: {_progress(status)}", lagging)
    raise typer.Exit(1)


def _progress(status: RolloutStatus) -> str:
    return (f"revision {status['revision']}: applied by {status['applied']}/{status['live']} "
            "live gateway(s)")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in `30s`, `2m`, `500ms`, `1h`, `30d`, `1m30s` or plain (fractional) seconds."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds, pos = 0.0, 0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if pos == 0 or pos != len(value):
            raise ValueError(f"{text!r} is not a duration such as 30s, 2m or 500ms") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r} is not a duration such as 30s, 2m or 500ms")
    return seconds


@app.command("history")
def rollout_history(
    ctx: typer.Context,
    namespace: NamespaceOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 50,
) -> None:
    """List past revisions with their changes. Exit 0; 1 refused; 2 unreachable."""
    with server_errors():
        items = api_of(ctx).history(namespace, limit=limit)
    if items:
        render.print_table(out, render.history_table(items))
    else:
        err.print("no history", markup=False, highlight=False)


@app.command("undo")
def rollout_undo(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Option("-n", "--namespace", help="namespace to roll back")],
    to_revision: Annotated[
        int | None, typer.Option(help="restore the namespace as of this revision; "
                                 "default: undo its latest change")
    ] = None,
    message: Message = "",
) -> None:
    """Roll a namespace back (a new revision). Exit 0; 1 refused; 2 unreachable."""
    with server_errors():
        answer = api_of(ctx).rollback(namespace, to_revision=to_revision, message=message)
    print_answer(answer, TableOrJson.table)
