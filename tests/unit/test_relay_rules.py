"""Relay pieces without servers: the connect path rule (judged on raw bytes), ack frames, the
channel index and its tokens, the step model, and the connector's own checks."""

from __future__ import annotations

from typing import Any

import pytest
from immutables import Map

from data_plane.delivery import Delivery
from data_plane.relay import wire
from data_plane.relay.channels import Channels
from data_plane.relay.connector import ConnectorSettings
from data_plane.relay.routes import _Bad, parse_path
from data_plane.relay.store import Taken
from providers.errors import DocumentErrors, Location
from providers.loader import validate_document
from providers.resources import ResourceKey
from providers.snapshot import Entry, Snapshot


def scope(raw: bytes) -> dict[str, Any]:
    return {"type": "http", "raw_path": raw, "path": raw.decode("latin-1")}


def test_a_valid_path() -> None:
    assert parse_path(scope(b"/connect/acme/dev-1/ws")) == ("acme", "dev-1", "ws")


@pytest.mark.parametrize("raw", [
    b"/connect/acme/../ws", b"/connect/acme/..%2fadmin/ws", b"/connect/acme/a%2Fb/sse",
    b"/connect/acme/a/b/sse", b"/connect/acme/a%00b/poll", b"/connect/acme/a\x00b/poll",
    b"/connect/acme/%2e%2e/ack", b"/connect/ACME/dev/ws", b"/connect/acme/-dev/ws",
    b"/connect/acme/dev\n/ws", b"/connect/acme/d\xc3\xa9v/ws", b"/connect/acme//ws",
    b"/connect/acme/" + b"a" * 64 + b"/ws", b"/connect/acme/dev",
])  # fmt: skip
def test_bad_names_are_refused_before_decoding(raw: bytes) -> None:
    with pytest.raises(_Bad) as bad:
        parse_path(scope(raw))
    assert bad.value.status == 400


def test_an_unknown_operation_is_404() -> None:
    with pytest.raises(_Bad) as bad:
        parse_path(scope(b"/connect/acme/dev/admin"))
    assert bad.value.status == 404


def test_settlements() -> None:
    assert wire.settlement({"type": "ack", "ids": ["1-0", "2-3"]}).acks == ("1-0", "2-3")
    both = wire.settlement({"ids": ["1-0"], "nacks": [{"id": "2-0", "error": "HTTP 500"}]})
    assert both.nacks == (("2-0", "HTTP 500"),)
    assert wire.settlement({"type": "nack", "id": "5-1", "error": "x" * 900}).nacks[0][1] == (
        "x" * wire.MAX_ERROR)
    assert wire.settlement({"type": "heartbeat"}) == wire.Settlement()
    for bad in ([], {"type": "ack", "ids": ["../x"]}, {"type": "ack", "ids": [1]},
                {"type": "drop"}, {"ids": "1-0"}, {"ids": ["1-0"] * 1001}):
        with pytest.raises(wire.BadFrame):
            wire.settlement(bad)


def test_a_message_carries_its_ids_and_the_body_in_base64() -> None:
    d = Delivery("acme", "orders", b"\x00\xffbinary", {"x-a": "1"}, revision=3, id="abc")
    msg = wire.message(Taken("5-0", d, failures=2), "dev")
    assert (msg["id"], msg["delivery"], msg["attempt"], msg["body"]) == (
        "5-0", "abc", 3, "AP9iaW5hcnk=")


def hook(ns: str, name: str, channel: str, token: str) -> Any:
    doc = {"apiVersion": "whplane/v1", "kind": "Webhook",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"verify": {"scheme": "none"}, "chain": {"steps": [
               {"module": "log"},
               {"module": "relay", "config": {"channel": channel, "token": token}}]}}}
    return validate_document(doc, Location("test.yaml"))


def snapshot(*hooks: Any) -> Snapshot:
    entries = {ResourceKey("Webhook", h.metadata.namespace, h.metadata.name):
               Entry(raw={}, resource=h) for h in hooks}
    return Snapshot(revision=1, entries=Map(entries))


def test_channels_accept_each_of_their_tokens_and_nothing_else() -> None:
    snap = snapshot(hook("acme", "a", "dev", "t-one"), hook("acme", "b", "dev", "t-two"),
                    hook("globex", "c", "dev", "t-globex"))
    channels = Channels(lambda: snap)
    assert channels.authorize("acme", "dev", "t-one") is not None
    assert channels.authorize("acme", "dev", "t-two") is not None
    for ns, name, token in (("acme", "dev", "t-globex"), ("acme", "dev", ""),
                            ("acme", "dev", None), ("acme", "prod", "t-one"),
                            ("nobody", "dev", "t-one"), ("acme", "dev", "t-one ")):
        assert channels.authorize(ns, name, token) is None
    assert channels.namespaces() == {"acme", "globex"}


def test_the_index_follows_the_snapshot() -> None:
    snaps = [snapshot(hook("acme", "a", "dev", "old"))]
    channels = Channels(lambda: snaps[-1])
    assert channels.authorize("acme", "dev", "old") is not None
    snaps.append(snapshot(hook("acme", "a", "dev", "new")))
    assert channels.authorize("acme", "dev", "old") is None
    assert channels.authorize("acme", "dev", "new") is not None


def test_the_step_model() -> None:
    h = hook("acme", "a", "dev", "{$vault:acme/relay#token}")
    step = h.spec.chain.steps[1]
    assert step.config.max_in_flight == 100 and step.config.visibility_timeout_s == 30
    assert step.secret_fields() == {"config.token": "{$vault:acme/relay#token}"}
    for channel in ("../admin", "a/b", "Dev", "a%2fb"):
        with pytest.raises(DocumentErrors) as refused:
            hook("acme", "a", channel, "t")
        assert [e.path for e in refused.value.errors] == ["spec.chain.steps[1].config.channel"]


def settings(**overrides: Any) -> ConnectorSettings:
    base: dict[str, Any] = {"gateway": "http://gw:8080", "namespace": "acme",
                            "channel": "dev", "forward": "http://127.0.0.1:3000/hook",
                            "token": "t"}
    return ConnectorSettings(**{**base, **overrides})


def test_the_connector_builds_paths_only_from_valid_names() -> None:
    assert settings().url("ws") == "http://gw:8080/connect/acme/dev/ws"
    for bad in ({"channel": "../admin"}, {"namespace": "a/b"}, {"channel": "x%2fy"},
                {"channel": "a\x00"}, {"gateway": "gw:8080"}, {"forward": "file:///x"},
                {"token": ""}, {"token": "a b"}, {"window": 0}, {"heartbeat_s": 0.1}):
        with pytest.raises(ValueError):
            settings(**bad)
    assert "secret-token" not in repr(settings(token="secret-token"))
