"""`whctl tokens create|list|revoke`: namespace tokens (needs the admin token)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from cli import render
from cli.client import TokenInfo
from cli.common import Output, TableOrJson, api_of, err, out, server_errors
from cli.rollout import parse_duration

app = typer.Typer(help="Namespace tokens (needs the admin token).", no_args_is_help=True,
                  rich_markup_mode=None)  # plain help, as whctl's


@app.command("create")
def tokens_create(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Option("--namespace", "-n", metavar="NS",
                                                      help="namespace it may use")],
    expires: Annotated[
        str | None, typer.Option(metavar="DURATION",
                                 help="stops working after this long: 30d, 12h, 90m; "
                                 "default: never")
    ] = None,
) -> None:
    """Create a namespace token and print it alone on stdout. Exit 0; 1 refused; 2 unreachable."""
    expires_in_s = None
    if expires is not None:
        try:
            expires_in_s = parse_duration(expires)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--expires'") from None
        if expires_in_s <= 0:
            raise typer.BadParameter("must be longer than 0s", param_hint="'--expires'")
    with server_errors():
        answer = api_of(ctx).create_token(namespace, expires_in_s)
    render.plain(out, answer["token"])
    until = f", expires {render.timestamp(answer['expires'])}" if answer.get("expires") else ""
    err.print(f"token {answer.get('id', '')} for namespace {answer.get('namespace', namespace)} "
              f"created{until}; it is not shown again", markup=False, highlight=False)


@app.command("list")
def tokens_list(
    ctx: typer.Context,
    output: Output = TableOrJson.table,
) -> None:
    """List namespace tokens: id, namespace, created, expires, last used (never the token).

    Exit 0; 1 refused; 2 unreachable.
    """
    with server_errors():
        items = api_of(ctx).list_tokens()
    if output is TableOrJson.json:
        render.plain(out, render.to_json(items))
    elif items:
        render.print_table(out, tokens_table(items))
    else:
        err.print("no namespace tokens", markup=False, highlight=False)


@app.command("revoke")
def tokens_revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID", help="the id `tokens list` shows")],
) -> None:
    """Revoke a token: it answers 401 from then on. Exit 0; 1 refused or unknown; 2 unreachable."""
    with server_errors():
        info = api_of(ctx).revoke_token(token_id)
    err.print(f"token {info.get('id', token_id)} of namespace {info.get('namespace', '?')} "
              "revoked", markup=False, highlight=False)


def tokens_table(items: Sequence[TokenInfo]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in ("ID", "NAMESPACE", "CREATED", "EXPIRES", "LAST USED"):
        table.add_column(header, overflow="fold")
    for t in items:
        table.add_row(*(Text(cell) for cell in (
            str(t.get("id", "")), str(t.get("namespace", "")),
            render.timestamp(t.get("created")) or "-",
            render.timestamp(t.get("expires")) or "never",
            render.timestamp(t.get("last_used")) or "never")))
    return table
