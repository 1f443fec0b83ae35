"""The WebSocket stream of ``lstminfer serve``: ``ws://HOST:PORT/v2/models/{m}/stream``, one connection, one stream.

After the upgrade the server sends one text frame, the header ``{"sequence_id", "model", "inputs",
"outputs", "binary_output"}`` (shapes as a binary frame carries them: time axis first as -1, batch
dropped). Then, frame by frame, in order:

* binary: one chunk of the model's single data input, little-endian C-order ``[T, features...]``;
  the reply is one binary frame, the chosen output (``?output=NAME``, default the first) ``[T, ...]``;
* text: a KServe v2 inference request body for one chunk (batch 1); the reply is the v2 response
  body, as a text frame (JSON tensors);
* a bad frame gets ``{"error": ...}`` as a text frame, and the stream's state is left as it was.

Closing the connection ends the sequence, unless it was attached with ``?sequence_id=ID`` (then it
stays open until ended or expired) or the server is shutting down (then it stays for ``--state-dir``
and a client may attach to it again after the restart). Refusals accept the upgrade, then close
with a code: 1008 missing or wrong token, 1013 no free slot or draining, 4404 unknown model or
sequence, or a model that cannot stream (it has no stream to attach to), 4400 a bad ``sequence_id``
or ``output`` in the URL; the close reason is the message. A protocol violation closes with its
RFC 6455 code (1002, 1007, 1009 above ``--max-request-bytes``).

aiohttp routes the upgrade request and answers refusals; an admitted stream's 101 is written here
and its socket handed to a ``StreamConnection`` (callbacks, no coroutine per frame: see that module).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from aiohttp import web

from .access import bearer_matches
from .batcher import ServeError
from .http_sequences import SequenceRequests
from .protocol import InferRequest, ProtocolError, TensorSpec, error_body, parse_infer_request
from .sequences import parse_sequence_id
from .stream_connection import StreamConnection
from .wsframes import OP_TEXT, server_frame

log = logging.getLogger("lstminfer.serve")

STREAM_ROUTE = "/v2/models/{model}/stream"
CLOSE_POLICY = 1008  # a missing or wrong token
CLOSE_TRY_AGAIN_LATER = 1013  # no free stream slot, or draining
CLOSE_GOING_AWAY = 1001  # the server shuts down
CLOSE_NOT_FOUND = 4404  # 4000 + the HTTP status, as the other refusals
FRESH_ID_BITS = 53  # a new stream's id stays exact as a JavaScript number (the header is JSON)
_REASON_BYTES = 123  # the most a close frame's reason may hold
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3: the accept key's suffix
_CLOSE_WAIT_S = 2.0  # how long a close waits for the client's close frame: shutdown takes seconds, not minutes


def is_stream_request(request: web.Request) -> bool:
    """A request for the stream route: its handler checks the token itself (it must close, not answer 401)."""
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical == STREAM_ROUTE


class StreamRefused(Exception):
    """Close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def close_code(error: ServeError | ProtocolError) -> int:
    """The close code of a refusal with an HTTP status: 503 -> 1013, 401 -> 1008, else 4000 + status."""
    return {503: CLOSE_TRY_AGAIN_LATER, 401: CLOSE_POLICY}.get(error.status, 4000 + error.status)


@dataclass(frozen=True)
class StreamLayout:
    """Where a model's data input and outputs keep their batch and time axes, for binary frames."""

    data_input: TensorSpec | None  # None: binary frames cannot be cut for this model (text frames only)
    features: tuple[int, ...]  # per-frame shape of the data input
    to_model_order: tuple[int, ...]  # permutes [batch, time, features...] into the input's own axes
    chunk_shape: tuple[int, ...] | None  # the input's shape (time -1, batch 1) when the frames' bytes are in its order
    frame_bytes: int  # bytes of one frame of the data input
    output_axes: dict[str, tuple[int | None, int | None]]  # output -> (batch axis, time axis), None: none
    header_inputs: list[dict]  # per-chunk shapes: time first as -1, batch dropped
    header_outputs: list[dict]

    def chunk(self, payload: bytes) -> np.ndarray:
        """The model's chunk (batch 1) from a binary frame; ProtocolError when the frame is not one."""
        spec = self.data_input
        if spec is None:
            raise ProtocolError(400, "binary frames need a model of one data input with a time axis and a fixed "
                                     "per-frame shape; send this model text frames (v2 inference requests)")
        frame_bytes = self.frame_bytes
        if not payload or len(payload) % frame_bytes:
            raise ProtocolError(400, f"a binary frame is T >= 1 frames of {spec.datatype} {list(self.features)} "
                                     f"({frame_bytes} bytes each), got {len(payload)} bytes")
        frames = np.frombuffer(payload, dtype=_wire(spec.dtype))
        if self.chunk_shape is not None:  # a batch of 1 before or after time moves no byte: a view
            return frames.reshape(self.chunk_shape)
        chunk = frames.reshape(1, len(payload) // frame_bytes, *self.features).transpose(self.to_model_order)
        return chunk if chunk.flags.c_contiguous else np.ascontiguousarray(chunk)

    def reply(self, name: str, value: Any) -> bytes:
        """The output ``name`` of a chunk as a binary frame: ``[T, ...]``, batch dropped, little-endian."""
        batch_axis, time_axis = self.output_axes[name]
        one = np.asarray(value)
        if _LITTLE and (time_axis is None or all(one.shape[i] == 1 for i in range(time_axis) if i != batch_axis)):
            return one.tobytes()  # time already leads the axes that are not the batch of 1: C order is [T, ...]
        if batch_axis is not None:
            one = np.take(one, 0, axis=batch_axis)
        if time_axis is not None:
            one = np.moveaxis(one, time_axis - (batch_axis is not None and time_axis > batch_axis), 0)
        return np.ascontiguousarray(one, dtype=_wire(one.dtype)).tobytes()

    def chunk_reader(self) -> Callable[[Any], np.ndarray]:
        """``chunk`` with its dtype and shape bound once, for the frames of one connection."""
        if self.data_input is None or self.chunk_shape is None:
            return self.chunk
        dtype, frame_bytes, checked, ndarray = _wire(self.data_input.dtype), self.frame_bytes, self.chunk, np.ndarray
        time_at = self.chunk_shape.index(-1)
        shapes: dict[int, tuple[int, ...]] = {}  # payload bytes -> the chunk's shape (a stream's chunks are mostly one size)

        def chunk(payload: Any) -> np.ndarray:
            size = len(payload)
            shape = shapes.get(size)
            if shape is None:
                if not size or size % frame_bytes:
                    return checked(payload)
                if len(shapes) >= 64:
                    shapes.clear()
                shape = shapes[size] = self.chunk_shape[:time_at] + (size // frame_bytes,) + self.chunk_shape[time_at + 1:]
            return ndarray(shape, dtype, payload)  # one array over the payload (frombuffer + reshape: two)
        return chunk

    def express_features(self, name: str) -> int | None:
        """Float32 values per frame when binary chunks may take the express lane with output ``name``
        replied (the frames' bytes in the input's own order, the reply the output's bytes as they
        lie); None: the Python path for every chunk."""
        spec = self.data_input
        if spec is None or self.chunk_shape is None or spec.dtype != np.float32 \
                or len(self.chunk_shape) != 3 or self.frame_bytes != 4 * self.chunk_shape[2]:
            return None
        if self.output_axes[name][0] is None or not self._reply_as_it_lies(name):
            return None
        return self.chunk_shape[2]

    def _reply_as_it_lies(self, name: str) -> bool:
        """Output ``name``'s bytes in C order are its reply: little-endian, and its time axis leads the
        axes that are not the batch of 1."""
        batch_axis, time_axis = self.output_axes[name]
        return _LITTLE and (time_axis is None or all(i == batch_axis for i in range(time_axis)))

    def reply_encoder(self, name: str) -> Callable[[Any], bytes]:
        """``reply`` of output ``name`` from a pool step's result (an array, or a dict of several)."""
        direct = self._reply_as_it_lies(name)
        ndarray, reply = np.ndarray, self.reply

        def encode(result: Any) -> bytes:
            value = result[name] if result.__class__ is dict else result
            if direct and value.__class__ is ndarray and value.dtype.isnative:
                return value.tobytes()  # time leads the axes that are not the batch of 1: C order is [T, ...]
            return reply(name, value)
        return encode

    def header(self, sid: Any, model: str, output: str) -> str:
        return json.dumps({"sequence_id": sid, "model": model, "inputs": self.header_inputs,
                           "outputs": self.header_outputs, "binary_output": output})


_LITTLE = sys.byteorder == "little"


def _wire(dtype: np.dtype) -> np.dtype:
    """The little-endian form of ``dtype``; on a little-endian machine the very same object (the pool's fast
    path checks the chunk's dtype by identity)."""
    return dtype if _LITTLE and dtype.byteorder != ">" else dtype.newbyteorder("<")


def _header_entry(spec: TensorSpec, batch_axis: int | None, time_axis: int | None) -> dict:
    rest = [d for i, d in enumerate(spec.shape) if i not in (batch_axis, time_axis)]
    return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *rest] if time_axis is not None else rest}


def stream_layout(served: Any, sequences: SequenceRequests) -> StreamLayout:
    """The layout of a streamable model (``served``: app's ServedModel), from its stream program's axes."""
    program = sequences.manager.pool._program  # the chunk axes have no public attribute; read, never changed
    in_specs = {s.name: s for s in served.inputs}
    out_specs = {s.name: s for s in served.outputs}
    header_inputs = [_header_entry(in_specs[n], program.batch_axes[n], program.time_axes[n])
                     for n in sequences.data_inputs]
    batch_axes = program.output_batch_axes()
    output_axes = {n: (batch_axes.get(n), program.output_time_axes.get(n)) for n in sequences.outputs}
    header_outputs = [_header_entry(out_specs[n], *output_axes[n]) for n in sequences.outputs]
    data_input, features, order, chunk_shape = None, (), (), None
    if len(sequences.data_inputs) == 1:
        spec = in_specs[sequences.data_inputs[0]]
        batch_axis, time_axis = program.batch_axes[spec.name], program.time_axes[spec.name]
        features = tuple(d for i, d in enumerate(spec.shape) if i not in (batch_axis, time_axis))
        if time_axis is not None and all(d >= 0 for d in features):
            data_input = spec
            following = iter(range(2, len(spec.shape)))  # source axes: 0 batch, 1 time, 2.. features in order
            order = tuple(0 if i == batch_axis else 1 if i == time_axis else next(following)
                          for i in range(len(spec.shape)))
            if all(i == batch_axis for i in range(time_axis)):  # time is the first axis but the batch's
                chunk_shape = tuple(1 if i == batch_axis else -1 if i == time_axis else d
                                    for i, d in enumerate(spec.shape))
    frame_bytes = int(np.prod(features, dtype=np.int64)) * data_input.dtype.itemsize if data_input else 0
    return StreamLayout(data_input, features, order, chunk_shape, frame_bytes, output_axes, header_inputs,
                        header_outputs)


class WebSocketStreams:
    """The stream endpoint of one server: ``install(app)`` adds the route and closes streams at shutdown."""

    def __init__(self, server: Any):  # app's InferenceServer (not imported: app imports this module)
        self.server = server
        self._auth = f"Bearer {server.options.token}".encode() if server.options.token else None
        self._layouts: dict[str, StreamLayout] = {}
        self._open: set[StreamConnection] = set()
        self._shutting_down = False

    def install(self, app: web.Application) -> None:
        app.router.add_get(STREAM_ROUTE, self.handle)
        app.on_shutdown.append(self._close_all)

    async def _close_all(self, app: web.Application) -> None:
        self._shutting_down = True  # sequences stay open: --state-dir saves them, clients attach after restart
        for connection in list(self._open):
            connection.close(CLOSE_GOING_AWAY, "the server is shutting down")
        await asyncio.gather(*(c.finished for c in list(self._open)), return_exceptions=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(timeout=_CLOSE_WAIT_S, compress=False)
        if not ws.can_prepare(request).ok:
            raise ProtocolError(400, f"{request.path} is a WebSocket endpoint: connect with a WebSocket client "
                                     "(ws://..., 'Upgrade: websocket')")
        try:
            name, sequences, layout, output = self._admit(request)
            sid, attached = self._open_sequence(request, sequences)
        except StreamRefused as e:  # refusals take aiohttp's own upgrade and close
            await ws.prepare(request)
            await ws.close(code=e.code, message=_reason(e.reason))
            return ws
        manager = sequences.manager
        try:
            connection = self._upgrade(request, sequences, layout, output, sid)
        except BaseException:
            self._forget(manager, sid, attached)
            raise
        self._open.add(connection)
        try:
            await connection.finished
        finally:
            self._open.discard(connection)
            if not connection.finished.done():  # this handler was cancelled (the server stops)
                connection.transport.abort()
            self._forget(manager, sid, attached)
        return web.Response()  # never written: the connection is gone (aiohttp's write fails quietly)

    def _forget(self, manager: Any, sid: Any, attached: bool) -> None:
        if attached or self._shutting_down:
            manager.release(sid)
        else:
            manager.end(sid, missing_ok=True)

    def _upgrade(self, request: web.Request, sequences: SequenceRequests, layout: StreamLayout, output: str,
                 sid: Any) -> StreamConnection:
        """The 101 answer and the header frame, written by hand, and the transport handed to a
        ``StreamConnection``: aiohttp's reader, queue and coroutines never see a frame of it.
        No await between the 101 and ``set_protocol``: a client sends its first frame only after
        the 101 (RFC 6455 4.1), so every byte after it reaches the connection."""
        transport = request.transport
        aiohttp_protocol = request.protocol
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away during the upgrade")
        metrics = self.server.metrics
        name = sequences.name

        def on_error(error: BaseException, received: int) -> tuple[int | None, str]:
            metrics.count_frame_error(received)
            if isinstance(error, (ProtocolError, ServeError)):
                if error.status in (404, 503):  # the sequence is gone, or the server drains: nothing more to step
                    return close_code(error), str(error)
                return None, str(error)
            log.error("stream %r of %s failed: %s: %s", sid, name, type(error).__name__, error)
            return None, f"internal error: {type(error).__name__}: {error}".splitlines()[0]

        async def on_text(payload: bytearray) -> bytes:
            body, _ = await sequences.infer(_sequence_request(payload, sid))
            return body

        connection = StreamConnection(
            transport, sequences.manager, sid, max_size=self.server.options.max_request_bytes,
            close_wait_s=_CLOSE_WAIT_S, on_binary=layout.chunk_reader(), on_reply=layout.reply_encoder(output), on_text=on_text,
            on_error=on_error, count_frame=metrics.count_frame, lost=aiohttp_protocol.connection_lost)
        features = layout.express_features(output)
        if features is not None and sequences.outputs == [output]:
            connection.express = sequences.manager.express_stream(
                sid, connection, transport.write, features, self.server.options.max_request_bytes, metrics.count_frames)
        key = request.headers["Sec-WebSocket-Key"].encode()  # can_prepare checked it
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                        + server_frame(OP_TEXT, layout.header(sid, name, output).encode()))
        early = getattr(aiohttp_protocol, "_message_tail", b"")  # bytes read past the request: none from a client
        transport.set_protocol(connection)                       # that waits for the 101, as it must
        transport.resume_reading()  # in case aiohttp had paused it
        if early:
            aiohttp_protocol._message_tail = b""
            connection.data_received(early)
        return connection

    def _admit(self, request: web.Request) -> tuple[str, SequenceRequests, StreamLayout, str]:
        if self._auth is not None:
            given = request.headers.get("Authorization", "").encode()
            if not bearer_matches(given, self._auth):
                raise StreamRefused(CLOSE_POLICY, "missing or wrong token: send 'Authorization: Bearer <token>'")
        name = request.match_info["model"]
        served = self.server.models.get(name)
        if served is None:
            raise StreamRefused(CLOSE_NOT_FOUND, f"unknown model '{name}' (serving: {', '.join(self.server.models)})")
        sequences = self.server.sequences.get(name)
        if sequences is None:
            raise StreamRefused(CLOSE_NOT_FOUND, f"model '{name}' cannot stream: use POST /v2/models/{name}/infer")
        layout = self._layouts.get(name)
        if layout is None:
            layout = self._layouts[name] = stream_layout(served, sequences)
        output = request.query.get("output", sequences.outputs[0])
        if output not in sequences.outputs:
            raise StreamRefused(4400, f"model '{name}' has no stream output '{output}' "
                                      f"(outputs: {', '.join(sequences.outputs)})")
        return name, sequences, layout, output

    def _open_sequence(self, request: web.Request, sequences: SequenceRequests) -> tuple[Any, bool]:
        """(sequence id, attached): the one named by ``?sequence_id=``, or a new one with a fresh id."""
        manager = sequences.manager
        try:
            text = request.query.get("sequence_id")
            if text is not None:
                sid = parse_sequence_id(text)
                manager.hold(sid)
                return sid, True
            sid = secrets.randbits(FRESH_ID_BITS)
            while sid in manager:
                sid = secrets.randbits(FRESH_ID_BITS)
            manager.start(sid)
            manager.hold(sid)
            return sid, False
        except ServeError as e:
            raise StreamRefused(close_code(e), str(e)) from None


def _reason(text: str) -> bytes:
    return text.encode()[:_REASON_BYTES].decode(errors="ignore").encode()  # cut whole characters only


def _sequence_request(text: bytes, sid: Any) -> InferRequest:
    """A text frame as a sequence request of this connection's sequence (no start or end: the connection owns them)."""
    request = parse_infer_request(text)
    params = request.parameters
    if params.get("sequence_id", sid) != sid or params.get("sequence_start") or params.get("sequence_end"):
        raise ProtocolError(400, f"this connection streams sequence {sid!r}: a text frame carries no other "
                                 "sequence_id and no sequence_start/sequence_end (close the connection to end it)")
    request.parameters = {**params, "sequence_id": sid}
    request.binary_outputs, request.binary_by_default = {}, False  # a text reply carries JSON tensors
    return request
