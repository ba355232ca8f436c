"""The RESP codec: requests as clients send them (whole, pipelined, split anywhere, inline) and replies
in both protocol versions."""

from __future__ import annotations

import re

import pytest
from kvs2.resp import (
    NULL2,
    NULL3,
    FastParser,
    Parser,
    ProtocolError,
    Value,
    bulk_or_null,
    encode,
    error,
    parser_for,
)

PARSERS = [Parser, FastParser]


def _request(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def _all(parser: Parser | FastParser) -> list[list[bytes]]:
    out = []
    while (command := parser.get()) is not None:
        out.append(command)
    return out


@pytest.mark.parametrize("make", PARSERS)
def test_one_command_and_a_pipeline_in_one_chunk(make: type[Parser | FastParser]) -> None:
    parser = make()
    parser.feed(_request(b"GET", b"k") + _request(b"SET", b"k", b"a\r\nb") + _request(b"PING"))
    assert _all(parser) == [[b"GET", b"k"], [b"SET", b"k", b"a\r\nb"], [b"PING"]]
    assert parser.get() is None


@pytest.mark.parametrize("make", PARSERS)
def test_split_at_every_byte_gives_the_same_commands(make: type[Parser | FastParser]) -> None:
    stream = _request(b"MGET", b"a", b"bb", b"") + _request(b"SET", b"\x00\xff", b"x" * 300)
    parser = make()
    seen: list[list[bytes]] = []
    for i in range(len(stream)):
        parser.feed(stream[i : i + 1])
        seen.extend(_all(parser))
    assert seen == [[b"MGET", b"a", b"bb", b""], [b"SET", b"\x00\xff", b"x" * 300]]


def test_inline_commands_and_empty_requests() -> None:
    parser = Parser()
    parser.feed(b"PING\r\n\r\n*0\r\nget  key\n" + _request(b"ECHO", b"x"))
    assert _all(parser) == [[b"PING"], [b"get", b"key"], [b"ECHO", b"x"]]


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"*1\r\n$x\r\n", "invalid length"),
        (b"*2\r\n:1\r\n", "expected '$'"),
        (b"*1\r\n$3\r\nGETXX", "does not end with CRLF"),
        (b"*1\r\n$-5\r\n", "invalid bulk length -5"),
        (b"*1\r\n$99\r\n", "invalid bulk length 99 (the limit is 10 bytes)"),
        (b"*20\r\n", "invalid multibulk length 20 (the limit is 8)"),
    ],
)
def test_malformed_streams_are_protocol_errors(stream: bytes, message: str) -> None:
    parser = Parser(max_bulk=10, max_args=8)
    parser.feed(stream)
    with pytest.raises(ProtocolError, match=re.escape(message)):
        parser.get()


@pytest.mark.parametrize(
    "stream",
    [b"*2\r\n$3\r\nGET\r\n:1\r\n", b"*1\r\n*1\r\n$1\r\na\r\n", b"+OK\r\n", b"PING\r\n", b"*1\r\n$x\r\n"],
)
def test_the_fast_parser_takes_arrays_of_bulk_strings_only(stream: bytes) -> None:
    parser = FastParser()
    parser.feed(stream)
    with pytest.raises(ProtocolError):
        parser.get()


def test_the_fast_parser_bounds_what_an_incomplete_request_buffers() -> None:
    parser = FastParser(max_bulk=10)
    parser.feed(b"*1\r\n$1000000\r\n" + b"x" * 70_000)
    with pytest.raises(ProtocolError, match="the limit is 10 bytes"):
        parser.get()


def test_a_connection_starting_inline_gets_the_inline_parser() -> None:
    assert isinstance(parser_for(b"PING\r\n"), Parser)
    assert isinstance(parser_for(b"*1\r\n"), FastParser)


def test_an_unterminated_inline_request_is_bounded() -> None:
    parser = Parser()
    parser.feed(b"x" * 70_000)
    with pytest.raises(ProtocolError, match="too big inline request"):
        parser.get()


def test_replies_in_resp2_and_resp3() -> None:
    value: Value = {"a": 1, "b": [b"x", None], "c": True, "d": 1.5}
    assert (
        encode(value, 2) == b"*8\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n*2\r\n$1\r\nx\r\n$-1\r\n"
        b"$1\r\nc\r\n:1\r\n$1\r\nd\r\n$3\r\n1.5\r\n"
    )
    assert (
        encode(value, 3)
        == b"%4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n*2\r\n$1\r\nx\r\n_\r\n$1\r\nc\r\n#t\r\n$1\r\nd\r\n,1.5\r\n"
    )
    assert bulk_or_null(None, 2) == NULL2
    assert bulk_or_null(None, 3) == NULL3
    assert bulk_or_null(b"", 2) == b"$0\r\n\r\n"


def test_an_error_reply_stays_on_one_line() -> None:
    assert error("ERR", "two\r\nlines") == b"-ERR two  lines\r\n"
