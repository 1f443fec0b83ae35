"""The HTTP server of ``lstminfer serve``: the Open Inference Protocol's endpoints on aiohttp.

aiohttp (on uvloop when installed) because its per-message cost was the lowest measured for the
WebSocket hot path (benchmarks/serve_stack.py). The codec lives in ``protocol``; this module
routes, authenticates, bounds bodies, runs the model off the event loop and turns every failure
into ``{"error": ...}`` with a fitting status.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
from aiohttp import web

from .. import __version__
from ..errors import ExecutionError, InvalidArgumentError, InvalidInputError, LstminferError, NotStreamableError
from ..model import Model
from .access import bearer_matches, refuse_without_token
from .batcher import ServeError
from .http_sequences import SequenceRequests
from .metrics import ServeMetrics
from .protocol import (InferRequest, ProtocolError, TensorSpec, check_inputs, check_outputs,
                       encode_infer_response, error_body, model_config, model_metadata, parse_header_length,
                       parse_infer_request, served_model, server_metadata, tensor_specs)
from .state_routes import StateRoutes
from .websocket import WebSocketStreams, is_stream_request

log = logging.getLogger("lstminfer.serve")

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "sequence", "model_configuration"]
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_JSON = "application/json"


@dataclass
class ServeOptions:
    """The command's flags (the sequence ones are kept for the sequence manager)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_streams: int = 4096
    max_delay_us: int = 500
    max_batch: int = 128
    idle_timeout: float = 300.0
    state_dir: str | None = None
    threads: int = 1
    backend: str = "auto"
    quantize: str | None = None
    token: str | None = None
    max_request_bytes: int = 16 * 1024 * 1024


class ServedModel:
    """One model as the server exposes it: its tensors, metadata and config (encoded once) and its runs."""

    def __init__(self, name: str, model: Model, options: ServeOptions):
        self.name = name
        self.model = model
        self.inputs: list[TensorSpec] = tensor_specs(model.get_inputs())
        self.outputs: list[TensorSpec] = tensor_specs(model.get_outputs())
        try:
            self.state: dict[str, np.ndarray] | None = model.stream().state
        except NotStreamableError:
            self.state = None
        self.metadata_body = json.dumps(model_metadata(name, self.inputs, self.outputs)).encode()
        self.config_body = json.dumps(model_config(
            name, self.inputs, self.outputs, self.state, max_streams=options.max_streams,
            max_delay_us=options.max_delay_us, idle_timeout_s=options.idle_timeout)).encode()
        self._input_count = len(self.inputs)

    @property
    def streamable(self) -> bool:
        return self.state is not None

    def infer(self, request: InferRequest) -> tuple[bytes, int | None]:
        """A stateless request, checked, run and encoded (in the worker thread: the kernels release the GIL)."""
        feeds = check_inputs(self.name, self.inputs, request)
        names = check_outputs(self.name, self.outputs, request)
        values = self.run(names, feeds)
        return encode_infer_response(self.name, request, list(zip(names, values)))

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[Any]:
        if len(feeds) == self._input_count:
            return self.model.run(names, feeds)
        result = self.model.predict(**feeds)  # fills absent state inputs (h0/c0) with zeros
        if not isinstance(result, dict):
            result = {self.outputs[0].name: result}
        return [result[name] for name in names]


# async (served model, request) -> (body, header length): the sequence manager's entry, set by the lead
SequenceHandler = Callable[[ServedModel, InferRequest], Awaitable[tuple[bytes, int | None]]]


def parse_model_arg(spec: str) -> tuple[str, str]:
    """``PATH`` (served under its file stem) or ``NAME=PATH`` -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec).stem, spec
    if not _NAME.match(name):
        raise InvalidArgumentError(f"model name {name!r} (from {spec!r}) must be letters, digits, '_', '.' or '-'")
    return name, path


def load_models(specs: list[str], options: ServeOptions) -> dict[str, ServedModel]:
    """The models to serve, by name; no spec: the bundled default model."""
    from .. import models as bundled

    if not specs:
        specs = [f"{bundled.DEFAULT}={bundled.path(bundled.DEFAULT)}"]
    served: dict[str, ServedModel] = {}
    for spec in specs:
        name, path = parse_model_arg(spec)
        if name in served:
            raise InvalidArgumentError(f"two models are named {name!r}; name them with NAME=PATH")
        model = Model(path, options.backend, threads=options.threads, quantize=options.quantize)
        served[name] = ServedModel(name, model, options)
    return served


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(message), content_type=_JSON, headers=headers)


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=_JSON)


class InferenceServer:
    """The v2 endpoints over ``models``; ``start()`` binds, ``stop()`` drains and closes."""

    def __init__(self, models: dict[str, ServedModel], options: ServeOptions):
        self.models = models
        self.options = options
        self.sequences = {name: self._sequences_of(served) for name, served in models.items() if served.streamable}
        self.sequence_handler: SequenceHandler | None = self._sequence_infer
        self.url: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstminfer-infer")
        self._auth = f"Bearer {options.token}".encode() if options.token else None
        self._server_body = json.dumps(server_metadata("lstminfer", __version__, EXTENSIONS)).encode()
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None

    def _sequences_of(self, served: ServedModel) -> SequenceRequests:
        from .batcher import inline_below_us_for_this_process
        from .sequences import SequenceManager

        options = self.options
        manager = SequenceManager(served.model, options.max_streams, max_delay_us=options.max_delay_us,
                                  idle_timeout=options.idle_timeout, inline_below_us=inline_below_us_for_this_process(),
                                  max_batch=options.max_batch)
        return SequenceRequests(served.name, manager, served.inputs, manager.pool.output_names)

    async def _sequence_infer(self, served: ServedModel, request: InferRequest) -> tuple[bytes, int | None]:
        sequences = self.sequences.get(served.name)
        if sequences is None:
            raise ProtocolError(400, f"model '{served.name}' cannot stream, so it takes no sequence requests")
        return await sequences.infer(request)

    def _state_dir(self, name: str) -> Path | None:
        return Path(self.options.state_dir) / name if self.options.state_dir else None

    def _build_app(self) -> web.Application:
        self.metrics = ServeMetrics({name: sequences.manager for name, sequences in self.sequences.items()})
        app = web.Application(middlewares=[self.metrics.counting(self._guard)],
                              client_max_size=self.options.max_request_bytes)
        app.router.add_get("/v2/health/live", self._healthy)
        app.router.add_get("/v2/health/ready", self._healthy)
        app.router.add_get("/v2", self._server_metadata)
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            app.router.add_get(prefix, self._model_metadata)
            app.router.add_get(prefix + "/ready", self._model_ready)
            app.router.add_get(prefix + "/config", self._model_config)
            app.router.add_post(prefix + "/infer", self._infer)
        StateRoutes(list(self.models), self.sequences).add_to(app)
        app.router.add_get("/metrics", self.metrics.handle)
        WebSocketStreams(self).install(app)  # ws://.../v2/models/{model}/stream
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        """Token check, and every failure as ``{"error": ...}``: the server never answers a traceback."""
        if self._auth is not None and not is_stream_request(request):  # a stream closes 1008 itself
            given = request.headers.get("Authorization", "").encode()
            if not bearer_matches(given, self._auth):
                return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'"
                                   if given else "this server needs a token: send 'Authorization: Bearer <token>'",
                              {"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except ProtocolError as e:
            return _error(e.status, e.message)
        except ServeError as e:  # the sequence manager's refusals carry their status
            retry = getattr(e, "retry_after", None)
            return _error(e.status, str(e), {"Retry-After": str(retry)} if retry else None)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the request body is larger than the server's limit of "
                               f"{self.options.max_request_bytes} bytes (--max-request-bytes)")
        except web.HTTPMethodNotAllowed as e:
            return _error(405, f"{request.method} is not allowed on {request.path} "
                               f"(allowed: {', '.join(sorted(e.allowed_methods))})",
                          {"Allow": ",".join(sorted(e.allowed_methods))})
        except web.HTTPNotFound:
            return _error(404, f"no endpoint {request.method} {request.path}")
        except web.HTTPException as e:
            return _error(e.status, e.reason)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, not the client's fault: one line, and keep serving
            log.error("%s %s failed: %s: %s", request.method, request.path, type(e).__name__, e)
            return _error(500, f"internal error: {type(e).__name__}: {e}".splitlines()[0])

    async def _healthy(self, request: web.Request) -> web.Response:
        return web.Response()  # live and ready as soon as it listens: the models load before

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return _json(self._server_body)

    def _served(self, request: web.Request) -> ServedModel:
        return served_model(self.models, request.match_info["model"], request.match_info.get("version"))

    async def _model_metadata(self, request: web.Request) -> web.Response:
        return _json(self._served(request).metadata_body)

    async def _model_ready(self, request: web.Request) -> web.Response:
        self._served(request)
        return web.Response()

    async def _model_config(self, request: web.Request) -> web.Response:
        return _json(self._served(request).config_body)

    async def _infer(self, request: web.Request) -> web.Response:
        served = self._served(request)
        length = request.content_length
        if length is not None and length > self.options.max_request_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.options.max_request_bytes, actual_size=length)
        body = await request.read()
        parsed = parse_infer_request(body, parse_header_length(request.headers.get(HEADER_LENGTH), len(body)))
        if "sequence_id" in parsed.parameters:
            if self.sequence_handler is None:
                raise ProtocolError(400, "sequence requests are not supported yet")
            answer, header_length = await self.sequence_handler(served, parsed)
        else:
            try:
                answer, header_length = await asyncio.get_running_loop().run_in_executor(
                    self._executor, served.infer, parsed)
            except (InvalidInputError, InvalidArgumentError, ExecutionError) as e:
                raise ProtocolError(400, str(e).splitlines()[0]) from None
        if header_length is None:
            return web.Response(body=answer, content_type=_JSON)
        return web.Response(body=answer, content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(header_length)})

    async def start(self) -> str:
        """Bind and listen; returns the URL (the real port when the options say 0)."""
        for name, sequences in self.sequences.items():  # a restart resumes every saved sequence
            directory = self._state_dir(name)
            if directory is not None and directory.is_dir():
                loaded = sequences.manager.load_all(directory)
                for path, why in loaded.failed:
                    log.error("state file %s not restored: %s", path, why)
                if loaded.loaded:
                    log.info("model %s: %d sequence(s) restored from %s", name, len(loaded.loaded), directory)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port)
        await site.start()
        gc.collect()  # the models, plans and imports live as long as the server: out of the collector's sight,
        gc.freeze()  # else each full collection walks them (~70 ms for a 2-layer H=256 model: a p99 spike)
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, close."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for name, sequences in self.sequences.items():
            manager = sequences.manager
            await manager.drain()
            directory = self._state_dir(name)
            if directory is not None:
                saved = manager.save_all(directory)
                log.info("model %s: %d open sequence(s) saved to %s", name, len(saved), directory)
            await manager.aclose()
        self._executor.shutdown(wait=True)


def serve(model_specs: list[str], options: ServeOptions,
          configure: Callable[[InferenceServer], None] | None = None) -> int:
    """Load the models, listen until SIGTERM/SIGINT, drain, return the exit status.

    ``configure(server)`` runs before the server binds: routes, ``sequence_handler``, the app's
    ``on_cleanup`` (which runs after in-flight requests have finished)."""
    refusal = refuse_without_token(options.host, options.token)
    if refusal:
        print(f"lstminfer serve: error: {refusal}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s lstminfer serve: %(message)s", stream=sys.stderr)
    try:
        models = load_models(model_specs, options)
    except (LstminferError, FileNotFoundError) as e:
        print(f"lstminfer serve: error: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:  # plain asyncio works, a little slower per message
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        return runner(_serve_until_signal(models, options, configure))
    except OSError as e:  # the port is taken, the address is not ours...
        print(f"lstminfer serve: error: cannot listen on {options.host}:{options.port}: {e}", file=sys.stderr)
        return 2


async def _serve_until_signal(models: dict[str, ServedModel], options: ServeOptions,
                              configure: Callable[[InferenceServer], None] | None) -> int:
    server = InferenceServer(models, options)
    if configure is not None:
        configure(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await server.start()
    print(f"lstminfer serve: listening on {url}", flush=True)
    for name, served in models.items():
        print(f"  {url}/v2/models/{name}  ({served.model.source}; "
              f"{'streamable' if served.streamable else 'stateless only'})", flush=True)
    log.info("started: %d model(s) on %s", len(models), url)
    await stop.wait()
    log.info("stopping: draining in-flight requests")
    await server.stop()
    log.info("stopped")
    return 0
