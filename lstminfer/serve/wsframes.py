"""RFC 6455 frames, server side: client frames in, whole messages out; server frames built in one call.

The stream's hot path parses its frames here, in the transport's ``data_received`` callback,
rather than through aiohttp's reader, queue and ``receive()`` coroutine: one message then
costs a few microseconds of Python instead of two task wake-ups (benchmarks/RESULTS.md,
"The edge service: the callback path"). Kept to what a server needs: masked client frames
(an unmasked one is a protocol error), 7/16/64-bit lengths, fragmented messages with control
frames between their fragments, close codes and UTF-8 checks; no extensions (compression is
never negotiated, so reserved bits are errors). A violation raises ``FrameError`` with the
close code to answer with.
"""
from __future__ import annotations

from struct import Struct

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_BAD_DATA = 1007  # a text message or close reason that is not UTF-8
CLOSE_TOO_BIG = 1009
_CONTROL_MAX = 125
_HEAD_SHORT = Struct("!BB").pack
_HEAD_16 = Struct("!BBH").pack
_HEAD_64 = Struct("!BBQ").pack

try:  # aiohttp's C helper unmasks in place (0.2 us for 160 bytes; the int XOR below: 1.7 us)
    from aiohttp._websocket.helpers import websocket_mask as _mask_in_place
except ImportError:  # pragma: no cover - aiohttp moved it: the portable form
    def _mask_in_place(mask: bytes, data: bytearray) -> None:
        n = len(data)
        key = (mask * ((n >> 2) + 1))[:n]
        data[:] = (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameError(Exception):
    """The client broke the protocol: close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame_head(opcode: int, size: int) -> bytes:
    """The header of a whole unmasked frame (FIN set) of ``size`` payload bytes."""
    if size < 126:
        return _HEAD_SHORT(0x80 | opcode, size)
    if size < 1 << 16:
        return _HEAD_16(0x80 | opcode, 126, size)
    return _HEAD_64(0x80 | opcode, 127, size)


def server_frame(opcode: int, payload: bytes | bytearray = b"") -> bytes:
    """One whole unmasked frame (FIN set) carrying ``payload``."""
    return frame_head(opcode, len(payload)) + payload


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason[:_CONTROL_MAX - 2]


def parse_close(payload: bytes | bytearray) -> tuple[int | None, str]:
    """(code, reason) of a client's close frame (None: it gave no code); FrameError if either is invalid."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "a close frame's payload is empty or starts with a 2-byte code")
    code = int.from_bytes(payload[:2], "big")
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent (RFC 6455 7.4)")
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_BAD_DATA, "the close reason is not UTF-8") from None
    return code, reason


class MessageReader:
    """Bytes from a client in, whole messages out: ``feed(data)`` -> ``[(opcode, payload), ...]``.

    Payloads are unmasked ``bytearray``s; a fragmented message comes out whole, when its last
    fragment arrives; control frames (close, ping, pong) come out as they arrive, between
    fragments too. Messages longer than ``max_size`` bytes are refused (1009) as soon as a
    frame header says so, before their bytes are buffered.
    """

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._buffer = bytearray()
        self._opcode = 0  # of the fragmented message in progress (0: none)
        self._parts: list[bytearray] = []
        self._size = 0  # bytes of those parts

    def whole_binary(self, data: bytes) -> bytearray | None:
        """The unmasked payload when ``data`` is exactly one whole binary frame and nothing is buffered
        (the hot path: a third of the general loop's cost), else None: ``feed`` it."""
        if self._buffer or self._opcode or len(data) <= 6 or data[0] != 0x80 | OP_BINARY:
            return None
        second = data[1]
        length, head = second & 0x7F, 2
        if length == 126:
            length, head = data[2] << 8 | data[3], 4
        if second & 0x80 and length != 127 and head + 4 + length == len(data) and length <= self.max_size:
            payload = bytearray(data[head + 4:])
            _mask_in_place(data[head:head + 4], payload)
            return payload
        return None

    def feed(self, data: bytes) -> list[tuple[int, bytearray]]:
        payload = self.whole_binary(data)
        if payload is not None:
            return [(OP_BINARY, payload)]
        buf = self._buffer
        buf += data
        size = len(buf)
        messages = []
        pos = 0
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, head = second & 0x7F, pos + 2
            if length == 126:
                if size - head < 2:
                    break
                length, head = int.from_bytes(buf[head:head + 2], "big"), head + 2
            elif length == 127:
                if size - head < 8:
                    break
                length, head = int.from_bytes(buf[head:head + 8], "big"), head + 8
            opcode = first & 0x0F
            self._check_header(first, second, opcode, length)
            end = head + 4 + length
            if size < end:
                break
            payload = buf[head + 4:end]
            _mask_in_place(bytes(buf[head:head + 4]), payload)
            pos = end
            if opcode >= OP_CLOSE:
                messages.append((opcode, payload))
            elif not first & 0x80:  # a fragment, not the last
                if opcode:
                    self._opcode = opcode
                self._parts.append(payload)
                self._size += length
            elif opcode:  # a whole message in one frame
                messages.append(self._checked(opcode, payload))
            else:  # the last fragment
                self._parts.append(payload)
                messages.append(self._checked(self._opcode, bytearray().join(self._parts)))
                self._opcode, self._parts, self._size = 0, [], 0
        if pos:
            del buf[:pos]
        return messages

    def _check_header(self, first: int, second: int, opcode: int, length: int) -> None:
        if first & 0x70:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set: no extension was negotiated")
        if not second & 0x80:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "a client's frames must be masked (RFC 6455 5.1)")
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
            if not first & 0x80 or length > _CONTROL_MAX:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "a control frame is one frame of at most 125 bytes")
            return
        if opcode > OP_BINARY:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if opcode and self._opcode:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "a new message began before the last fragment of the previous one")
        if not opcode and not self._opcode:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "a continuation frame with no message to continue")
        if self._size + length > self.max_size:
            raise FrameError(CLOSE_TOO_BIG, f"a message of more than {self.max_size} bytes (the server's "
                                            "--max-request-bytes)")

    @staticmethod
    def _checked(opcode: int, payload: bytearray) -> tuple[int, bytearray]:
        if opcode == OP_TEXT:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise FrameError(CLOSE_BAD_DATA, "a text message that is not UTF-8") from None
        return opcode, payload
