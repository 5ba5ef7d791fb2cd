"""What every whctl command group shares: the consoles, the API client from the context, how a
failed call is reported, and a few option types."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperOption

from cli import render
from cli.client import ApiClient, ApiError, ApplyAnswer, Unreachable
from providers.errors import Location

# Consoles resolve sys.stdout / sys.stderr when they write, so they follow redirections.
out = Console()
err = Console(stderr=True)


class TableOrJson(StrEnum):
    table = "table"
    json = "json"


Message = Annotated[str, typer.Option("-m", "--message", metavar="MESSAGE",
                                               help="why; kept in the history")]
Output = Annotated[TableOrJson, typer.Option("-o", "--output", metavar="table|json")]
NamespaceOpt = Annotated[str | None, typer.Option("-n", "--namespace", metavar="NS",
                                                             help="namespace")]


def api_of(ctx: typer.Context) -> ApiClient:
    api = ctx.find_object(ApiClient)
    if api is None:  # only when a command is invoked without the root callback
        raise RuntimeError("no ApiClient in the context")
    return api


@contextmanager
def server_errors(exit_code: int = 1,
                  locations: Mapping[str, Location] | None = None) -> Iterator[None]:
    """Print a failed call as `error: ...`; exit `exit_code` on a refusal, 2 when unreachable.

    `locations` maps the sources the control plane names in its errors to the documents'
    places in the files, so its errors read like `validate`'s, lines included.
    """
    try:
        yield
    except Unreachable as exc:
        render.print_errors(err, str(exc))
        raise typer.Exit(2) from None
    except ApiError as exc:
        render.print_api_error(err, exc, locations or {})
        raise typer.Exit(exit_code) from None



def optional_values(defaults: Mapping[str, str]) -> type[TyperCommand]:
    """A command class whose options in `defaults` may also be given bare: `--wait` means
    `--wait=30s`. Click has no option with an optional value; for a command without
    positional arguments a bare one is unambiguous: it is followed by nothing or by an option.
    """

    class OptionalValues(TyperCommand):
        def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
            takes_value = {opt for p in self.params if isinstance(p, TyperOption)
                           and not p.is_flag and not p.count for opt in p.opts}
            out: list[str] = []
            for i, arg in enumerate(args):
                if arg == "--":
                    out += args[i:]
                    break
                following = args[i + 1] if i + 1 < len(args) else None
                bare = following is None or following.startswith("-")
                is_value = i > 0 and args[i - 1] in takes_value and args[i - 1] not in defaults
                if arg in defaults and bare and not is_value:
                    arg = f"{arg}={defaults[arg]}"
                out.append(arg)
            return super().parse_args(ctx, out)

    return OptionalValues


def print_answer(answer: ApplyAnswer, output: TableOrJson) -> None:
    if output is TableOrJson.json:
        render.plain(out, render.to_json(answer))
    else:
        render.plain(out, "\n".join(render.apply_lines(answer)))


