"""What every whctl command group shares: the consoles, the API client from the context, how a
failed call is reported, and a few option types."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

from cli import render
from cli.client import ApiClient, ApiError, ApplyAnswer, Unreachable

# Consoles resolve sys.stdout / sys.stderr when they write, so they follow redirections.
out = Console()
err = Console(stderr=True)


class TableOrJson(StrEnum):
    table = "table"
    json = "json"


Message = Annotated[str, typer.Option("-m", "--message", help="why; kept in the history")]
NamespaceOpt = Annotated[str | None, typer.Option("-n", "--namespace", help="namespace")]


def api_of(ctx: typer.Context) -> ApiClient:
    api = ctx.find_object(ApiClient)
    if api is None:  # only when a command is invoked without the root callback
        raise RuntimeError("no ApiClient in the context")
    return api


@contextmanager
def server_errors(exit_code: int = 1) -> Iterator[None]:
    """Print a failed call as `error: ...`; exit `exit_code` on a refusal, 2 when unreachable."""
    try:
        yield
    except Unreachable as exc:
        render.print_errors(err, str(exc))
        raise typer.Exit(2) from None
    except ApiError as exc:
        render.print_api_error(err, exc)
        raise typer.Exit(exit_code) from None



def print_answer(answer: ApplyAnswer, output: TableOrJson) -> None:
    if output is TableOrJson.json:
        render.plain(out, render.to_json(answer))
    else:
        render.plain(out, "\n".join(render.apply_lines(answer)))


