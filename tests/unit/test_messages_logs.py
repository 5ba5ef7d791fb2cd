"""Log lines a person reads: the JSON formatter keeps a call's `extra` fields, watchfiles does
not repeat itself at INFO, and the request id reaches the lines it belongs to."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from data_plane import logs


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    watchfiles_level = logging.getLogger("watchfiles").level
    yield capsys
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("watchfiles").setLevel(watchfiles_level)


def test_json_lines_carry_the_extra_fields(captured: pytest.CaptureFixture[str]) -> None:
    logs.configure(json_lines=True)
    token = logs.request_id.set("req-1")
    try:
        logging.getLogger("data_plane.modules.log").info(
            "webhook id=%s", "d1", extra={"whplane": {"id": "d1", "size": 3}, "odd": b"x"})
    finally:
        logs.request_id.reset(token)
    line = json.loads(captured.readouterr().err.strip())
    assert line["message"] == "webhook id=d1"
    assert line["whplane"] == {"id": "d1", "size": 3}
    assert line["odd"] == "b'x'"  # not JSON: its string form rather than a lost line
    assert line["request_id"] == "req-1"
    assert not {"args", "msg", "levelno", "pathname"} & set(line)


def test_watchfiles_change_notices_are_not_logged(captured: pytest.CaptureFixture[str]) -> None:
    logs.configure()
    logging.getLogger("watchfiles.main").info("3 changes detected")
    logging.getLogger("watchfiles.main").warning("watch failed")
    err = captured.readouterr().err
    assert "changes detected" not in err
    assert "watch failed" in err
