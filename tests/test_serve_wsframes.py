"""The stream's RFC 6455 codec (``lstminfer.serve.wsframes``): client frames in any cut, whole messages out.

Frames are built here by an independent encoder (``_client_frame``); every message must come out
equal whatever the bytes' cut into ``feed`` calls, fragmented or not, with 7/16/64-bit lengths and
control frames between fragments; each protocol violation raises ``FrameError`` with its close code.
"""
import os

import pytest

from lstminfer.serve.wsframes import (CLOSE_BAD_DATA, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, OP_BINARY, OP_CLOSE,
                                      OP_PING, OP_TEXT, FrameError, MessageReader, parse_close, server_frame)


def _client_frame(opcode, payload, fin=True, masked=True, rsv=0):
    n = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([first, mask_bit | n])
    elif n < 1 << 16:
        head = bytes([first, mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _feed_in_pieces(reader, data, size):
    out = []
    for i in range(0, len(data), size):
        out += reader.feed(data[i:i + size])
    return [(op, bytes(p)) for op, p in out]


@pytest.mark.parametrize("size, piece", [(size, piece) for size in (0, 1, 125, 126, 65535, 65536, 70001)
                                         for piece in (1, 7, 1 << 20) if piece > 1 or size < 2000])  # byte by byte: short
def test_lengths_of_every_encoding_in_any_cut(size, piece):
    payload = os.urandom(size)
    data = _client_frame(OP_BINARY, payload) + _client_frame(OP_TEXT, b"{}")
    assert _feed_in_pieces(MessageReader(1 << 20), data, piece) == [(OP_BINARY, payload), (OP_TEXT, b"{}")]


def test_fragments_join_and_control_frames_pass_between_them():
    parts = [os.urandom(n) for n in (3, 200, 1)]
    data = (_client_frame(OP_BINARY, parts[0], fin=False) + _client_frame(OP_PING, b"hi")
            + _client_frame(0, parts[1], fin=False) + _client_frame(0, parts[2]))
    for piece in (1, 5, len(data)):
        assert _feed_in_pieces(MessageReader(1000), data, piece) == [(OP_PING, b"hi"), (OP_BINARY, b"".join(parts))]


@pytest.mark.parametrize("data, code, words", [
    (_client_frame(OP_BINARY, b"abc", masked=False), CLOSE_PROTOCOL_ERROR, "masked"),
    (_client_frame(OP_BINARY, b"abc", rsv=0x40), CLOSE_PROTOCOL_ERROR, "reserved bits"),
    (_client_frame(0x3, b"abc"), CLOSE_PROTOCOL_ERROR, "reserved opcode"),
    (_client_frame(0xB, b""), CLOSE_PROTOCOL_ERROR, "reserved opcode"),
    (_client_frame(0, b"abc"), CLOSE_PROTOCOL_ERROR, "continuation"),
    (_client_frame(OP_TEXT, b"a", fin=False) + _client_frame(OP_BINARY, b"b"), CLOSE_PROTOCOL_ERROR, "new message"),
    (_client_frame(OP_PING, b"x" * 126), CLOSE_PROTOCOL_ERROR, "125 bytes"),
    (_client_frame(OP_PING, b"x", fin=False), CLOSE_PROTOCOL_ERROR, "control frame"),
    (_client_frame(OP_BINARY, b"x" * 101), CLOSE_TOO_BIG, "100 bytes"),
    (_client_frame(OP_BINARY, b"x" * 60, fin=False) + _client_frame(0, b"x" * 60), CLOSE_TOO_BIG, "100 bytes"),
    (_client_frame(OP_TEXT, b"\xff\xfe"), CLOSE_BAD_DATA, "UTF-8"),
])
def test_protocol_violations_name_their_close_code(data, code, words):
    with pytest.raises(FrameError) as err:
        MessageReader(100).feed(data)
    assert err.value.code == code and words in err.value.reason


def test_a_too_big_frame_is_refused_from_its_header_alone():
    head = _client_frame(OP_BINARY, b"x" * 70000)[:14]  # 64-bit length and mask, no payload yet
    with pytest.raises(FrameError) as err:
        MessageReader(65536).feed(head)
    assert err.value.code == CLOSE_TOO_BIG


def test_close_payloads():
    assert parse_close(b"") == (None, "")
    assert parse_close((1000).to_bytes(2, "big") + "bye ✓".encode()) == (1000, "bye ✓")
    assert parse_close((4404).to_bytes(2, "big")) == (4404, "")
    for bad, code in ((b"\x03", CLOSE_PROTOCOL_ERROR), ((1005).to_bytes(2, "big"), CLOSE_PROTOCOL_ERROR),
                      ((999).to_bytes(2, "big"), CLOSE_PROTOCOL_ERROR), ((5000).to_bytes(2, "big"), CLOSE_PROTOCOL_ERROR),
                      ((1000).to_bytes(2, "big") + b"\xff", CLOSE_BAD_DATA)):
        with pytest.raises(FrameError) as err:
            parse_close(bad)
        assert err.value.code == code


@pytest.mark.parametrize("size, head", [(5, b"\x82\x05"), (300, b"\x82\x7e\x01\x2c"),
                                        (70000, b"\x82\x7f" + (70000).to_bytes(8, "big"))])
def test_server_frames_are_unmasked_with_the_shortest_length(size, head):
    payload = os.urandom(size)
    assert server_frame(OP_BINARY, payload) == head + payload
    assert server_frame(OP_CLOSE, b"")[:2] == b"\x88\x00"
