"""A small client for ``lstminfer serve``: the KServe v2 HTTP endpoints and the WebSocket stream, numpy in and out.

    from lstminfer.client import Client
    with Client("http://127.0.0.1:8000") as client:
        y = client.infer("adding_lstm", {"x": x})["y"]
        seq = client.sequence("adding_lstm")
        parts = [seq.step(chunk) for chunk in chunks]; seq.end()
        with client.stream("adding_lstm") as stream:     # WebSocket: one connection, one live stream
            reply = stream.send(chunk[0])                 # [T, features] in, [T, ...] out

``Client`` needs only the standard library and numpy (one kept-alive ``http.client`` connection);
``AsyncClient`` and the WebSocket stream need aiohttp (``pip install 'lstminfer[serve]'``), imported
only when used. Neither is thread-safe: one client per thread (or task).
"""
from __future__ import annotations

import asyncio
import http.client
import json
import random
import socket
import struct
import threading
from typing import Any, Mapping
from urllib.parse import quote, urlencode, urlsplit

import numpy as np

from .arguments import strict_keywords
from .errors import InvalidArgumentError, LstminferError

# Every endpoint the client calls, in one place: {m} the model, {sid} the sequence id (URL-quoted).
PATHS = {
    "live": "/v2/health/live",
    "ready": "/v2/health/ready",
    "server": "/v2",
    "model": "/v2/models/{m}",
    "config": "/v2/models/{m}/config",
    "infer": "/v2/models/{m}/infer",
    "state": "/v2/models/{m}/sequences/{sid}/state",  # GET the save() bytes, PUT them, DELETE ends the sequence
    "reset": "/v2/models/{m}/sequences/{sid}/reset",  # POST
    "stream": "/v2/models/{m}/stream",  # WebSocket
}
HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_TIMEOUT = 30.0
# WebSocket close codes the server refuses a stream with -> the HTTP status they stand for
_CLOSE_STATUS = {1008: 401, 1013: 503, 4404: 404}
_AIOHTTP_MISSING = ("the asyncio client and the WebSocket stream need aiohttp: "
                    "pip install 'lstminfer[serve]'")

_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64), "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16), "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_DATATYPE_NAMES = {dtype: name for name, dtype in _DATATYPES.items()}


class ServerError(LstminferError):
    """The server answered an error: ``status`` (HTTP, or what a WebSocket close code stands for) and its message."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds, when the server said (503 at --max-streams)


class ServerUnreachableError(LstminferError, ConnectionError):
    """No connection to the server (nothing listens there, wrong host or port)."""


# -- the v2 codec (client side) ---------------------------------------------------------

def _datatype(array: np.ndarray) -> str:
    if array.dtype.kind in "OUS":
        return "BYTES"
    name = _DATATYPE_NAMES.get(array.dtype.newbyteorder("="))
    if name is None:
        raise InvalidArgumentError(f"dtype {array.dtype} has no v2 datatype "
                                   f"(expected one of {', '.join(str(d) for d in _DATATYPES.values())} or strings)")
    return name


def _raw(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OUS":  # BYTES: each element a 4-byte little-endian length, then its bytes
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        return b"".join(struct.pack("<I", len(v)) + v for v in items)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_data(array: np.ndarray) -> list:
    if array.dtype.kind in "OUS":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    return array.reshape(-1).tolist()


def encode_request(inputs: Mapping[str, Any], outputs: list[str] | None = None, binary: bool = True,
                   parameters: dict | None = None) -> tuple[bytes, int | None]:
    """A v2 infer request body and, with ``binary``, its JSON header's length (binary tensor extension)."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidArgumentError(f"inputs must be a non-empty dict of name -> array, got {type(inputs).__name__}")
    tensors, chunks = [], []
    for name, value in inputs.items():
        array = np.asarray(value)
        tensor: dict[str, Any] = {"name": name, "datatype": _datatype(array), "shape": list(array.shape)}
        if binary:
            raw = _raw(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _json_data(array)
        tensors.append(tensor)
    body: dict[str, Any] = {"inputs": tensors}
    params = dict(parameters or {})
    if binary:
        params["binary_data_output"] = True
    if params:
        body["parameters"] = params
    if outputs is not None:
        body["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    header = json.dumps(body, separators=(",", ":")).encode()
    if not binary:
        return header, None
    return b"".join([header, *chunks]), len(header)


def decode_response(body: bytes, header_length: int | None = None) -> dict[str, np.ndarray]:
    """A v2 infer response body (JSON or binary tensors) -> {output name: array}."""
    header = body if header_length is None else body[:header_length]
    try:
        response = json.loads(header)
        tensors = response["outputs"]
    except (ValueError, KeyError, TypeError) as e:
        raise ServerError(502, f"the server's response is not a v2 infer response: {e}") from None
    result, offset = {}, header_length or 0
    for tensor in tensors:
        name, datatype, shape = tensor["name"], tensor["datatype"], tuple(tensor["shape"])
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            dtype = object if datatype == "BYTES" else _DATATYPES[datatype]
            result[name] = np.array(tensor["data"], dtype=dtype).reshape(shape)
            continue
        raw = body[offset:offset + size]
        offset += size
        if datatype == "BYTES":
            result[name] = _bytes_items(raw).reshape(shape)
        else:
            result[name] = np.frombuffer(raw, dtype=_DATATYPES[datatype].newbyteorder("<")).reshape(shape).copy()
    return result


def _bytes_items(raw: bytes) -> np.ndarray:
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip()[:500] or "(empty body)"


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _path(kind: str, model: str = "", sid: Any = None) -> str:
    return PATHS[kind].format(m=quote(model, safe=""), sid=quote(str(sid), safe=""))


def _new_sequence_id() -> int:
    """A random id (63 bits: fits every server's unsigned 64-bit id and JSON's integers in most readers)."""
    return random.getrandbits(63) or 1


def _split_url(url: str) -> tuple[str, str, int, str]:
    """``http://host:port[/prefix]`` -> (scheme, host, port, prefix); no scheme means http."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(f"server URL must look like http://HOST:PORT, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


# -- sync HTTP --------------------------------------------------------------------------

class Client:
    """The v2 HTTP endpoints of one server over one kept-alive connection (standard library only)."""

    @strict_keywords
    def __init__(self, url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._scheme, self._host, self._port, self._prefix = _split_url(self.url)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._connection: http.client.HTTPConnection | None = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=self.timeout)
            try:
                connection.connect()
            except OSError as e:
                raise ServerUnreachableError(f"cannot connect to {self.url}: {e}") from e
            # small requests back to back: Nagle's algorithm would hold a request's last segment for an ACK
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connection = connection
        return self._connection

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None) -> tuple[int, dict, bytes]:
        """(status, headers, body); a kept-alive connection the server closed while idle is reopened once."""
        all_headers = {**self._headers, **(headers or {})}
        while True:
            reused = self._connection is not None
            connection = self._connect()
            try:
                connection.request(method, self._prefix + path, body=body, headers=all_headers)
                response = connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if not reused:  # a fresh connection that fails is the server's answer, not a stale socket
                    raise
                continue
            except BaseException:
                self.close()  # a half-read response would poison the next request
                raise
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[dict, bytes]:
        status, got_headers, data = self._request(method, path, body, headers)
        if status >= 400:
            raise ServerError(status, _error_message(data), _retry_after(got_headers.get("retry-after")))
        return got_headers, data

    def _ok(self, path: str) -> bool:
        return self._request("GET", path)[0] == 200

    def live(self) -> bool:
        return self._ok(PATHS["live"])

    def ready(self) -> bool:
        return self._ok(PATHS["ready"])

    def metadata(self) -> dict:
        return json.loads(self._call("GET", PATHS["server"])[1])

    def model_metadata(self, model: str) -> dict:
        return json.loads(self._call("GET", _path("model", model))[1])

    def config(self, model: str) -> dict:
        return json.loads(self._call("GET", _path("config", model))[1])

    def infer(self, model: str, inputs: Mapping[str, Any], outputs: list[str] | None = None, binary: bool = True,
              parameters: dict | None = None) -> dict[str, np.ndarray]:
        """One v2 inference: {input name: array} in the model's own shapes -> {output name: array}."""
        body, header_length = encode_request(inputs, outputs, binary, parameters)
        headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
        got_headers, data = self._call("POST", _path("infer", model), body, headers)
        length = got_headers.get(HEADER_LENGTH.lower())
        return decode_response(data, int(length) if length is not None else None)

    def sequence(self, model: str, sid: int | str | None = None, input: str | None = None) -> "SequenceClient":
        """A sequence (v2 sequence extension) on the server; ``sid`` None picks a random id."""
        return SequenceClient(self, model, _new_sequence_id() if sid is None else sid, input)

    def get_state(self, model: str, sid: int | str) -> bytes:
        """The sequence's state as the bytes ``StreamPool.save`` writes."""
        return self._call("GET", _path("state", model, sid))[1]

    def put_state(self, model: str, sid: int | str, blob: bytes) -> None:
        """Create or overwrite sequence ``sid`` from ``get_state`` bytes."""
        self._call("PUT", _path("state", model, sid), bytes(blob), {"Content-Type": "application/octet-stream"})

    def delete(self, model: str, sid: int | str) -> None:
        """End sequence ``sid`` (its slot is freed)."""
        self._call("DELETE", _path("state", model, sid))

    def reset(self, model: str, sid: int | str) -> None:
        """Zero sequence ``sid``'s state; it stays open."""
        self._call("POST", _path("reset", model, sid))

    def stream(self, model: str, sequence_id: int | str | None = None, output: str | None = None) -> "SyncStream":
        """The WebSocket stream, driven from this thread (a private event loop runs it in another; needs aiohttp)."""
        return SyncStream(self.url, model, sequence_id, output, self.token, self.timeout)


class SequenceClient:
    """One sequence over v2 HTTP requests: ``step`` sends a chunk (``sequence_start`` on the first), ``end`` ends it.

    A chunk is an array for the data input (``input``, default the model's first input) or a dict
    {input name: array}, in the model's own shapes with batch 1. An array in gives the first output's
    array back; a dict in gives {output name: array}."""

    def __init__(self, client: Client | "AsyncClient", model: str, sid: int | str, input: str | None = None):
        self.client = client
        self.model = model
        self.sequence_id = sid
        self.input = input
        self.started = False
        self.ended = False

    def _prepare(self, chunk: Any, start: bool | None, end: bool) -> tuple[dict, dict, bool]:
        if self.ended:
            raise InvalidArgumentError(f"sequence {self.sequence_id!r} has ended; start a new one")
        start = not self.started if start is None else start
        params = {"sequence_id": self.sequence_id, "sequence_start": start, "sequence_end": end}
        if isinstance(chunk, Mapping):
            return dict(chunk), params, False
        return {self.input: chunk}, params, True

    def _finish(self, outputs: dict, params: dict, single: bool) -> Any:
        self.started = True
        self.ended = params["sequence_end"]
        return next(iter(outputs.values())) if single else outputs

    def _input_name(self, metadata: dict) -> str:
        return metadata["inputs"][0]["name"]

    def step(self, chunk: Any, start: bool | None = None, end: bool = False, outputs: list[str] | None = None):
        """One chunk; ``start`` defaults to True on the first step only; ``end`` ends the sequence after it."""
        if self.input is None and not isinstance(chunk, Mapping):
            self.input = self._input_name(self.client.model_metadata(self.model))
        feeds, params, single = self._prepare(chunk, start, end)
        return self._finish(self.client.infer(self.model, feeds, outputs, parameters=params), params, single)

    def end(self) -> None:
        """End the sequence on the server (frees its slot)."""
        if not self.ended:
            self.ended = True
            self.client.delete(self.model, self.sequence_id)


class AsyncSequenceClient(SequenceClient):
    """``SequenceClient`` over ``AsyncClient``: ``await step(...)``, ``await end()``."""

    async def step(self, chunk: Any, start: bool | None = None, end: bool = False, outputs: list[str] | None = None):
        if self.input is None and not isinstance(chunk, Mapping):
            self.input = self._input_name(await self.client.model_metadata(self.model))
        feeds, params, single = self._prepare(chunk, start, end)
        return self._finish(await self.client.infer(self.model, feeds, outputs, parameters=params), params, single)

    async def end(self) -> None:
        if not self.ended:
            self.ended = True
            await self.client.delete(self.model, self.sequence_id)


# -- asyncio (aiohttp) ------------------------------------------------------------------

def _aiohttp():
    try:
        import aiohttp
    except ImportError:
        raise ImportError(_AIOHTTP_MISSING) from None
    return aiohttp


class AsyncClient:
    """``Client``'s methods as coroutines over one aiohttp session, and ``stream`` (the WebSocket)."""

    @strict_keywords
    def __init__(self, url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self._aiohttp = _aiohttp()
        _split_url(url)  # a bad URL fails here, not at the first request
        self.url = (url if "://" in url else "http://" + url).rstrip("/")
        self.token = token
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self):
        if self._session is None:  # made in a coroutine: aiohttp binds it to the running loop
            self._session = self._aiohttp.ClientSession(
                headers=self._headers, timeout=self._aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def _request(self, method: str, path: str, body: bytes | None = None,
                       headers: dict | None = None) -> tuple[int, dict, bytes]:
        async with self._open_session().request(method, self.url + path, data=body, headers=headers) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read()

    async def _call(self, method: str, path: str, body: bytes | None = None,
                    headers: dict | None = None) -> tuple[dict, bytes]:
        status, got_headers, data = await self._request(method, path, body, headers)
        if status >= 400:
            raise ServerError(status, _error_message(data), _retry_after(got_headers.get("retry-after")))
        return got_headers, data

    async def live(self) -> bool:
        return (await self._request("GET", PATHS["live"]))[0] == 200

    async def ready(self) -> bool:
        return (await self._request("GET", PATHS["ready"]))[0] == 200

    async def metadata(self) -> dict:
        return json.loads((await self._call("GET", PATHS["server"]))[1])

    async def model_metadata(self, model: str) -> dict:
        return json.loads((await self._call("GET", _path("model", model)))[1])

    async def config(self, model: str) -> dict:
        return json.loads((await self._call("GET", _path("config", model)))[1])

    async def infer(self, model: str, inputs: Mapping[str, Any], outputs: list[str] | None = None,
                    binary: bool = True, parameters: dict | None = None) -> dict[str, np.ndarray]:
        body, header_length = encode_request(inputs, outputs, binary, parameters)
        headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
        got_headers, data = await self._call("POST", _path("infer", model), body, headers)
        length = got_headers.get(HEADER_LENGTH.lower())
        return decode_response(data, int(length) if length is not None else None)

    def sequence(self, model: str, sid: int | str | None = None, input: str | None = None) -> AsyncSequenceClient:
        return AsyncSequenceClient(self, model, _new_sequence_id() if sid is None else sid, input)

    async def get_state(self, model: str, sid: int | str) -> bytes:
        return (await self._call("GET", _path("state", model, sid)))[1]

    async def put_state(self, model: str, sid: int | str, blob: bytes) -> None:
        await self._call("PUT", _path("state", model, sid), bytes(blob), {"Content-Type": "application/octet-stream"})

    async def delete(self, model: str, sid: int | str) -> None:
        await self._call("DELETE", _path("state", model, sid))

    async def reset(self, model: str, sid: int | str) -> None:
        await self._call("POST", _path("reset", model, sid))

    def stream(self, model: str, sequence_id: int | str | None = None, output: str | None = None) -> "Stream":
        """``async with client.stream(m) as s: y = await s.send(chunk)``: one WebSocket, one live stream."""
        return Stream(self._open_session(), self.url, model, sequence_id, output, timeout=self.timeout)


# -- the WebSocket stream ------------------------------------------------------------

def _ws_url(url: str, model: str, sequence_id: Any, output: str | None) -> str:
    query = {k: v for k, v in (("sequence_id", sequence_id), ("output", output)) if v is not None}
    ws = "wss" + url[5:] if url.startswith("https") else "ws" + url[4:]
    return ws + _path("stream", model) + ("?" + urlencode(query) if query else "")


class Stream:
    """One WebSocket stream (async context manager): ``send`` a chunk, get the chosen output's chunk back.

    ``sequence_id``, ``model``, ``inputs`` and ``outputs`` come from the server's hello frame
    (per-chunk shapes: batch dropped, time as -1)."""

    def __init__(self, session, url: str, model: str, sequence_id: Any = None, output: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT):
        self._session = session
        self._timeout = timeout  # seconds to wait for a reply (None: forever)
        self._url = _ws_url(url, model, sequence_id, output)
        self._wanted_output = output
        self._ws = None
        self._lock = asyncio.Lock()  # one chunk in flight: replies pair with their chunks
        self.sequence_id: Any = sequence_id
        self.model = model
        self.inputs: list[dict] = []
        self.outputs: list[dict] = []

    async def __aenter__(self) -> "Stream":
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def open(self) -> None:
        aiohttp = _aiohttp()
        try:
            self._ws = await self._session.ws_connect(self._url, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as e:
            raise ServerError(e.status, f"WebSocket refused: {e.message}") from None
        hello = await self._receive(aiohttp.WSMsgType.TEXT)
        self.sequence_id = hello.get("sequence_id", self.sequence_id)
        self.model = hello.get("model", self.model)
        self.inputs, self.outputs = list(hello.get("inputs", [])), list(hello.get("outputs", []))
        if not self.inputs or not self.outputs:
            await self.close()
            raise ServerError(502, f"the server's hello frame has no inputs or outputs: {hello}")

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    @property
    def input(self) -> dict:
        """The data input a binary frame carries (the hello's first)."""
        return self.inputs[0]

    @property
    def output(self) -> dict:
        """The output binary replies carry: the one asked for, else the hello's first."""
        for spec in self.outputs:
            if spec["name"] == self._wanted_output:
                return spec
        return self.outputs[0]

    async def _receive(self, kind):
        """The next frame's payload (text: decoded JSON); a close or an {"error"} frame raises ServerError."""
        aiohttp = _aiohttp()
        message = await self._ws.receive(timeout=self._timeout)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            code = self._ws.close_code or (message.data if isinstance(message.data, int) else None)
            reason = message.extra or "no reason given"
            self._ws = None
            raise ServerError(_CLOSE_STATUS.get(code, 500), f"the server closed the stream (code {code}): {reason}")
        if message.type == aiohttp.WSMsgType.ERROR:
            raise ServerError(500, f"WebSocket error: {message.data}")
        if message.type == aiohttp.WSMsgType.TEXT:
            try:
                payload = json.loads(message.data)
            except ValueError:
                raise ServerError(502, f"the server sent a text frame that is not JSON: {message.data[:200]!r}") from None
            if isinstance(payload, dict) and "error" in payload:
                raise ServerError(int(payload.get("status", 400)), str(payload["error"]))
            if kind == aiohttp.WSMsgType.TEXT:
                return payload
            raise ServerError(502, f"expected a binary reply, the server sent text: {message.data[:200]!r}")
        if kind == aiohttp.WSMsgType.BINARY:
            return message.data
        raise ServerError(502, f"expected a text frame, the server sent {message.type.name}")

    def _check_open(self) -> None:
        if self._ws is None:
            raise InvalidArgumentError("the stream is not open: use 'async with client.stream(...)' (or open())")

    def chunk_bytes(self, chunk: Any) -> bytes:
        """A chunk ``[T, features...]`` (or with a batch axis of 1) as a binary frame's bytes, checked."""
        spec = self.input
        expected = [int(d) for d in spec["shape"]]
        array = np.asarray(chunk)
        if array.ndim == len(expected) + 1 and 1 in array.shape[:2]:
            array = array.reshape(array.shape[:array.shape.index(1)] + array.shape[array.shape.index(1) + 1:])
        fits = array.ndim == len(expected) and all(e < 0 or e == g for e, g in zip(expected, array.shape))
        if not fits or array.size == 0:
            raise InvalidArgumentError(f"input '{spec['name']}': a chunk has shape {expected} (-1: any, at least 1 "
                                       f"time step; a batch axis of 1 may be added), got {list(np.shape(chunk))}")
        dtype = _DATATYPES.get(spec["datatype"])
        if dtype is None:
            raise InvalidArgumentError(f"input '{spec['name']}' is {spec['datatype']}: send it with request()")
        if not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise InvalidArgumentError(f"input '{spec['name']}' is {spec['datatype']} ({dtype}), got {array.dtype}")
        return np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()

    def reply_array(self, data: bytes) -> np.ndarray:
        """A binary reply as the output's ``[T, ...]`` array."""
        spec = self.output
        dtype = _DATATYPES[spec["datatype"]].newbyteorder("<")
        flat = np.frombuffer(data, dtype=dtype).copy()
        shape = [int(d) for d in spec["shape"]]
        return flat.reshape(shape) if shape.count(-1) <= 1 else flat

    async def send(self, chunk: Any) -> np.ndarray:
        """One chunk of the data input -> the chosen output for it (``[T, ...]``)."""
        self._check_open()
        data = self.chunk_bytes(chunk)
        async with self._lock:
            await self._ws.send_bytes(data)
            reply = await self._receive(_aiohttp().WSMsgType.BINARY)
        return self.reply_array(reply)

    async def request(self, inputs: Mapping[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """One chunk as a v2 request body (tensors in the model's own shapes, batch 1) -> {output: array}."""
        self._check_open()
        body, _ = encode_request(inputs, outputs, binary=False)
        async with self._lock:
            await self._ws.send_str(body.decode())
            reply = await self._receive(_aiohttp().WSMsgType.TEXT)
        return decode_response(json.dumps(reply).encode())


class SyncStream:
    """``Stream`` for synchronous code: a private event loop in a daemon thread runs it.

    Use as ``with client.stream(m) as s: y = s.send(chunk)``; ``close()`` ends the connection and the loop."""

    def __init__(self, url: str, model: str, sequence_id: Any, output: str | None, token: str | None,
                 timeout: float):
        _aiohttp()
        self._args = (url, model, sequence_id, output)
        self._token, self._timeout = token, timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: AsyncClient | None = None
        self._stream: Stream | None = None

    def __enter__(self) -> "SyncStream":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, coroutine):
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(self._timeout + 5)  # the stream's own timeout fires first; this one is the backstop
        except TimeoutError:
            future.cancel()
            raise

    def open(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lstminfer-client-stream", daemon=True)
        self._thread.start()
        url, model, sequence_id, output = self._args

        async def connect() -> Stream:
            self._client = AsyncClient(url, self._token, self._timeout)
            stream = self._client.stream(model, sequence_id, output)
            await stream.open()
            return stream

        try:
            self._stream = self._run(connect())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._loop is None:
            return

        async def shut() -> None:
            if self._stream is not None:
                await self._stream.close()
            if self._client is not None:
                await self._client.close()

        try:
            self._run(shut())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
            self._loop = self._thread = self._stream = self._client = None

    def _open_stream(self) -> Stream:
        if self._stream is None:
            raise InvalidArgumentError("the stream is not open: use 'with client.stream(...)' (or open())")
        return self._stream

    @property
    def sequence_id(self) -> Any:
        return self._open_stream().sequence_id

    @property
    def inputs(self) -> list[dict]:
        return self._open_stream().inputs

    @property
    def outputs(self) -> list[dict]:
        return self._open_stream().outputs

    def send(self, chunk: Any) -> np.ndarray:
        return self._run(self._open_stream().send(chunk))

    def request(self, inputs: Mapping[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        return self._run(self._open_stream().request(inputs, outputs))
