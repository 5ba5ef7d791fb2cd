"""Resource keys of a full etcd read, parsed fast, must be those of `parse_resource_key`."""

from __future__ import annotations

from providers.etcd import _KeyParser
from providers.store_keys import parse_resource_key


def test_fast_keys_are_the_general_ones() -> None:
    prefix = "/whplane/"
    raw = [
        "resources/_global/Connection/events", "resources/_global/Namespace/a",
        "resources/_global/Namespace/b", "resources/a/Connection/api",
        "resources/a/Webhook/h1", "resources/a/Webhook/h2", "resources/a/Webhook/h2/x",
        "resources/a/Webhook/", "resources/a/Webhook/hé", "resources/b/Webhook/h1",
        "resources/b/Nope/h1", "resources//Webhook/h", "resources/b/Webhook/h1",
    ]
    parser = _KeyParser(prefix)
    for text in raw:
        errors: list[str] = []
        got = parser.parse((prefix + text).encode(), errors)
        try:
            want = parse_resource_key(prefix, prefix + text)
        except ValueError:
            assert got is None and errors, text
            continue
        assert got == want and not errors, text
        assert got is not None and got.kind in ("Namespace", "Connection", "Webhook")
