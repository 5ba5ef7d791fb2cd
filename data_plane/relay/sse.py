"""Server-Sent Events: the parser a connector reads the stream with, and the encoder the
gateway writes it with, following the WHATWG HTML "event stream interpretation".

The parser is incremental (`feed` takes bytes as they arrive, split anywhere, even inside a
UTF-8 sequence or between the CR and LF of one line end) and handles what naive relays get
wrong: several `data:` lines joined with "\\n", lines ending in CR, LF or CRLF, comments
(`:` lines, returned so a reader can count them as a heartbeat), `id:` (kept for the next
events; ignored when it holds NUL), `retry:` (digits only), one space after the colon removed,
a field without a colon, and an event dispatched only at a blank line with data in it.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_EOL = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    event: str = "message"
    data: str = ""
    id: str = ""  # the last event id as of this event


@dataclass(frozen=True, slots=True)
class Comment:
    text: str


@dataclass(frozen=True, slots=True)
class Retry:
    milliseconds: int


Item = Event | Comment | Retry


class SSEParser:
    """Feed it bytes; it returns the events, comments and retry times complete so far."""

    def __init__(self, max_line_chars: int = 1 << 26) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []  # the line under way
        self._partial_chars = 0
        self._after_cr = False  # the last chunk ended in CR: a LF starting the next is its end
        self._first = True  # a BOM may start the stream
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._max_line_chars = max_line_chars

    def feed(self, chunk: bytes) -> list[Item]:
        text = self._decoder.decode(chunk)
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = False
        out: list[Item] = []
        pos = 0
        # Only the new text is searched: what is buffered holds no line end by construction,
        # so a long line arriving in many chunks costs linear time.
        for end in _EOL.finditer(text):
            line = text[pos:end.start()]
            if self._partial:
                line = "".join(self._partial) + line
                self._partial, self._partial_chars = [], 0
            self._line(line, out)
            pos = end.end()
            if end.group() == "\r" and pos == len(text):
                self._after_cr = True
        if pos < len(text):
            self._partial.append(text[pos:])
            self._partial_chars += len(text) - pos
            if self._partial_chars > self._max_line_chars:
                raise ValueError(f"an event stream line over {self._max_line_chars} characters")
        return out

    def _line(self, line: str, out: list[Item]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line.startswith(":"):
            out.append(Comment(line[1:].removeprefix(" ")))
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._last_id = value
        elif field == "retry":
            if value and value.isascii() and value.isdigit():
                out.append(Retry(int(value)))
        # Any other field is ignored, as the standard says.

    def _dispatch(self, out: list[Item]) -> None:
        if not self._data:
            self._event = ""
            return
        out.append(Event(self._event or "message", "\n".join(self._data), self._last_id))
        self._data = []
        self._event = ""


def encode(data: str, event: str | None = None, id: str | None = None,
           retry_ms: int | None = None) -> bytes:
    """One event; data with line breaks becomes several `data:` lines."""
    lines = []
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.replace("\r\n", "\n").replace("\r", "\n")
                 .split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()
