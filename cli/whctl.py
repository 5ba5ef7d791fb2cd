"""`whctl`: the operators' client of the control plane (see docs/design.md section 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from providers.errors import DocumentErrors
from providers.loader import load_paths

app = typer.Typer(help="Manage whplane webhook config.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """whctl talks to the control plane; `validate` works offline."""


@app.command()
def validate(
    files: Annotated[list[Path], typer.Option("-f", "--file", help="file or directory")],
) -> None:
    """Check resource files offline; exit 1 on any error."""
    try:
        resources = load_paths(files)
    except DocumentErrors as exc:
        for e in exc.errors:
            err.print(f"[red]error:[/] {e}")
        err.print(f"{len(exc.errors)} error(s)")
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    out.print(f"{len(resources)} resource(s) valid")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
