"""One WebSocket stream's connection after its upgrade: frames in, the batcher's replies out, callbacks only.

The transport's ``data_received`` parses frames (``wsframes.MessageReader``); a binary chunk is
queued to the sequence's batcher with this connection as its waiter, and the batcher's
``set_result`` writes the reply frame straight to the transport: no task, future or coroutine
per chunk (with aiohttp's ``async for message in ws`` a chunk cost two task wake-ups and
~30 us of Python; benchmarks/RESULTS.md). Messages are handled strictly in order, one at a
time, as the coroutine loop did: a message waits in ``_queue`` while the one before it is
in a step, and a text frame (a v2 request body) runs as one task. Reading pauses while too
many messages wait or while the transport's write buffer is full.

The usual read, one whole binary frame of float32 frames with no message waiting, goes to the
connection's ``express`` stream instead (``_runtime.ExpressStream``, when the model allows it):
unmasked and queued in C, stepped with the other streams' chunks and answered from C, with no
Python object per chunk. Messages that follow its chunks wait in ``_queue`` until it calls ``_next``.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable

from .protocol import error_body
from .wsframes import (CLOSE_NORMAL, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameError, MessageReader,
                       close_payload, frame_head, parse_close, server_frame)

log = logging.getLogger("lstminfer.serve")

_PAUSE_READING_AT = 64  # messages waiting: stop reading the socket (the client sends faster than we step)
_RESUME_READING_AT = 8


class StreamConnection(asyncio.Protocol):
    """The protocol of one upgraded stream connection (``transport.set_protocol``); see the module doc.

    ``on_binary(payload) -> chunk`` cuts a binary frame into the model's chunk, ``on_reply(output)
    -> bytes`` makes the reply's payload, ``on_text(payload) -> awaitable bytes`` answers a text
    frame, ``on_error(error, received) -> (close code or None, message)`` says how a frame's error
    is answered (None: an error frame, the stream goes on). ``finished`` resolves once the
    connection is gone; ``lost`` is called with the transport's error then (aiohttp's protocol
    learns of it so).
    """

    def __init__(self, transport: asyncio.Transport, manager: Any, sid: Any, *, max_size: int,
                 close_wait_s: float, on_binary: Callable, on_reply: Callable, on_text: Callable,
                 on_error: Callable, count_frame: Callable, lost: Callable[[BaseException | None], None]):
        self.transport = transport
        self._submit = manager.submit
        self.sid = sid
        self._reader = MessageReader(max_size)
        self._close_wait_s = close_wait_s
        self._on_binary, self._on_reply, self._on_text, self._on_error = on_binary, on_reply, on_text, on_error
        self._count_frame = count_frame
        self._lost = lost
        self._queue: deque[tuple[int, bytearray]] = deque()
        self._in_flight = 0  # bytes of the message being answered (0: none)
        self._busy = False
        self._gone = False  # the transport is closed or lost: nothing more is written
        self._closing = False  # a close frame was sent: only the client's close frame matters now
        self._reading_paused = False
        self._writing_paused = False
        self._abort_handle: asyncio.TimerHandle | None = None
        self._reply_size, self._reply_head = -1, b""
        self.finished = asyncio.get_running_loop().create_future()
        self.express: Any = None  # its _runtime.ExpressStream: whole binary chunks queued and answered in C
        # (while it holds chunks, the messages after them wait in _queue; it calls _next when it is empty)

    # -- asyncio.Protocol ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        queue = self._queue
        if not (self._busy or queue or self._closing or self._writing_paused):
            express = self.express
            if express is not None and express.take(data):  # the usual read, queued in C: its reply comes from C
                return
            payload = self._reader.whole_binary(data)
            if payload is not None:  # the usual read: one whole chunk, nothing waiting: straight to the batcher
                self._step_chunk(payload)
                return
        try:
            messages = self._reader.feed(data)
        except FrameError as e:
            self.close(e.code, e.reason)
            return
        for message in messages:
            opcode = message[0]
            if opcode == OP_PING:
                if not self._closing:
                    self.transport.write(server_frame(OP_PONG, message[1]))
            elif opcode == OP_CLOSE and self._closing:  # the client's answer to our close
                self._shut()
                return
            elif opcode != OP_PONG and not self._closing:  # pongs are ignored
                queue.append(message)
        if queue and not self._busy:
            self._next()
        if len(queue) >= _PAUSE_READING_AT and not self._reading_paused and not self._gone:
            self._reading_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._gone = True
        if self.express is not None:
            self.express.gone = True
        self._queue.clear()
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        if not self.finished.done():
            self.finished.set_result(None)
        self._lost(exc)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self._busy:
            self._next()

    # -- the waiter of the chunk in flight (Batcher.submit) -------------------------------
    def done(self) -> bool:
        return self._gone  # a chunk of a connection gone is dropped before its step

    def set_result(self, output: Any) -> None:
        self._busy = False
        if not (self._gone or self._closing):  # nothing follows a close frame (RFC 6455 5.5.1)
            try:
                reply = self._on_reply(output)
            except Exception as e:  # a bug, not the client's fault: the stream goes on
                self._answer_error(e)
            else:
                size = len(reply)
                if size != self._reply_size:  # replies of one stream are mostly one size: its header, once
                    self._reply_size, self._reply_head = size, frame_head(OP_BINARY, size)
                self.transport.write(self._reply_head + reply)
                self._count_frame(self._in_flight, size)
        if self._queue:
            self._next()

    def express_declined(self, payload: bytes) -> Any:
        """The model's chunk of this connection's express chunk ``payload``, handed back by its lane: the
        batcher steps it the Python way and answers it here (``set_result``/``set_exception``)."""
        self._in_flight = len(payload)
        return self._on_binary(payload)

    def express_failed(self, received: int, error: BaseException) -> None:
        """The express lane's chunk of ``received`` bytes was cancelled with ``error`` (its sequence ended)."""
        self._in_flight = received
        self.set_exception(error)

    def set_exception(self, error: BaseException) -> None:
        self._busy = False
        if not (self._gone or self._closing):
            self._answer_error(error)
        if self._queue:
            self._next()

    # -- closing ------------------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        """Send a close frame; the connection ends when the client answers, or after ``close_wait_s``."""
        if self._gone or self._closing:
            return
        self._closing = True
        self._queue.clear()
        if self.express is not None:  # nothing follows a close frame, not even a reply already stepped
            self.express.gone = True
        self.transport.write(server_frame(OP_CLOSE, close_payload(code, _reason(reason))))
        self._abort_handle = asyncio.get_running_loop().call_later(self._close_wait_s, self.transport.abort)
        if self._reading_paused:  # the client's close frame must still be read
            self._reading_paused = False
            self.transport.resume_reading()

    def _shut(self) -> None:
        self._gone = True
        if self.express is not None:
            self.express.gone = True
        self._queue.clear()
        self.transport.close()

    # -- messages, one at a time ------------------------------------------------------------
    def _next(self) -> None:
        queue = self._queue
        express = self.express
        while queue and not self._busy and not self._writing_paused and not self._gone \
                and (express is None or not express.busy):  # the express lane's chunks came first
            opcode, payload = queue.popleft()
            self._in_flight = len(payload)
            if opcode == OP_BINARY:
                self._step_chunk(payload)
            elif opcode == OP_TEXT:
                self._busy = True
                asyncio.get_running_loop().create_task(self._text(payload))
            else:  # the client's close, after every message before it was answered
                try:
                    code, _ = parse_close(payload)
                except FrameError as e:
                    code = e.code
                self.transport.write(server_frame(OP_CLOSE, close_payload(code or CLOSE_NORMAL)))
                self._shut()
                return
        if self._reading_paused and len(queue) <= _RESUME_READING_AT and not self._gone:
            self._reading_paused = False
            self.transport.resume_reading()

    def _step_chunk(self, payload: bytearray) -> None:
        """Queue a binary message's chunk with the batcher (busy until its reply comes), or answer its error."""
        self._in_flight = len(payload)
        try:
            self._submit(self.sid, self._on_binary(payload), self)
        except Exception as e:
            self._answer_error(e)
        else:
            self._busy = True

    async def _text(self, payload: bytearray) -> None:
        try:
            body = await self._on_text(payload)
        except Exception as e:
            if not (self._gone or self._closing):
                self._answer_error(e)
        else:
            if not (self._gone or self._closing):
                self.transport.write(server_frame(OP_TEXT, body))  # the body is JSON: ASCII, so UTF-8
                self._count_frame(len(payload), len(body))
        self._busy = False
        if self._queue:
            self._next()

    def _answer_error(self, error: BaseException) -> None:
        code, message = self._on_error(error, self._in_flight)
        if code is not None:
            self.close(code, message)
        else:
            self.transport.write(server_frame(OP_TEXT, error_body(message)))


def _reason(text: str) -> bytes:
    return text.encode()[:123].decode(errors="ignore").encode()  # a close frame's reason: whole characters only
