"""Client libraries' reconnect chatter: shown at the level `logs.CHATTER` gives it (DEBUG, so
gone at INFO), while anything else they log, and everything whplane logs, keeps its level."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from data_plane import logs


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("httpx", "watchfiles")}
    yield capsys
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in levels.items():
        logging.getLogger(name).setLevel(was)


def lines(captured: pytest.CaptureFixture[str]) -> list[str]:
    return captured.readouterr().err.splitlines()


def test_reconnect_chatter_is_gone_at_info(captured: pytest.CaptureFixture[str]) -> None:
    logs.configure("info")
    logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 1, "refused")
    logging.getLogger("aiokafka.producer.sender").warning("Got error produce response: %s", "x")
    logging.getLogger("aiormq.connection").error("error when creating transport: %r", "refused")
    logging.getLogger("stompman").warning(
        "connection lost. reason: %r, connection_parameters: %s", "eof", "params")
    assert lines(captured) == []


def test_chatter_shows_at_debug_as_debug(captured: pytest.CaptureFixture[str]) -> None:
    logs.configure("debug")
    logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])
    [line] = lines(captured)
    assert " DEBUG aiokafka " in line and "Unable to update metadata from [1]" in line


def test_other_records_keep_their_level(captured: pytest.CaptureFixture[str]) -> None:
    logs.configure("info")
    logging.getLogger("aiokafka.producer.sender").error("Unexpected error in sender routine")
    logging.getLogger("data_plane.chain").error("Unable connect to node with id %s: %s", 1, 2)
    logging.getLogger("aiokafka").error({"not": "a template"})
    got = lines(captured)
    assert len(got) == 3
    assert " ERROR aiokafka.producer.sender " in got[0]
    assert " ERROR data_plane.chain " in got[1]  # the same words from whplane: not chatter
    assert " ERROR aiokafka " in got[2]


def test_a_broker_closing_the_connection_is_a_warning(
    captured: pytest.CaptureFixture[str],
) -> None:
    logs.configure("info")
    logging.getLogger("aiormq.connection").error(
        'Unexpected connection close from remote "%s", '
        "Connection.Close(reply_code=%r, reply_text=%r)",
        "amqp://guest:******@broker/", 320, "CONNECTION_FORCED - broker shutdown")
    [line] = lines(captured)
    assert " WARNING aiormq.connection " in line and "CONNECTION_FORCED" in line
