"""`whctl`: the operators' client of the control plane (see docs/design.md section 5).

Commands, flags, environment variables, exit codes and outputs are a public contract. Exit codes:
0 success; 1 invalid files, the control plane refused the request, or `rollout status` timed out;
2 the control plane could not be reached, or a usage error. `diff` differs on purpose: 0 no
difference, 1 differences, 2 any error.

The API client travels in `ctx.obj`. A caller of `app` (tests, end-to-end tests) may set
`obj` to an `ApiClient`, used as it is, or to an `httpx.Client`, which the client built from
`--server`, the token and `--request-timeout` then sends through:

    CliRunner().invoke(app, ["gateways"], obj=httpx.Client(transport=..., base_url=...))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import httpx
import typer

from cli import render, rollout, tokens
from cli.client import (
    DEFAULT_SERVER,
    DEFAULT_TIMEOUT,
    ApiClient,
    Doc,
)
from cli.common import (
    Message,
    NamespaceOpt,
    Output,
    TableOrJson,
    api_of,
    err,
    optional_values,
    out,
    print_answer,
    server_errors,
)
from cli.rollout import follow, parse_duration
from providers.errors import DocumentError, DocumentErrors, Location
from providers.rollout import parse_selector

if TYPE_CHECKING:
    from providers.resources import AnyResource

# Plain click help: rich's panels cut option names at 80 columns and print types as
# `<list[Path]>`; click's lines keep every name whole and say PATH, INTEGER, [table|json].
app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
app.add_typer(rollout.app, name="rollout")
app.add_typer(tokens.app, name="tokens")



class Kind(StrEnum):
    """A kind as `get` and `delete` take it: singular or plural, as kubectl does."""

    webhook = "webhook"
    webhooks = "webhooks"
    connection = "connection"
    connections = "connections"
    namespace = "namespace"
    namespaces = "namespaces"


KIND_METAVAR = "webhook(s)|connection(s)|namespace(s)"


class Format(StrEnum):
    table = "table"
    yaml = "yaml"
    json = "json"


FormatOpt = Annotated[Format, typer.Option("-o", "--output", metavar="table|yaml|json")]


API_KIND = {"webhook": "Webhook", "connection": "Connection", "namespace": "Namespace",
            "webhooks": "Webhook", "connections": "Connection", "namespaces": "Namespace"}

Files = Annotated[
    list[Path],
    typer.Option("-f", "--file", metavar="FILE_OR_DIR",
                 help="YAML/JSON file or directory of them; repeat for more"),
]
@app.callback()
def _root(
    ctx: typer.Context,
    server: Annotated[
        str, typer.Option(envvar="WHCTL_SERVER", metavar="URL", help="control-plane URL")
    ] = DEFAULT_SERVER,
    token_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH",
                     help="file holding the bearer token; without it, WHCTL_TOKEN is used"),
    ] = None,
    request_timeout: Annotated[
        float, typer.Option(min=0.001, metavar="SECONDS",
                            help="seconds to wait for each HTTP answer")
    ] = DEFAULT_TIMEOUT,
) -> None:
    """Manage whplane webhook config through the control plane; `validate` works offline.

    The token comes from WHCTL_TOKEN or --token-file, never from the command line.

    Exit codes: 0 success; 1 invalid files, refused by the control plane, rollout timeout;
    2 control plane unreachable or usage error.
    diff: 0 no difference, 1 differences, 2 any error.
    """
    if isinstance(ctx.obj, ApiClient):
        return  # injected by the caller, used as it is
    token = _read_token(token_file) if token_file is not None else os.environ.get("WHCTL_TOKEN")
    http = ctx.obj if isinstance(ctx.obj, httpx.Client) else None
    api = ApiClient(server, token or None, timeout=request_timeout, http=http)
    ctx.obj = api
    ctx.call_on_close(api.close)


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (
            exc.strerror or str(exc))
        render.print_errors(err, f"cannot read the token file {path}: {reason}")
        raise typer.Exit(2) from None
    if not token:
        render.print_errors(err, f"the token file {path} is empty")
        raise typer.Exit(2)
    return token


# --- files -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded:
    """Validated resources and, in the same order, the documents exactly as parsed."""

    locations: list[Location]
    docs: list[Doc]
    resources: list[AnyResource]
    empty: list[str]  # files that hold no document at all
    errors: list[DocumentError]  # when not empty, the rest is what could be read

    @property
    def sources(self) -> list[str]:
        return [str(location) for location in self.locations]

    def by_source(self) -> dict[str, Location]:
        """What the control plane's errors name (`file.yaml[0]`, or `request[i]` for a diff
        sent without labels) -> where the document is, lines included."""
        labels = {str(location): location for location in self.locations}
        labels.update({f"request[{i}]": loc for i, loc in enumerate(self.locations)})
        return labels


def load_files(paths: Sequence[Path], plaintext_remedy: str | None = None) -> Loaded:
    """Read, parse and validate every file once; `errors` names every problem.

    The parsed documents are kept: they are sent, not the models, so what is validated is what
    is sent. A file that cannot be read does not stop the others from being checked. With
    `plaintext_remedy`, literal secrets are errors too, in every document that validated.
    """
    # Imported here: the resource models take most of whctl's start-up, and only the commands
    # that read files need them (`gateways`, `rollout status`, `get` ... start without).
    from providers.loader import parse_text, plaintext_secrets, read_texts, validate_documents

    texts, errors = read_texts(paths)
    parsed: list[tuple[Location, object]] = []
    empty: list[str] = []
    for source, text in texts:
        try:
            documents = parse_text(text, source)
        except DocumentErrors as exc:
            errors += exc.errors
            continue
        if not documents:
            empty.append(source)
        parsed += documents
    try:
        validated = validate_documents(parsed)
    except DocumentErrors as exc:
        errors += exc.errors
        validated = cast("list[tuple[Location, AnyResource]]", list(exc.valid))
    if plaintext_remedy is not None:
        written = {id(loc): doc for loc, doc in parsed}
        errors += plaintext_secrets(validated, plaintext_remedy,
                                    [written.get(id(loc)) for loc, _ in validated])
    return Loaded([loc for loc, _ in validated], [cast(Doc, d) for _, d in parsed],
                  [r for _, r in validated], empty, errors)


def _load(paths: Sequence[Path], *, exit_code: int, plaintext_remedy: str | None = None
          ) -> Loaded:
    from providers.loader import private_destinations

    loaded = load_files(paths, plaintext_remedy)
    for source in loaded.empty:
        render.print_warning(err, f"{source}: no resources in this file (empty, or only "
                             "comments): nothing of it is checked or applied")
    for warning in private_destinations(zip(loaded.locations, loaded.resources, strict=True)):
        render.print_warning(err, warning.readable())
    if loaded.errors:
        _print_document_errors(loaded.errors)
        raise typer.Exit(exit_code)
    return loaded


def _print_document_errors(errors: Sequence[DocumentError]) -> None:
    n = len(errors)
    # In file order, line by line: the order a person fixes them in.
    ordered = sorted(errors, key=lambda e: (e.location.source, e.location.index or 0,
                                            e.line or 0))
    render.print_errors(err, f"{n} error{'s' if n != 1 else ''} in the documents",
                        [e.readable() for e in ordered])


def _require_resources(loaded: Loaded, paths: Sequence[Path], exit_code: int) -> None:
    # An empty apply --prune would delete everything: refuse rather than guess. validate
    # refuses the same files, so a file it passes is one apply takes.
    if not loaded.docs:
        render.print_errors(err, f"no resources in {', '.join(map(str, paths))}")
        raise typer.Exit(exit_code)


# --- commands ----------------------------------------------------------------------------------


@app.command()
def validate(
    files: Files,
    allow_plaintext_secrets: Annotated[
        bool, typer.Option(help="accept literal values in secret-bearing fields")
    ] = False,
) -> None:
    """Check resource files offline. Exit 0 valid; 1 on any error."""
    loaded = _load(files, exit_code=1, plaintext_remedy=None if allow_plaintext_secrets
                   else ", or pass --allow-plaintext-secrets")
    _require_resources(loaded, files, 1)
    out.print(f"{len(loaded.resources)} resource(s) valid", markup=False, highlight=False)


DEFAULT_WAIT = "30s"


@app.command(cls=optional_values({"--wait": DEFAULT_WAIT}))
def apply(
    ctx: typer.Context,
    files: Files,
    dry_run: Annotated[bool, typer.Option(help="validate and report, write nothing")] = False,
    prune: Annotated[
        bool, typer.Option(help="delete resources of the files' namespaces that they omit")
    ] = False,
    message: Message = "",
    expected_revision: Annotated[
        int | None, typer.Option(metavar="N",
                                 help="refuse (409) unless the config is at this revision")
    ] = None,
    output: Output = TableOrJson.table,
    wait: Annotated[
        str | None, typer.Option(
            metavar="[=DURATION]",
            help=f"then wait until every live gateway serves the revision whole (a canary: "
            f"every canary gateway); bare --wait waits {DEFAULT_WAIT}")
    ] = None,
    canary: Annotated[
        str | None, typer.Option(
            metavar="k=v[,k=v]",
            help="a canary revision: only gateways whose labels match serve it until `whctl "
            "rollout promote` (the others keep the promoted revision); admin token only")
    ] = None,
    promote_after: Annotated[
        str | None, typer.Option(
            metavar="DURATION", help="with --canary: promote by itself after this long healthy")
    ] = None,
    max_error_rate: Annotated[
        float | None, typer.Option(
            min=0.0, max=1.0, metavar="FRACTION",
            help="with --canary: abort by itself when the canary gateways' error rate (5xx "
            "and verification failures) goes over this fraction, e.g. 0.05")
    ] = None,
) -> None:
    """Create, update (and with --prune delete) resources in one revision.

    Exit 0 applied (with --wait: and served whole by every live gateway); 1 invalid files,
    refused (422 invalid, 409 conflict or a canary running, 403, ...), or with --wait a
    gateway refused a resource (each named) or the wait timed out; 2 control plane
    unreachable or usage error.
    """
    selector, promote_after_s, wait_s = _rollout_options(canary, promote_after,
                                                         max_error_rate, wait)
    loaded = _load(files, exit_code=1)
    _require_resources(loaded, files, 1)
    api = api_of(ctx)
    with server_errors(exit_code=1, locations=loaded.by_source()):
        answer = api.apply(
            loaded.docs, sources=loaded.sources, dry_run=dry_run, prune=prune,
            expected_revision=expected_revision, message=message, canary=selector,
            promote_after_s=promote_after_s, max_error_rate=max_error_rate,
        )
    print_answer(answer, output)
    if wait_s is not None and not dry_run:
        follow(api, answer["revision"], wait_s, table=output is TableOrJson.table)


def _rollout_options(canary: str | None, promote_after: str | None,
                     max_error_rate: float | None, wait: str | None
                     ) -> tuple[str | None, float | None, float | None]:
    """(selector, promote after seconds, wait seconds), or a usage error (exit 2)."""
    if canary is None:
        for flag, value in (("--promote-after", promote_after),
                            ("--max-error-rate", max_error_rate)):
            if value is not None:
                raise typer.BadParameter("only with --canary", param_hint=f"'{flag}'")
    else:
        try:
            parse_selector(canary)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--canary'") from None
    seconds: list[float | None] = []
    for flag, text in (("--promote-after", promote_after), ("--wait", wait)):
        try:
            seconds.append(None if text is None else parse_duration(text.lstrip("=")))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=f"'{flag}'") from None
    if promote_after is not None and not seconds[0]:
        raise typer.BadParameter("must be more than 0s", param_hint="'--promote-after'")
    return canary, seconds[0], seconds[1]


@app.command()
def diff(
    ctx: typer.Context,
    files: Files,
    prune: Annotated[bool, typer.Option(help="also show what apply --prune would delete")] = False,
) -> None:
    """Show what apply would change, as a unified diff of the YAML.

    Exit 0 no difference; 1 differences; 2 any error (invalid files, refusal, unreachable).
    """
    loaded = _load(files, exit_code=2)
    _require_resources(loaded, files, 2)
    with server_errors(exit_code=2, locations=loaded.by_source()):
        answer = api_of(ctx).diff(loaded.docs, prune=prune)
    changed = [c for c in answer.get("changes", []) if c.get("op") != "unchanged"]
    for change in changed:
        lines = render.unified_diff(change, answer.get("revision", 0))
        out.print(render.diff_text(lines), soft_wrap=True, end="")
    summary = (f"{len(changed)} resource(s) differ" if changed else "no differences") + (
        f" from revision {answer.get('revision')}")
    err.print(summary, markup=False, highlight=False)
    raise typer.Exit(1 if changed else 0)


@app.command()
def get(
    ctx: typer.Context,
    kinds: Annotated[Kind, typer.Argument(metavar=KIND_METAVAR)],
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="only this one")] = None,
    namespace: NamespaceOpt = None,
    all_namespaces: Annotated[
        bool, typer.Option("-A", "--all-namespaces", help="every namespace the token may read "
                           "(the default without -n)")
    ] = False,
    output: FormatOpt = Format.table,
) -> None:
    """List resources; -o yaml prints documents that apply -f takes back unchanged.

    -o json prints a JSON list.
    Exit 0 found; 1 not found or refused; 2 control plane unreachable.
    """
    kind = API_KIND[kinds.value]
    if namespace and all_namespaces:
        raise typer.BadParameter("give -n NS or -A, not both", param_hint="'-n' / '-A'")
    if kind == "Namespace" and namespace:
        raise typer.BadParameter("namespaces are global: drop -n", param_hint="'-n'")
    api = api_of(ctx)
    with server_errors():
        if name is not None and (namespace or kind == "Namespace"):
            docs = [api.get_resource(kind, namespace, name)]
        else:
            docs = api.list_resources(kind, namespace)["items"]
            if name is not None:
                docs = [d for d in docs if (d.get("metadata") or {}).get("name") == name]
    if name is not None and not docs:
        render.print_errors(err, f"{kind.lower()} {name} not found in any namespace this token "
                            "may read")
        raise typer.Exit(1)
    if output is Format.json:
        render.plain(out, render.to_json(docs))
    elif output is Format.yaml:
        if docs:
            render.plain(out, render.to_yaml(docs))
    elif docs:
        render.print_table(out, render.resources_table(kind, docs))
    else:
        err.print(f"no {kind.lower()}s found", markup=False, highlight=False)


@app.command()
def delete(
    ctx: typer.Context,
    kind: Annotated[Kind, typer.Argument(metavar=KIND_METAVAR)],
    name: Annotated[str, typer.Argument(metavar="NAME", help="name of the resource")],
    namespace: Annotated[
        str | None,
        typer.Option("-n", "--namespace", help="namespace; a connection without -n is global"),
    ] = None,
    message: Message = "",
) -> None:
    """Delete one resource (a new revision). Exit 0 deleted; 1 refused or unknown; 2 unreachable."""
    api_kind = API_KIND[kind.value]
    if api_kind == "Webhook" and not namespace:
        raise typer.BadParameter("a webhook lives in a namespace: give -n NS", param_hint="'-n'")
    if api_kind == "Namespace" and namespace:
        raise typer.BadParameter("namespaces are global: drop -n", param_hint="'-n'")
    with server_errors():
        answer = api_of(ctx).delete_resource(api_kind, namespace, name, message=message)
    print_answer(answer, TableOrJson.table)


@app.command()
def gateways(
    ctx: typer.Context,
    output: FormatOpt = Format.table,
) -> None:
    """List the gateways: revision served, health, refused resources, labels; -o json prints a
    JSON list, -o yaml the same as YAML.

    Exit 0 listed; 1 refused; 2 control plane unreachable.
    """
    with server_errors():
        items = api_of(ctx).gateways()
    if output is Format.json:
        render.plain(out, render.to_json(items))
    elif output is Format.yaml:
        render.plain(out, render.yaml_value(items))
    elif items:
        render.print_table(out, render.gateways_table(items))
    else:
        err.print("no gateways registered", markup=False, highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
