"""The Server-Sent Events parser the connector reads with: the cases of the WHATWG event stream
format that naive relays get wrong, and the encoder it must round-trip with."""

from __future__ import annotations

import pytest

from data_plane.relay.sse import Comment, Event, Retry, SSEParser, comment, encode


def parse(*chunks: bytes) -> list[object]:
    parser = SSEParser()
    out: list[object] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert parse(b"data: first\ndata: second\ndata:third\n\n") == [
        Event(data="first\nsecond\nthird")]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert parse(b"data:  two spaces\n\n") == [Event(data=" two spaces")]


def test_comments_are_returned_apart_and_dispatch_nothing() -> None:
    assert parse(b": heartbeat\n\n:\n\ndata: x\n: between\n\n") == [
        Comment("heartbeat"), Comment(""), Comment("between"), Event(data="x")]


def test_event_type_and_id_and_the_id_persists() -> None:
    stream = b"id: 7\nevent: hello\ndata: {}\n\ndata: next\n\nid\ndata: cleared\n\n"
    assert parse(stream) == [Event("hello", "{}", "7"), Event("message", "next", "7"),
                             Event("message", "cleared", "")]


def test_an_id_holding_nul_is_ignored() -> None:
    assert parse(b"id: 1\n\nid: a\x00b\ndata: x\n\n") == [Event(data="x", id="1")]


@pytest.mark.parametrize(("line", "expected"), [
    (b"retry: 2500\n", [Retry(2500)]), (b"retry: 2.5\n", []), (b"retry: -1\n", []),
    (b"retry:\n", []), (b"retry: 12a\n", []), (b"retry: \xd9\xa3\n", []),  # Arabic digit
])  # fmt: skip
def test_retry_takes_ascii_digits_only(line: bytes, expected: list[object]) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending(eol: bytes) -> None:
    stream = eol.join([b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert parse(stream) == [Event(data="a\nb"), Event(data="c")]


def test_chunks_split_anywhere_even_between_cr_and_lf_and_inside_utf8() -> None:
    stream = "data: caf\u00e9\r\ndata: \u20ac\r\n\r\n: ok\r\n".encode()
    whole = parse(stream)
    assert whole == [Event(data="caf\u00e9\n\u20ac"), Comment("ok")]
    for size in (1, 2, 3, 5, 7):
        chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
        assert parse(*chunks) == whole, size
    # A CR ending one chunk and the LF starting the next are one line end, not two.
    assert parse(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [Event(data="a\nb")]


def test_no_event_without_data_and_unknown_fields_ignored() -> None:
    assert parse(b"event: lonely\n\nfoo: bar\nid: 3\n\n") == []
    assert parse(b"event: x\n\ndata: y\n\n") == [Event(data="y")]  # the type was reset


def test_a_field_without_colon_has_an_empty_value() -> None:
    assert parse(b"data\n\n") == [Event(data="")]
    assert parse(b"data\ndata\n\n") == [Event(data="\n")]


def test_a_leading_bom_is_skipped_once() -> None:
    assert parse(b"\xef\xbb\xbfdata: a\n\n") == [Event(data="a")]
    assert parse(b"\xef\xbb", b"\xbfdata: a\n\n") == [Event(data="a")]


def test_an_incomplete_event_waits_for_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: part") == []
    assert parser.feed(b"ial\ndata: more\n") == []
    assert parser.feed(b"\n") == [Event(data="partial\nmore")]


def test_an_endless_line_is_refused() -> None:
    parser = SSEParser(max_line_chars=100)
    with pytest.raises(ValueError, match="over 100"):
        for _ in range(20):
            parser.feed(b"x" * 10)


def test_the_encoder_round_trips_through_the_parser() -> None:
    data = 'line one\nline two\r\nline three\r{"json": true}'
    stream = encode(data, event="message", id="1-2", retry_ms=100) + comment("hb")
    assert parse(stream) == [Retry(100), Event("message",
                                               "line one\nline two\nline three\n"
                                               '{"json": true}', "1-2"), Comment("hb")]
