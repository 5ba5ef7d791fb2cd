"""Logging set-up: plain or JSON lines, with the request id of the current request on each line.

One event is one line in either format: a sender's text (a header, a path, an exception message
quoting it) must not start a line of its own that reads like another logger's event. JSON
escapes by itself; the text format escapes control characters, and indents the lines of a
traceback so that none of them starts where an event's timestamp would.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


# What client libraries log about a destination that is down, per reconnect attempt or per
# request (aiokafka: ~40 lines a second while a broker refuses): (logger, message template) ->
# the level it is shown at. whplane logs each failed delivery attempt itself, naming the module
# and the Connection; this says the same again, without them. Anything else these libraries log
# keeps its level, and a template a new release rewords is shown as before: noisy, not lost.
CHATTER: dict[tuple[str, str], int] = {
    # aiokafka's client: bootstrap, broker connections, metadata refreshes.
    ("aiokafka", 'Unable connect to "%s:%s": %s'): logging.DEBUG,
    ("aiokafka", 'Unable to request metadata from "%s:%s": %s'): logging.DEBUG,
    ("aiokafka", "Unable connect to node with id %s: %s"): logging.DEBUG,
    ("aiokafka", "Unable to request metadata from node with id %s: %r"): logging.DEBUG,
    ("aiokafka", "Unable to update metadata from %s"): logging.DEBUG,
    ("aiokafka.producer.sender", "Got error produce response: %s"): logging.DEBUG,
    ("aiokafka.producer.sender", "Cannot send %r to %s: %r"): logging.DEBUG,
    # aiormq: a refused connect, a connection that dropped (with its traceback).
    ("aiormq.connection", "error when creating transport: %r"): logging.DEBUG,
    ("aiormq.connection", "Cancelling cause reader exited abnormally"): logging.DEBUG,
    # The broker closing the connection says why (a restart: CONNECTION_FORCED), once per
    # connection: worth a line, not an ERROR.
    ("aiormq.connection", 'Unexpected connection close from remote "%s", '
                          "Connection.Close(reply_code=%r, reply_text=%r)"): logging.WARNING,
    # stompman: its own reconnecting.
    ("stompman", "connection lost. reason: %r, connection_parameters: %s"): logging.DEBUG,
    ("stompman", "reconnected after connection failure. connection_parameters: %s"):
        logging.DEBUG,
}


class _ChatterFilter(logging.Filter):
    """Shows the records of CHATTER at their level there, if their logger shows that level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in _CHATTER_LOGGERS or not isinstance(record.msg, str):
            return True
        shown = CHATTER.get((record.name, record.msg))
        if shown is None or shown >= record.levelno:
            return True
        record.levelno, record.levelname = shown, logging.getLevelName(shown)
        return logging.getLogger(record.name).isEnabledFor(shown)


_CHATTER_LOGGERS = frozenset(name for name, _ in CHATTER)


def escape(text: str) -> str:
    """`text` with control characters (newlines included) written as escapes."""
    if text.isprintable():
        return text  # the usual case, checked in C
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    code = ord(c)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (
        f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
        else f"\\U{code:08x}")


class TextFormatter(logging.Formatter):
    """One line per event; continuation lines (tracebacks) indented and escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape(line) for line in text.splitlines())


# What every LogRecord has; anything else on a record came from a call's `extra={...}`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "request_id", "taskName"}


def _jsonable(value: object) -> object:
    return value if isinstance(value, str | int | float | bool | None) else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per event, with the `extra={...}` fields of the call (modules' `whplane`
    values, say) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=_jsonable)


def configure(level: str = "info", json_lines: bool = False, prefix: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(_ChatterFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(
            f"%(asctime)s {prefix}%(levelname)s %(name)s [%(request_id)s] %(message)s"
        ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO, with URLs: too chatty, and URLs may carry tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # watchfiles says "N changes detected" at INFO on every change it sees: with a directory
    # store that is every heartbeat of every gateway, burying the webhook lines.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
