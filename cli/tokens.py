"""`whctl tokens create`: namespace tokens (needs the admin token)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import render
from cli.common import api_of, err, out, server_errors

app = typer.Typer(help="Namespace tokens (needs the admin token).", no_args_is_help=True)


@app.command("create")
def tokens_create(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="namespace it may use")],
) -> None:
    """Create a namespace token and print it alone on stdout. Exit 0; 1 refused; 2 unreachable."""
    with server_errors():
        answer = api_of(ctx).create_token(namespace)
    render.plain(out, answer["token"])
    err.print(f"token for namespace {answer.get('namespace', namespace)} created; it is not "
              "shown again", markup=False, highlight=False)
