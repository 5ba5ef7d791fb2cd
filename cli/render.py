"""How whctl shows things: tables, YAML and JSON documents, change lines, coloured diffs.

Everything is printed through rich. Machine-readable output (YAML, JSON, tokens) goes through
`plain`, which turns off rich's markup, emoji codes, highlighting and wrapping: a `:name:` or a
`[tag]` inside a document must come out byte for byte as it went in.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.client import (
    GLOBAL,
    ApiError,
    ApplyAnswer,
    Change,
    Doc,
    Gateway,
    HistoryRecord,
    RolloutStatus,
)
from providers.errors import ReferenceError_
from providers.references import has_refs, parse

_PAST = {"create": "created", "update": "updated", "delete": "deleted", "unchanged": "unchanged"}
_PIPE_WIDTH = 10_000
_URL_HOST = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/@?#]*@)?(\[[^\]]*\]|[^/:?#]*)(.*)$")


def plain(console: Console, text: str) -> None:
    """Print `text` exactly as it is (plus a newline unless it ends with one)."""
    console.print(
        text, markup=False, emoji=False, highlight=False, soft_wrap=True,
        end="" if text.endswith("\n") else "\n",
    )


def print_table(console: Console, table: Table) -> None:
    if console.is_terminal:
        console.print(table)
        return
    # Piped: one row per line, never wrapped or cut, no trailing blanks, so grep and awk see
    # whole rows.
    wide = Console(width=_PIPE_WIDTH, color_system=None, highlight=False)
    with wide.capture() as capture:
        wide.print(table)
    plain(console, "\n".join(line.rstrip() for line in capture.get().splitlines()))


def _table(*headers: str) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")  # wrap long names, never cut them
    return table


def _row(table: Table, *cells: str) -> None:
    # Text cells: values come from documents, so `[b]` or `:smile:` in them is not markup.
    table.add_row(*(Text(cell) for cell in cells))


# --- documents ---------------------------------------------------------------------------------


def to_yaml(docs: Sequence[Doc], *, sort_keys: bool = False) -> str:
    """Multi-document YAML that `whctl apply -f` reads back to the same documents."""
    if not docs:
        return ""
    return yaml.safe_dump_all(
        list(docs), sort_keys=sort_keys, allow_unicode=True, default_flow_style=False,
        explicit_start=len(docs) > 1,
    )


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def label(kind: str, namespace: str | None, name: str) -> str:
    """`webhook acme/github-push`, `connection events` (global), `namespace acme`."""
    if namespace and namespace != GLOBAL:
        return f"{kind.lower()} {namespace}/{name}"
    return f"{kind.lower()} {name}"


def change_label(change: Change) -> str:
    return label(change.get("kind", "?"), change.get("namespace"), change.get("name", "?"))


def apply_lines(answer: ApplyAnswer) -> list[str]:
    """`webhook acme/github-push created` per change, then `revision N`."""
    dry = bool(answer.get("dry_run"))
    lines = [
        f"{change_label(c)} {_PAST.get(c.get('op', ''), c.get('op', '?'))}"
        + (" (dry run)" if dry else "")
        for c in answer.get("changes", [])
    ]
    revision = answer.get("revision")
    lines.append(f"revision {revision}" + (" (dry run: nothing written)" if dry else ""))
    return lines


# --- errors ------------------------------------------------------------------------------------


def document_error_line(error: Mapping[str, Any]) -> str:
    """`source[document]: field: reason`, the same shape as offline validation errors."""
    where = str(error.get("source") or "?")
    if error.get("document") is not None:
        where += f"[{error['document']}]"
    field = error.get("field")
    reason = error.get("reason", "")
    return f"{where}: {field}: {reason}" if field else f"{where}: {reason}"


def print_errors(console: Console, head: str, lines: Iterable[str] = ()) -> None:
    """`error: head`, then one indented line per detail; text is never read as markup."""
    text = Text()
    text.append("error:", style="bold red")
    text.append(f" {head}")
    for line in lines:
        text.append(f"\n  {line}")
    console.print(text, soft_wrap=True)


def print_api_error(console: Console, exc: ApiError) -> None:
    print_errors(console, str(exc), (document_error_line(e) for e in exc.document_errors))


# --- tables ------------------------------------------------------------------------------------


def resources_table(kind: str, docs: Sequence[Doc]) -> Table:
    if kind == "Namespace":
        # A Namespace has no namespace of its own: no NAMESPACE column.
        table = _table("NAME", "DESCRIPTION")
        for doc in docs:
            _row(table, _name(doc), str(_spec(doc).get("description", "")))
        return table
    if kind == "Connection":
        table = _table("NAME", "NAMESPACE", "TYPE", "URL HOST")
        for doc in docs:
            spec = _spec(doc)
            _row(table, _name(doc), _namespace(doc), str(spec.get("type", "")),
                          url_host(str(spec.get("url", ""))))
        return table
    table = _table("NAME", "NAMESPACE", "SCHEME", "MODE", "STEPS")
    for doc in docs:
        spec = _spec(doc)
        verify, delivery, chain = (_mapping(spec.get(k)) for k in ("verify", "delivery", "chain"))
        steps = [str(_mapping(s).get("module", "?")) for s in chain.get("steps") or ()]
        _row(table, _name(doc), _namespace(doc), str(verify.get("scheme", "")),
                      str(delivery.get("mode", "sync")), ",".join(steps))
    return table


def url_host(url: str) -> str:
    """The host of a connection URL, never its credentials, path or query.

    A reference shows as the reference with its default masked (`{$WH_REDIS_URL:...}`): the
    default may be a full URL with a password in it.
    """
    text = url
    if has_refs(url):
        try:
            text = parse(url).render(str)
        except ReferenceError_:
            return "(invalid reference)"
    match = _URL_HOST.match(text)
    if match is None:
        return text if has_refs(url) else ""
    host, rest = match.groups()
    if not host and text.startswith("unix:"):
        return rest.split("?", 1)[0]  # unix:///run/redis.sock: the socket is the "host"
    return host


def rollout_table(status: RolloutStatus) -> Table:
    table = _table("GATEWAY", "REVISION", "APPLIED")
    for gw in status.get("gateways", []):
        revision = gw.get("revision")
        _row(table, str(gw.get("id", "?")), "-" if revision is None else str(revision),
                      "yes" if gw.get("applied") else "no")
    return table


def history_table(items: Sequence[HistoryRecord]) -> Table:
    table = _table("REVISION", "TIME", "AUTHOR", "MESSAGE", "CHANGES")
    for item in items:
        changes = "\n".join(
            f"{_PAST.get(c.get('op', ''), c.get('op', '?'))} {change_label(c)}"
            for c in item.get("changes", [])
        )
        _row(table, str(item.get("revision", "?")), timestamp(item.get("time")),
                      str(item.get("author", "")), str(item.get("message", "")), changes)
    return table


def gateways_table(items: Sequence[Gateway]) -> Table:
    table = _table("ID", "REVISION", "VERSION", "HEALTH", "LIVE", "HEARTBEAT", "LAST ERROR")
    for gw in items:
        revision = gw.get("revision")
        _row(
            table, str(gw.get("id", "?")), "-" if revision is None else str(revision),
            str(gw.get("version", "")), str(gw.get("health", "")),
            "yes" if gw.get("live") else "no", timestamp(gw.get("heartbeat")),
            str(gw.get("last_error") or ""),
        )
    return table


def timestamp(value: object) -> str:
    """ISO text as sent; epoch seconds as UTC ISO time."""
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        moment = dt.datetime.fromtimestamp(value, tz=dt.UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


# --- diff --------------------------------------------------------------------------------------


def unified_diff(change: Change, revision: int) -> list[str]:
    """The unified diff of one change, the control plane's copy (a) against the files' (b)."""
    where = f"{change.get('kind', '?')}/{change.get('namespace') or GLOBAL}/{change.get('name')}"
    before, after = change.get("before"), change.get("after")
    # Sorted keys: key order is not a difference worth showing.
    old = to_yaml([before], sort_keys=True) if before is not None else ""
    new = to_yaml([after], sort_keys=True) if after is not None else ""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{where} (revision {revision})" if before is not None else "/dev/null",
        tofile=f"{where} (local)" if after is not None else "/dev/null",
    )
    return [line.rstrip("\n") for line in lines]


def diff_text(lines: Iterable[str]) -> Text:
    """Red for removals, green for additions; rich drops the colours when not on a terminal."""
    text = Text()
    for line in lines:
        if line.startswith(("---", "+++")):
            style = "bold"
        elif line.startswith("@@"):
            style = "cyan"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("+"):
            style = "green"
        else:
            style = ""
        text.append(line + "\n", style=style)
    return text


# --- small accessors for documents of unknown shape ---------------------------------------------


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _spec(doc: Doc) -> Mapping[str, Any]:
    return _mapping(doc.get("spec"))


def _name(doc: Doc) -> str:
    return str(_mapping(doc.get("metadata")).get("name", "?"))


def _namespace(doc: Doc) -> str:
    return str(_mapping(doc.get("metadata")).get("namespace") or GLOBAL)
