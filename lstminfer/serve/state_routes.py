"""A sequence's state over HTTP: read it, move it, reset it, end it (issue #17, "State you can hold in your hand").

    GET    /v2/models/{m}/sequences/{id}/state   -> the state (``StreamPool.save`` bytes, octet-stream)
    PUT    /v2/models/{m}/sequences/{id}/state   <- such bytes: 201 started, 200 overwritten
    DELETE /v2/models/{m}/sequences/{id}[/state] -> 204, the sequence ended
    POST   /v2/models/{m}/sequences/{id}/reset   -> 204, its state zeroed (as a fresh start)

(and the same under ``/v2/models/{m}/versions/{v}``). ``{id}``: all digits is the integer id, anything
else the string id. The manager's refusals (404 unknown or expired, 400 bad bytes, 503 full...) carry
their status; the server's middleware turns them into ``{"error": ...}``.
"""
from __future__ import annotations

import json

from aiohttp import web

from .http_sequences import SequenceRequests
from .protocol import MODEL_VERSION, ProtocolError
from .sequences import SequenceManager, parse_sequence_id

_OCTETS = "application/octet-stream"


class StateRoutes:
    """The state endpoints over the served models' names and their ``SequenceRequests``."""

    def __init__(self, model_names: list[str] | dict, sequences: dict[str, SequenceRequests]):
        self.model_names = list(model_names)
        self.sequences = sequences

    def add_to(self, app: web.Application) -> None:
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            sequence = prefix + "/sequences/{sequence_id}"
            app.router.add_get(sequence + "/state", self.get_state)
            app.router.add_put(sequence + "/state", self.put_state)
            app.router.add_delete(sequence + "/state", self.end)
            app.router.add_delete(sequence, self.end)
            app.router.add_post(sequence + "/reset", self.reset)

    async def get_state(self, request: web.Request) -> web.Response:
        manager, sid = self._target(request)
        return web.Response(body=manager.get_state(sid), content_type=_OCTETS)

    async def put_state(self, request: web.Request) -> web.Response:
        manager, sid = self._target(request)
        blob = await request.read()
        if not blob:
            raise ProtocolError(400, f"sequence {sid!r}: the body must be a state (bytes from GET .../state), "
                                     "got an empty body")
        created = manager.put_state(sid, blob)
        body = json.dumps({"model": request.match_info["model"], "sequence_id": sid, "created": created})
        return web.Response(status=201 if created else 200, text=body, content_type="application/json")

    async def end(self, request: web.Request) -> web.Response:
        manager, sid = self._target(request)
        manager.end(sid)
        return web.Response(status=204)

    async def reset(self, request: web.Request) -> web.Response:
        manager, sid = self._target(request)
        manager.reset(sid)
        return web.Response(status=204)

    def _target(self, request: web.Request) -> tuple[SequenceManager, object]:
        """The manager of the request's model and the sequence id; 404 unknown model, 400 not streamable."""
        info = request.match_info
        name = info["model"]
        if name not in self.model_names:
            raise ProtocolError(404, f"unknown model '{name}' (serving: {', '.join(self.model_names)})")
        version = info.get("version")
        if version is not None and version != MODEL_VERSION:
            raise ProtocolError(404, f"model '{name}' has no version '{version}' (versions: {MODEL_VERSION})")
        sequences = self.sequences.get(name)
        if sequences is None:
            raise ProtocolError(400, f"model '{name}' cannot stream, so it has no sequences or state")
        return sequences.manager, parse_sequence_id(info["sequence_id"])
