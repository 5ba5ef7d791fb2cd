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
    CanaryStatus,
    Change,
    Doc,
    Gateway,
    HistoryRecord,
    RolloutStatus,
)
from providers.errors import DocumentError, Location, ReferenceError_
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


def yaml_value(value: object) -> str:
    """Any JSON-like value as one YAML document (a list stays a list)."""
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)


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


def document_error_line(error: Mapping[str, Any],
                        locations: Mapping[str, Location] | None = None) -> str:
    """A control plane's document error as `validate` prints it when the document is one of
    ours (`locations`, by the source label sent); else `source[document]: field: reason`."""
    source = str(error.get("source") or "?")
    field = str(error.get("field") or "")
    reason = str(error.get("reason", ""))
    label = source if error.get("document") is None else f"{source}[{error['document']}]"
    location = (locations or {}).get(label)
    if location is not None:
        return DocumentError(location, field, reason).readable()
    return f"{label}: {field}: {reason}" if field else f"{label}: {reason}"


def print_errors(console: Console, head: str, lines: Iterable[str] = ()) -> None:
    """`error: head`, then one indented line per detail; text is never read as markup."""
    text = Text()
    text.append("error:", style="bold red")
    text.append(f" {head}")
    for line in lines:
        text.append(f"\n  {line}")
    console.print(text, soft_wrap=True)


def print_warning(console: Console, message: str) -> None:
    text = Text()
    text.append("warning:", style="bold yellow")
    text.append(f" {message}")
    console.print(text, soft_wrap=True)


def print_api_error(console: Console, exc: ApiError,
                    locations: Mapping[str, Location] | None = None) -> None:
    print_errors(console, str(exc),
                 (document_error_line(e, locations) for e in exc.document_errors))


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
    """GATEWAY REVISION APPLIED, plus CANARY while a canary runs and REFUSED when a gateway
    refuses resources."""
    gateways = status.get("gateways", [])
    canary = status.get("canary")
    in_canary = {str(g.get("id")) for g in (canary or {}).get("gateways", [])}
    any_refused = any(gw.get("refused") for gw in gateways)
    headers = ["GATEWAY", "REVISION", "APPLIED"]
    headers += ["CANARY"] if canary else []
    headers += ["REFUSED"] if any_refused else []
    table = _table(*headers)
    for gw in gateways:
        revision = gw.get("revision")
        cells = [str(gw.get("id", "?")), "-" if revision is None else str(revision),
                 "yes" if gw.get("applied") else "no"]
        if canary:
            cells.append("yes" if str(gw.get("id")) in in_canary else "no")
        if any_refused:
            cells.append(str(len(gw.get("refused") or [])))
        _row(table, *cells)
    return table


def canary_lines(canary: CanaryStatus) -> list[str]:
    """The running canary: what, who, its gateways and what happens next."""
    selector = canary.get("selector_text") or ",".join(
        f"{k}={v}" for k, v in sorted((canary.get("selector") or {}).items()))
    lines = [f"canary revision {canary.get('revision')} (from revision {canary.get('base')}), "
             f"selector {selector}, started {timestamp(canary.get('started'))}"
             + (f" by {canary['by']}" if canary.get("by") else "")]
    if canary.get("message"):
        lines.append(f"  message: {canary['message']}")
    gateways = canary.get("gateways") or []
    if not gateways:
        lines.append("  canary gateways: none live match the selector")
    for gw in gateways:
        revision = gw.get("revision")
        state = "serving" if gw.get("serving") else (
            "refusing " + ", ".join(str(r.get("resource", "?")) for r in gw.get("refused") or [])
            if gw.get("refused") else "not yet serving")
        lines.append(f"  canary gateway {gw.get('id', '?')}: revision "
                     f"{'-' if revision is None else revision}, {state}")
    if "requests" in canary:
        limit = canary.get("max_error_rate")
        rate = canary.get("error_rate")
        lines.append(f"  since the start: {canary.get('requests', 0)} request(s), "
                     f"{canary.get('errors', 0)} error(s)"
                     + ("" if rate is None else f" ({rate:.1%})")
                     + ("" if limit is None else f", aborts itself above {limit:.1%}"))
    after = canary.get("promote_after_s")
    left = canary.get("promote_in_s")
    if after is None:
        lines.append("  promotion: by hand (whctl rollout promote), or whctl rollout abort")
    else:
        lines.append(f"  promotion: by itself after {after:g}s healthy"
                     + ("" if left is None else f", {left:.0f}s left"))
    if canary.get("waiting"):
        lines.append(f"  now: {canary['waiting']}")
    return lines


def history_table(items: Sequence[HistoryRecord]) -> Table:
    table = _table("REVISION", "TIME", "AUTHOR", "MESSAGE", "CHANGES")
    for item in items:
        changes = "\n".join(
            [f"{_PAST.get(c.get('op', ''), c.get('op', '?'))} {change_label(c)}"
             for c in item.get("changes", [])] + rollout_lines(item)
        )
        _row(table, str(item.get("revision", "?")), timestamp(item.get("time")),
                      str(item.get("author", "")), str(item.get("message", "")), changes)
    return table


def gateways_table(items: Sequence[Gateway]) -> Table:
    table = _table("ID", "REVISION", "VERSION", "HEALTH", "REFUSED", "LABELS", "LIVE",
                   "HEARTBEAT", "LAST ERROR")
    for gw in items:
        revision = gw.get("revision")
        _row(
            table, str(gw.get("id", "?")), "-" if revision is None else str(revision),
            str(gw.get("version", "")), str(gw.get("health", "")),
            str(len(gw.get("refused") or [])), labels_text(gw.get("labels")),
            "yes" if gw.get("live") else "no", timestamp(gw.get("heartbeat")),
            str(gw.get("last_error") or ""),
        )
    return table


def labels_text(labels: object) -> str:
    """`k=v,k2=v2`, or `-` for none (a blank cell would shift the columns of piped output)."""
    if not isinstance(labels, Mapping) or not labels:
        return "-"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def rollout_lines(item: HistoryRecord) -> list[str]:
    """`canary started for canary=true`, `canary revision 12 aborted: <why>`."""
    rollout = item.get("rollout")
    if not isinstance(rollout, Mapping):
        return []
    canary = _mapping(rollout.get("canary"))
    selector = ",".join(f"{k}={v}" for k, v in sorted((canary.get("selector") or {}).items()))
    action = str(rollout.get("action", "?"))
    reason = f": {rollout['reason']}" if rollout.get("reason") else ""
    if action == "canary":
        return [f"canary started for {selector}"]
    past = {"promote": "promoted", "abort": "aborted"}.get(action, action)
    return [f"canary revision {canary.get('revision', '?')} {past}{reason}"]


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
    name = str(_mapping(doc.get("metadata")).get("name", "?"))
    # A stored value gateways cannot read: -o yaml says why.
    return f"{name} (invalid)" if "invalid" in doc else name


def _namespace(doc: Doc) -> str:
    return str(_mapping(doc.get("metadata")).get("namespace") or GLOBAL)
