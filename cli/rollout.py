"""`whctl rollout status|history|undo|promote|abort`: follow, list and undo config rollouts,
and end a canary."""

from __future__ import annotations

import math
import re
import time
from typing import Annotated

import typer

from cli import render
from cli.client import ApiClient, CanaryStatus, RolloutStatus
from cli.common import (
    Message,
    NamespaceOpt,
    Output,
    TableOrJson,
    api_of,
    err,
    out,
    print_answer,
    server_errors,
)

app = typer.Typer(help="Follow, list and undo config rollouts; promote or abort a canary.",
                  no_args_is_help=True, rich_markup_mode=None)  # plain help, as whctl's
POLL_INTERVAL_S = 0.5


@app.command("status")
def rollout_status(
    ctx: typer.Context,
    revision: Annotated[
        int | None, typer.Option(metavar="N", help="revision to wait for; default: the latest")
    ] = None,
    timeout: Annotated[
        str, typer.Option(metavar="DURATION",
                          help="how long to wait: 30s, 2m, 500ms, 1m30s or seconds")
    ] = "30s",
) -> None:
    """Wait until every live gateway serves the revision whole; progress goes to stderr.

    Prints the gateways' table (and a running canary) at the end. While a canary runs, its
    revision is complete once every canary gateway serves it.
    Exit 0 complete; 1 a gateway refused a resource of it (each named, at once), timed out
    (naming the lagging gateways) or refused; 2 unreachable.
    """
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--timeout'") from None
    follow(api_of(ctx), revision, seconds)


def follow(api: ApiClient, revision: int | None, seconds: float, *, table: bool = True) -> None:
    """Wait until `revision` is served whole, or a gateway refuses part of it (exit 1 at once,
    naming gateway, resource and reason), or its canary is aborted (exit 1, saying by whom and
    why), or `seconds` pass (exit 1)."""
    deadline = time.monotonic() + seconds
    aborted: str | None = None
    with server_errors(), err.status("asking the control plane") as spinner:
        status = api.rollout_status(revision)
        canary_running = _canary_target(status) is not None
        while True:
            if canary_running and _canary_target(status) is None:
                # Ended: after an abort every gateway is past the canary revision, yet none
                # serves what it wrote. After a promote, wait as for any revision.
                aborted = _abort_of(api, status["revision"])
                canary_running = False
            if aborted or refusals(status) or served(status):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            spinner.update(f"{_progress(status)}; {remaining:.0f}s left")
            time.sleep(min(POLL_INTERVAL_S, remaining))
            # Pinned to the first answer's revision: a later apply must not move the target.
            status = api.rollout_status(status["revision"])
    canary = status.get("canary")
    if table:
        render.print_table(out, render.rollout_table(status))
        if canary:
            render.plain(out, "\n".join(render.canary_lines(canary)))
    if aborted:
        render.print_errors(err, aborted)
        raise typer.Exit(1)
    refused = refusals(status)
    if refused:
        render.print_errors(
            err, f"revision {status['revision']} is not served whole: {len(refused)} "
            "resource(s) refused (gateway: resource: reason)", refused)
        raise typer.Exit(1)
    if served(status):
        err.print(_progress(status), markup=False, highlight=False, soft_wrap=True)
        return
    render.print_errors(err, f"timed out after {seconds:g}s: {_progress(status)}",
                        _lagging(status))
    raise typer.Exit(1)


def _abort_of(api: ApiClient, revision: int) -> str | None:
    """How the canary of `revision` was aborted, from the history; None if it was not."""
    for item in api.history(limit=20):
        rollout = item.get("rollout") or {}
        canary = rollout.get("canary") or {}
        if rollout.get("action") == "abort" and canary.get("revision") == revision:
            why = f": {rollout['reason']}" if rollout.get("reason") else ""
            return (f"canary revision {revision} was aborted by {item.get('author', '?')} in "
                    f"revision {item.get('revision')}{why}")
    return None


def _canary_target(status: RolloutStatus) -> CanaryStatus | None:
    """The running canary when the awaited revision is its revision."""
    canary = status.get("canary")
    return canary if canary and canary.get("revision") == status["revision"] else None


def served(status: RolloutStatus) -> bool:
    canary = _canary_target(status)
    if canary is not None:
        # The other gateways keep the promoted revision on purpose until the canary ends.
        gateways = canary.get("gateways") or []
        return bool(gateways) and all(g.get("serving") for g in gateways)
    return bool(status.get("complete"))


def refusals(status: RolloutStatus) -> list[str]:
    """`gateway: resource: reason` for each refusal by a gateway at the awaited revision or
    later; a gateway still behind has not answered for this revision yet."""
    target = status["revision"]
    at = {str(g.get("id")): g.get("revision") for g in status.get("gateways", [])}
    found: dict[tuple[str, str], str] = {}
    for gw in status.get("gateways", []):
        if _at_least(gw.get("revision"), target):
            for r in gw.get("refused") or []:
                found[str(gw.get("id")), str(r.get("resource", "?"))] = str(r.get("reason", ""))
    for r in status.get("refusals") or []:
        gid = str(r.get("gateway"))
        if _at_least(at.get(gid), target):
            found.setdefault((gid, str(r.get("resource", "?"))), str(r.get("reason", "")))
    return [f"{gid}: {resource}: {reason}" for (gid, resource), reason in sorted(found.items())]


def _at_least(revision: object, target: int) -> bool:
    return isinstance(revision, int) and not isinstance(revision, bool) and revision >= target


def _lagging(status: RolloutStatus) -> list[str]:
    canary = _canary_target(status)
    if canary is not None:
        gateways = canary.get("gateways") or []
        if not gateways:
            return [f"no live gateway matches the canary selector {canary.get('selector_text')}"]
        return [f"canary gateway {g.get('id')} is at revision "
                f"{'-' if g.get('revision') is None else g.get('revision')}"
                for g in gateways if not g.get("serving")]
    return [
        f"{gw['id']} is at revision {gw['revision'] if gw['revision'] is not None else '-'}"
        for gw in status["gateways"] if not gw["applied"]
    ]


def _progress(status: RolloutStatus) -> str:
    canary = _canary_target(status)
    if canary is not None:
        gateways = canary.get("gateways") or []
        serving = sum(1 for g in gateways if g.get("serving"))
        others = max(0, status.get("live", 0) - len(gateways))
        return (f"canary revision {status['revision']} ({canary.get('selector_text')}): "
                f"served by {serving}/{len(gateways)} canary gateway(s); {others} other "
                f"gateway(s) stay at revision {canary.get('base')} until it is promoted")
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
    limit: Annotated[int, typer.Option(min=1, metavar="N",
                                       help="at most this many, newest first")] = 50,
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
    namespace: Annotated[str, typer.Option("-n", "--namespace", metavar="NS",
                                                      help="namespace to roll back")],
    to_revision: Annotated[
        int | None, typer.Option(metavar="N", help="restore the namespace as of this revision; "
                                 "default: undo its latest change")
    ] = None,
    message: Message = "",
) -> None:
    """Roll a namespace back (a new revision). Exit 0; 1 refused; 2 unreachable."""
    with server_errors():
        answer = api_of(ctx).rollback(namespace, to_revision=to_revision, message=message)
    print_answer(answer, TableOrJson.table)


@app.command("promote")
def rollout_promote(
    ctx: typer.Context,
    message: Message = "",
    output: Output = TableOrJson.table,
) -> None:
    """End the running canary: every gateway serves its revision (a new revision, no resource
    changes; admin token only). Exit 0; 1 no canary runs, or refused; 2 unreachable."""
    with server_errors():
        answer = api_of(ctx).promote(message=message)
    print_answer(answer, output)
    if output is TableOrJson.table:
        err.print("canary promoted: every gateway now serves its changes", markup=False,
                  highlight=False)


@app.command("abort")
def rollout_abort(
    ctx: typer.Context,
    message: Message = "",
    output: Output = TableOrJson.table,
) -> None:
    """End the running canary by reverting its changes: canary gateways return to the promoted
    revision, the others never served it (admin token only).
    Exit 0; 1 no canary runs, or refused; 2 unreachable."""
    with server_errors():
        answer = api_of(ctx).abort(message=message)
    print_answer(answer, output)
    if output is TableOrJson.table:
        err.print("canary aborted: its changes are reverted", markup=False, highlight=False)
