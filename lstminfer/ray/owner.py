"""``StreamOwner``: the Ray Serve deployment whose replicas hold the streams (``ReplicaStreams``), one each.

The ingress calls it through a handle routed by ``routing_key(model, sequence id)`` (consistent hash:
one replica per sequence while the replicas stay the same); stateless calls carry no key and spread
evenly. Every method answers ``("ok", ...)`` or ``("err", status, message, extra)``: the service's
refusals cross the process boundary as data, not as pickled exceptions.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ExecutionError, InvalidArgumentError, InvalidInputError
from ..serve.app import ServeOptions
from ..serve.batcher import ServeError
from ..serve.metrics import BatchHistograms
from ..serve.protocol import InferRequest, ProtocolError
from ..serve.websocket import FRESH_ID_BITS, _sequence_request
from .moves import ResumedFromCheckpointError
from .owner_core import ReplicaStreams

log = logging.getLogger("lstminfer.ray")
_SHUTDOWN_CALL_S = 5.0


def _refusal(e: ServeError | ProtocolError) -> tuple:
    extra: dict[str, Any] = {}
    if getattr(e, "retry_after", None):
        extra["retry_after"] = e.retry_after
    if isinstance(e, ResumedFromCheckpointError):
        extra["resumed_after_chunk"] = e.resumed_after_chunk
    if getattr(e, "replica_draining", False):
        extra["retry"] = True
    return ("err", e.status, str(e) if isinstance(e, ServeError) else e.message, extra)


class _DirectoryCalls:
    """``ReplicaStreams``' directory over a Serve handle (its calls are awaitable responses)."""

    def __init__(self, handle):
        self.handle = handle

    async def claim(self, key, me, create):
        return await self.handle.claim.remote(key, me, create)

    async def handed(self, records):
        await self.handle.handed.remote(records)

    def checkpoint(self, key, record):
        return self.handle.checkpoint.remote(key, record)  # sent now; nobody waits for it

    def release(self, keys):
        return self.handle.release.remote(keys)


class StreamOwner:
    """One replica: its ``ReplicaStreams`` and the long poll that hands its streams over on request."""

    def __init__(self, model_specs: list[str], options: dict, directory, checkpoint_every: int = 0):
        from ray import serve

        self.me = serve.get_replica_context().replica_id.unique_id
        self._directory = directory
        self.streams = ReplicaStreams(model_specs, ServeOptions(**options), self.me, _DirectoryCalls(directory),
                                      checkpoint_every)
        self._histograms = {}
        for name, stats in self.streams.stats().items():
            self._histograms[name] = histograms = BatchHistograms()
            stats.on_batch = histograms.on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstminfer-infer")
        self._poll: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def _started(self) -> None:
        if self._poll is None:
            import ray

            self._poll = asyncio.get_running_loop().create_task(self._poll_handovers())
            await self._directory.register.remote(self.me, ray.get_runtime_context().current_actor)

    async def _poll_handovers(self) -> None:
        while True:
            try:
                keys = await self._directory.next_handover.remote(self.me, self._snapshot(), self.streams.expired())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  (the directory restarting: try again shortly)
                log.warning("replica %s: the stream directory did not answer: %s", self.me, e)
                await asyncio.sleep(0.5)
                continue
            if keys is None:  # the directory restarted: tell it who we are and what we hold
                import ray

                await self._directory.register.remote(self.me, ray.get_runtime_context().current_actor,
                                                      self.streams.held_keys())
            elif keys:
                task = asyncio.get_running_loop().create_task(self.streams.hand_over([tuple(k) for k in keys]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _snapshot(self) -> dict:
        """This replica's metrics: per model its stream counts and step histograms; its stream moves."""
        models = {}
        for name, stats in self.streams.stats().items():
            h = self._histograms[name]
            models[name] = {
                "open_streams": stats.open_streams, "expired_total": stats.expired_total,
                "batch_size": (list(h.batch_size.counts), h.batch_size.sum),
                "queue_delay": (list(h.queue_delay.counts), h.queue_delay.sum),
                "step_seconds": (list(h.step_seconds.counts), h.step_seconds.sum)}
        moved = self.streams.move_seconds
        return {"models": models, "moves": len(moved), "move_seconds": moved[-1000:]}

    async def _answer(self, call) -> tuple:
        await self._started()
        try:
            return ("ok", await call())
        except (ServeError, ProtocolError) as e:
            return _refusal(e)

    # -- v2 HTTP ----------------------------------------------------------------------
    async def infer(self, model: str, request: InferRequest) -> tuple:
        """A stateless request (no sequence): run in a worker thread (the kernels release the GIL)."""
        async def call():
            served = self.streams.models[model]
            try:
                return await asyncio.get_running_loop().run_in_executor(self._executor, served.infer, request)
            except (InvalidInputError, InvalidArgumentError, ExecutionError) as e:
                raise ProtocolError(400, str(e).splitlines()[0]) from None
        return await self._answer(call)

    async def sequence_infer(self, model: str, sid: Any, request: InferRequest, start: bool) -> tuple:
        return await self._answer(lambda: self.streams.run(
            model, sid, lambda seqs: seqs.infer(request), create=start, steps=True))

    async def get_state(self, model: str, sid: Any) -> tuple:
        return await self._answer(lambda: self.streams.run(
            model, sid, _sync(lambda seqs: seqs.manager.get_state(sid))))

    async def put_state(self, model: str, sid: Any, blob: bytes) -> tuple:
        return await self._answer(lambda: self.streams.run(
            model, sid, _sync(lambda seqs: seqs.manager.put_state(sid, blob)), create=True, state_changes=True))

    async def end(self, model: str, sid: Any) -> tuple:
        return await self._answer(lambda: self.streams.run(model, sid, _sync(lambda seqs: seqs.manager.end(sid))))

    async def reset(self, model: str, sid: Any) -> tuple:
        return await self._answer(lambda: self.streams.run(
            model, sid, _sync(lambda seqs: seqs.manager.reset(sid)), state_changes=True))

    # -- WebSocket (the ingress holds the connection; each frame comes here) -------------------
    async def stream_open(self, model: str, sid: Any, output: str) -> tuple:
        """Hold ``sid`` (attach) or start it (``sid`` None: the ingress drew one... see ``fresh_id``)."""
        def attach(seqs):
            self.streams.hold(model, sid)
            return self.streams.layout(model).header(sid, model, output)
        return await self._answer(lambda: self.streams.run(model, sid, _sync(attach)))

    async def stream_start(self, model: str, sid: Any, output: str) -> tuple:
        def start(seqs):
            seqs.manager.start(sid)
            self.streams.hold(model, sid)
            return self.streams.layout(model).header(sid, model, output)
        return await self._answer(lambda: self.streams.run(model, sid, _sync(start), create=True))

    async def stream_binary(self, model: str, sid: Any, output: str, payload: bytes) -> tuple:
        async def step(seqs):
            layout = self.streams.layout(model)
            result = await seqs.manager.step(sid, layout.chunk(payload))
            return layout.reply(output, result[output] if isinstance(result, dict) else result)
        return await self._answer(lambda: self.streams.run(model, sid, step, steps=True))

    async def stream_text(self, model: str, sid: Any, text: bytes) -> tuple:
        async def step(seqs):
            body, _ = await seqs.infer(_sequence_request(text, sid))
            return body
        return await self._answer(lambda: self.streams.run(model, sid, step, steps=True))

    async def stream_close(self, model: str, sid: Any, attached: bool) -> tuple:
        def close(seqs):
            if attached:
                self.streams.release(model, sid)
            else:
                seqs.manager.end(sid, missing_ok=True)
        return await self._answer(lambda: self.streams.run(model, sid, _sync(close)))

    # -- figures and tests --------------------------------------------------------------
    def move_seconds(self) -> list[float]:
        return list(self.streams.move_seconds)

    def replica_id(self) -> str:
        return self.me

    async def __del__(self):
        """Scaled down: hand every stream to the directory before the replica goes."""
        try:
            if self._poll is not None:
                self._poll.cancel()
            taken = await self.streams.take_all()
            # bounded: when the whole application is deleted, the directory goes at the same time
            if taken:
                await asyncio.wait_for(self._directory.park.remote(taken), _SHUTDOWN_CALL_S)
                log.info("replica %s: %d stream(s) handed over on shutdown", self.me, len(taken))
            await asyncio.wait_for(self._directory.stopped.remote(self.me), _SHUTDOWN_CALL_S)
        except Exception as e:  # noqa: BLE001  (a destructor must not raise)
            log.error("replica %s: handing over on shutdown failed: %s: %s", self.me, type(e).__name__, e)
        try:
            await self.streams.aclose()
        except Exception as e:  # noqa: BLE001
            log.error("replica %s: closing its stream pools failed: %s: %s", self.me, type(e).__name__, e)
        self._executor.shutdown(wait=False)


def fresh_id() -> int:
    """A new stream's id (as ``lstminfer serve`` draws it: exact as a JavaScript number)."""
    return secrets.randbits(FRESH_ID_BITS)


def _sync(fn):
    async def op(seqs):
        return fn(seqs)
    return op
