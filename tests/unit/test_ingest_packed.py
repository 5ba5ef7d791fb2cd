"""An async request's delivery goes to the queue packed in one step (`Delivery.to_packed`): the
same bytes the queue's generic packing makes of its fields, which its scripts unpack."""

from __future__ import annotations

from data_plane.delivery import Delivery
from data_plane.queue import _pack


def test_packed_is_the_generic_packing_of_the_fields() -> None:
    cases = [
        Delivery("acme", "gh", b'{"a": 1}', {"content-type": "application/json"}, 7,
                 request_id="req-1"),
        Delivery("a", "b", b"", {}, 0, id="x", received_at=1.5, attempt=3),
        # Bytes that look like the packing itself, and non-ASCII text.
        Delivery("ns", "wh", b"3:abc\x00:9:", {"x-\u00e9": "\u2603, 12:"}, 2**40),
    ]
    for delivery in cases:
        assert delivery.to_packed() == _pack(delivery.to_fields())
