"""payload_schema: JSON Schema validation of the body, compiled once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from data_plane.verify import VerifyFailed
from data_plane.verify.payload_schema import build

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["created", "deleted"]},
        "data": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer"}, "email": {"format": "email"}},
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def test_accepts_a_matching_body() -> None:
    check = build(SCHEMA)
    check(json.dumps({"event": "created", "data": {"id": 1}, "tags": ["a"]}).encode())


@pytest.mark.parametrize(
    ("document", "where", "what"),
    [
        ({"event": "created"}, "$", "'data' is a required property"),
        ({"event": "moved", "data": {"id": 1}}, "$.event", "is not one of"),
        ({"event": "created", "data": {"id": "1"}}, "$.data.id", "is not of type 'integer'"),
        ({"event": "created", "data": {"id": 1}, "tags": ["a", 2]}, "$.tags[1]", "not of type"),
        ({"event": "created", "data": {"id": 1, "email": "nope"}}, "$.data.email", "email"),
    ],
)
def test_names_the_failing_path_and_message(
    document: dict[str, Any], where: str, what: str
) -> None:
    check = build(SCHEMA)
    with pytest.raises(VerifyFailed) as caught:
        check(json.dumps(document).encode())
    reason = caught.value.reason
    assert reason.startswith(f"payload does not match schema at {where}: ")
    assert what in reason


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000])
def test_rejects_a_body_that_is_not_json(body: bytes) -> None:
    with pytest.raises(VerifyFailed, match="body is not valid JSON"):
        build(SCHEMA)(body)


def test_a_body_too_deep_to_validate_is_refused_cleanly() -> None:
    # Deep enough for json.loads, too deep for the validator's recursion over a recursive schema.
    check = build({"type": "array", "items": {"$ref": "#"}})
    check(b"[[[]]]")
    with pytest.raises(VerifyFailed, match="nested too deeply"):
        check(b"[" * 900 + b"]" * 900)


def test_long_messages_are_truncated() -> None:
    check = build({"type": "integer"})
    with pytest.raises(VerifyFailed) as caught:
        check(json.dumps("x" * 10_000).encode())
    assert len(caught.value.reason) < 300
    assert caught.value.reason.endswith("...")


def test_an_invalid_schema_fails_at_build_time() -> None:
    with pytest.raises(ValueError, match="invalid JSON schema"):
        build({"type": "no-such-type"})


def test_default_draft_without_schema_keyword() -> None:
    check = build({"type": "object", "required": ["id"]})
    check(b'{"id": 1}')
    with pytest.raises(VerifyFailed, match="'id' is a required property"):
        check(b"{}")
