"""``Ingress``: the HTTP API and WebSocket stream of ``lstminfer serve``, on Ray Serve, forwarding to ``StreamOwner``.

Same paths, bodies, status codes, error messages and metric names as ``lstminfer serve`` (the codec is
``serve.protocol``'s). Stateless work goes to any owner replica; a sequence's work carries its routing
key, so the consistent-hash router sends it to the one replica that owns it. The ingress sends a
sequence's operations strictly one after another (each waits for the reply before the next is
forwarded), so a stream keeps its order while it moves between replicas.

Two answers only this application gives (the replicas can die): a sequence whose replica died without
a checkpoint is ``404`` "was lost" (a WebSocket closes 4404); with checkpoints it is ``409`` with
``"resumed_after_chunk": N`` next to ``"error"`` (a WebSocket gets that as a text frame and goes on):
the chunk was not stepped, send again from chunk N + 1.
"""

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from .. import __version__
from ..serve.access import bearer_matches
from ..serve.app import EXTENSIONS, HEADER_LENGTH, ServeOptions, load_models
from ..serve.batcher import ServeError
from ..serve.protocol import (ProtocolError, error_body, parse_header_length, parse_infer_request,
                              served_model, server_metadata)
from ..serve.sequences import BadSequenceIdError, check_sequence_id, parse_sequence_id
from ..serve.websocket import close_code
from .metrics import CONTENT_TYPE_LATEST, RayMetrics, endpoint_kind
from .moves import routing_key
from .owner import fresh_id

log = logging.getLogger("lstminfer.ray")

_JSON = "application/json"
_REASON_BYTES = 123
_RETRIES = 20  # a replica draining or dying: the router needs a moment to see the new replica set
_RETRY_S = 0.1
_HANDLES_KEPT = 65_536  # routed handles kept, oldest dropped first
_COUNTS_EVERY_S = 1.0

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


class _Refused(Exception):
    def __init__(self, status: int, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra or {}


def _error(status: int, message: str, extra: dict | None = None, headers: dict | None = None) -> Response:
    extra = dict(extra or {})
    retry = extra.pop("retry_after", None)
    extra.pop("retry", None)
    if retry:
        headers = {**(headers or {}), "Retry-After": str(retry)}
    body = error_body(message) if not extra else json.dumps({"error": message, **extra}).encode()
    return Response(body, status_code=status, media_type=_JSON, headers=headers)


@app.exception_handler(StarletteHTTPException)
async def _http_exception(request: Request, e: StarletteHTTPException) -> Response:
    if e.status_code == 404:
        return _error(404, f"no endpoint {request.method} {request.url.path}")
    if e.status_code == 405:
        allow = (e.headers or {}).get("Allow", "")
        return _error(405, f"{request.method} is not allowed on {request.url.path} (allowed: {allow.replace(',', ', ')})",
                      headers={"Allow": allow})
    return _error(e.status_code, str(e.detail))


async def _empty(request: Request) -> Response:
    return Response(b"")


async def _close(ws: WebSocket, status: int, message: str) -> None:
    try:
        await ws.close(code=close_code(ProtocolError(status, message)), reason=message.encode()[:_REASON_BYTES].decode(errors="ignore"))
    except RuntimeError:
        pass  # the client closed first


@serve.ingress(app)
class Ingress:
    def __init__(self, model_specs: list[str], options: dict, owner, directory):
        self.options = ServeOptions(**options)
        self.models = load_models(model_specs, self.options)
        self.owner = owner
        self.directory = directory
        self.metrics = RayMetrics(list(self.models))
        self._auth = f"Bearer {self.options.token}".encode() if self.options.token else None
        self._server_body = json.dumps(server_metadata("lstminfer", __version__, EXTENSIONS)).encode()
        self._locks: dict[str, asyncio.Lock] = {}
        self._handles: dict[str, Any] = {}
        self.me = serve.get_replica_context().replica_id.unique_id
        self._counts_task: asyncio.Task | None = None
        self._stream_outputs = {name: list(served.model.stream_pool(1).output_names)
                                for name, served in self.models.items() if served.streamable}

    # -- forwarding -------------------------------------------------------------------
    async def _call(self, method: str, key: str | None, *args) -> Any:
        """``StreamOwner.method(*args)`` on the owner of ``key`` (None: any replica), retried while its
        replica drains or dies; the answer's payload, or ``_Refused``."""
        import ray.exceptions

        handle = self.owner if key is None else self._handle(key)
        for attempt in range(_RETRIES):
            last = attempt == _RETRIES - 1
            try:
                answer = await getattr(handle, method).remote(*args)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                if last:
                    raise _Refused(503, f"the replica did not answer: {type(e).__name__}", {"retry_after": 1})
                await asyncio.sleep(_RETRY_S)
                continue
            if answer[0] == "ok":
                return answer[1]
            _, status, message, extra = answer
            if extra.get("retry") and not last:
                await asyncio.sleep(_RETRY_S)
                continue
            raise _Refused(status, message, extra)

    def _handle(self, key: str):
        """The owner handle routed by ``key``, kept while its sequence is busy (``options()`` costs a handle)."""
        handle = self._handles.get(key)
        if handle is None:
            if len(self._handles) >= _HANDLES_KEPT:
                self._handles.pop(next(iter(self._handles)))
            handle = self._handles[key] = self.owner.options(session_id=key)
        return handle

    async def _sequence_call(self, model: str, sid: Any, method: str, *args) -> Any:
        """One operation of a sequence, after the previous one of that sequence returned."""
        key = routing_key(model, sid)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        try:
            async with lock:
                return await self._call(method, key, model, sid, *args)
        finally:
            if not lock.locked() and not lock._waiters:  # noqa: SLF001
                self._locks.pop(key, None)

    # -- the guard: token, errors, metrics --------------------------------------------------
    def _counting(self) -> None:
        if self._counts_task is None:  # first request: there is a running loop now
            self._counts_task = asyncio.get_running_loop().create_task(self._send_counts())

    async def _guarded(self, request: Request, handler, *args) -> Response:
        self._counting()
        body_in = int(request.headers.get("content-length") or 0)
        if self._auth is not None:
            given = request.headers.get("authorization", "").encode()
            if not bearer_matches(given, self._auth):
                response = _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'"
                                  if given else "this server needs a token: send 'Authorization: Bearer <token>'",
                                  headers={"WWW-Authenticate": "Bearer"})
                return self._counted(request, response, body_in)
        try:
            response = await handler(request, *args)
        except ProtocolError as e:
            response = _error(e.status, e.message)
        except ServeError as e:  # a bad sequence id in the path, read here before any forwarding
            response = _error(e.status, str(e))
        except _Refused as e:
            response = _error(e.status, e.message, e.extra)
        except Exception as e:  # noqa: BLE001  (a bug, not the client's fault: one line, and keep serving)
            log.error("%s %s failed: %s: %s", request.method, request.url.path, type(e).__name__, e)
            response = _error(500, f"internal error: {type(e).__name__}: {e}".splitlines()[0])
        return self._counted(request, response, body_in)

    def _counted(self, request: Request, response: Response, body_in: int) -> Response:
        route = request.scope.get("route")
        self.metrics.count(endpoint_kind(getattr(route, "path", None)), response.status_code, body_in,
                           len(response.body))
        return response

    def _served(self, request: Request):
        return served_model(self.models, request.path_params["model"], request.path_params.get("version"))

    def _streaming(self, request: Request):
        served = self._served(request)
        if not served.streamable:
            raise ProtocolError(400, f"model '{served.name}' cannot stream, so it has no sequences or state")
        return served.name, parse_sequence_id(request.path_params["sequence_id"])

    # -- metadata -----------------------------------------------------------------------
    @app.get("/v2/health/live")
    async def live(self, request: Request) -> Response:
        return await self._guarded(request, _empty)

    @app.get("/v2/health/ready")
    async def ready(self, request: Request) -> Response:
        return await self._guarded(request, _empty)

    @app.get("/v2")
    async def server_metadata(self, request: Request) -> Response:
        return await self._guarded(request, self._json_of, self._server_body)

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(self, request: Request) -> Response:
        return await self._guarded(request, lambda r: self._json_of(r, self._served(r).metadata_body))

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(self, request: Request) -> Response:
        async def ready(r):
            self._served(r)
            return Response(b"")
        return await self._guarded(request, ready)

    @app.get("/v2/models/{model}/config")
    @app.get("/v2/models/{model}/versions/{version}/config")
    async def model_config(self, request: Request) -> Response:
        return await self._guarded(request, lambda r: self._json_of(r, self._served(r).config_body))

    async def _json_of(self, request: Request, body: bytes) -> Response:
        return Response(body, media_type=_JSON)

    @app.get("/metrics")
    async def metrics_page(self, request: Request) -> Response:
        async def page(r):
            owners, ingresses = await self.directory.scrape.remote()
            others = [counts for me, counts in ingresses.items() if me != self.me]
            return Response(self.metrics.render(owners, others), headers={"Content-Type": CONTENT_TYPE_LATEST})
        return await self._guarded(request, page)

    async def _send_counts(self) -> None:
        """This replica's request counters to the directory, about once a second (other ingresses' /metrics)."""
        while True:
            try:
                await self.directory.ingress_counts.remote(self.me, self.metrics.counts())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  (the directory restarting: the next round sends them)
                log.warning("ingress %s: counters not sent: %s", self.me, e)
            await asyncio.sleep(_COUNTS_EVERY_S)

    # -- inference ------------------------------------------------------------------------
    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(self, request: Request) -> Response:
        return await self._guarded(request, self._infer)

    async def _infer(self, request: Request) -> Response:
        served = self._served(request)
        limit = self.options.max_request_bytes
        length = request.headers.get("content-length")
        body = await request.body()
        if (length is not None and int(length) > limit) or len(body) > limit:
            raise ProtocolError(413, f"the request body is larger than the server's limit of {limit} bytes "
                                     "(--max-request-bytes)")
        parsed = parse_infer_request(body, parse_header_length(request.headers.get(HEADER_LENGTH), len(body)))
        params = parsed.parameters
        if "sequence_id" in params:
            if not served.streamable:
                raise ProtocolError(400, f"model '{served.name}' cannot stream, so it takes no sequence requests")
            try:
                sid = check_sequence_id(params["sequence_id"])
            except BadSequenceIdError as e:
                raise ProtocolError(400, str(e)) from None
            start = params.get("sequence_start", False) is True
            answer, header_length = await self._sequence_call(served.name, sid, "sequence_infer", parsed, start)
        else:
            answer, header_length = await self._call("infer", None, served.name, parsed)
        if header_length is None:
            return Response(answer, media_type=_JSON)
        return Response(answer, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})

    # -- a sequence's state --------------------------------------------------------------------
    @app.get("/v2/models/{model}/sequences/{sequence_id}/state")
    @app.get("/v2/models/{model}/versions/{version}/sequences/{sequence_id}/state")
    async def get_state(self, request: Request) -> Response:
        async def get(r):
            name, sid = self._streaming(r)
            return Response(await self._sequence_call(name, sid, "get_state"), media_type="application/octet-stream")
        return await self._guarded(request, get)

    @app.put("/v2/models/{model}/sequences/{sequence_id}/state")
    @app.put("/v2/models/{model}/versions/{version}/sequences/{sequence_id}/state")
    async def put_state(self, request: Request) -> Response:
        async def put(r):
            name, sid = self._streaming(r)
            blob = await r.body()
            if not blob:
                raise ProtocolError(400, f"sequence {sid!r}: the body must be a state (bytes from GET .../state), "
                                         "got an empty body")
            created = await self._sequence_call(name, sid, "put_state", blob)
            body = json.dumps({"model": name, "sequence_id": sid, "created": created})
            return Response(body, status_code=201 if created else 200, media_type=_JSON)
        return await self._guarded(request, put)

    @app.delete("/v2/models/{model}/sequences/{sequence_id}/state")
    @app.delete("/v2/models/{model}/versions/{version}/sequences/{sequence_id}/state")
    @app.delete("/v2/models/{model}/sequences/{sequence_id}")
    @app.delete("/v2/models/{model}/versions/{version}/sequences/{sequence_id}")
    async def end(self, request: Request) -> Response:
        async def end(r):
            name, sid = self._streaming(r)
            await self._sequence_call(name, sid, "end")
            return Response(status_code=204)
        return await self._guarded(request, end)

    @app.post("/v2/models/{model}/sequences/{sequence_id}/reset")
    @app.post("/v2/models/{model}/versions/{version}/sequences/{sequence_id}/reset")
    async def reset(self, request: Request) -> Response:
        async def reset(r):
            name, sid = self._streaming(r)
            await self._sequence_call(name, sid, "reset")
            return Response(status_code=204)
        return await self._guarded(request, reset)

    # -- the WebSocket stream -------------------------------------------------------------------
    @app.websocket("/v2/models/{model}/stream")
    async def stream(self, ws: WebSocket, model: str) -> None:
        await ws.accept()
        self._counting()
        self.metrics.count("stream", 101, 0, 0)
        try:
            sid, attached, output = await self._open_stream(ws, model)
        except _Refused as e:
            self.metrics.errors["stream"] += 1
            await _close(ws, e.status, e.message)
            return
        try:
            await self._serve_stream(ws, model, sid, output)
        except _Refused as e:
            await _close(ws, e.status, e.message)
        except WebSocketDisconnect:
            pass
        finally:
            try:
                await self._sequence_call(model, sid, "stream_close", attached)
            except _Refused:
                pass  # already gone (lost, ended): nothing to release

    async def _open_stream(self, ws: WebSocket, name: str) -> tuple[Any, bool, str]:
        if self._auth is not None and not bearer_matches(ws.headers.get("authorization", "").encode(), self._auth):
            raise _Refused(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
        served = self.models.get(name)
        if served is None:
            raise _Refused(404, f"unknown model '{name}' (serving: {', '.join(self.models)})")
        if not served.streamable:
            raise _Refused(404, f"model '{name}' cannot stream: use POST /v2/models/{name}/infer")
        outputs = self._stream_outputs[name]
        output = ws.query_params.get("output", outputs[0])
        if output not in outputs:
            raise _Refused(400, f"model '{name}' has no stream output '{output}' (outputs: {', '.join(outputs)})")
        text = ws.query_params.get("sequence_id")
        try:
            if text is not None:
                sid = parse_sequence_id(text)
                header = await self._sequence_call(name, sid, "stream_open", output)
                attached = True
            else:
                while True:
                    sid = fresh_id()
                    try:
                        header = await self._sequence_call(name, sid, "stream_start", output)
                        break
                    except _Refused as e:
                        if e.status != 409:  # 409: the id is taken; draw again
                            raise
                attached = False
        except ProtocolError as e:
            raise _Refused(e.status, e.message) from None
        except ServeError as e:
            raise _Refused(e.status, str(e)) from None
        await ws.send_text(header)
        return sid, attached, output

    async def _serve_stream(self, ws: WebSocket, model: str, sid: Any, output: str) -> None:
        count = self.metrics.count
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            payload, text = message.get("bytes"), message.get("text")
            received = len(payload) if payload is not None else len((text or "").encode())
            try:
                if payload is not None:
                    reply = await self._sequence_call(model, sid, "stream_binary", output, payload)
                    await ws.send_bytes(reply)
                else:
                    reply = await self._sequence_call(model, sid, "stream_text", text.encode())
                    await ws.send_text(reply.decode())
                count("frame", 200, received, len(reply))
            except _Refused as e:
                count("frame", e.status, received, 0)
                if e.status in (404, 503):  # the sequence is gone, or the service drains: nothing more to step
                    raise
                extra = {k: v for k, v in e.extra.items() if k not in ("retry", "retry_after")}
                await ws.send_text(json.dumps({"error": e.message, **extra}))
