"""Stream clients for tests/test_ray_serve.py: one sequence over v2 HTTP or over the WebSocket, chunk by chunk.

``step(chunk)`` returns the chunk's output ``y`` ([1, T, 1] for adding_lstm) or raises ``StreamFailed``
with what the server said (an HTTP status and body, a WebSocket text frame, or a close code and reason).
"""
from __future__ import annotations

import json

import numpy as np


class StreamFailed(Exception):
    def __init__(self, status: int, message: str, body: dict | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.body = status, message, body or {}


class HttpStream:
    """A sequence over ``POST /v2/models/{m}/infer`` with ``parameters.sequence_id`` (JSON tensors)."""

    def __init__(self, session, url: str, model: str, sid: int):
        self.session, self.url, self.model, self.sid = session, url, model, sid
        self.started = False
        self.sequence_id = sid

    async def open(self) -> None:
        return None

    async def step(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        params = {"sequence_id": self.sid, "sequence_start": not self.started, "sequence_end": last}
        body = {"parameters": params, "outputs": [{"name": "y"}],
                "inputs": [{"name": "x", "datatype": "FP32", "shape": list(chunk.shape),
                            "data": chunk.ravel().tolist()}]}
        async with self.session.post(f"{self.url}/v2/models/{self.model}/infer", json=body) as response:
            answer = await response.json(content_type=None)
            if response.status != 200:
                raise StreamFailed(response.status, answer.get("error", ""), answer)
        self.started = True
        out = answer["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    async def close(self) -> None:
        return None


class WebSocketStream:
    """A sequence over ``ws://.../v2/models/{m}/stream``: binary chunks in, binary ``y`` out."""

    def __init__(self, url: str, model: str):
        self.url = url.replace("http://", "ws://") + f"/v2/models/{model}/stream"
        self.ws = None
        self.sequence_id = None

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, max_size=None, open_timeout=60)
        self.sequence_id = json.loads(await self.ws.recv())["sequence_id"]

    async def step(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        from websockets.exceptions import ConnectionClosed

        try:
            await self.ws.send(np.ascontiguousarray(chunk[0], dtype="<f4").tobytes())
            reply = await self.ws.recv()
        except ConnectionClosed as e:
            raise StreamFailed(e.rcvd.code if e.rcvd else 1006, e.rcvd.reason if e.rcvd else "") from None
        if isinstance(reply, str):
            body = json.loads(reply)
            raise StreamFailed(body.get("status", 0), body["error"], body)
        return np.frombuffer(reply, dtype="<f4").reshape(1, -1, 1)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


def chunks_of(rng: np.random.Generator, count: int, most_frames: int = 4) -> list[np.ndarray]:
    """``count`` chunks [1, T, 2] of random lengths 1..most_frames."""
    return [rng.standard_normal((1, int(rng.integers(1, most_frames + 1)), 2)).astype(np.float32)
            for _ in range(count)]


class Gate:
    """An asyncio barrier for ``parties`` tasks (``asyncio.Barrier`` needs Python 3.11)."""

    def __init__(self, parties: int):
        import asyncio

        self.parties, self.arrived = parties, 0
        self.all_here = asyncio.Event()
        self.go = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_here.set()
        await self.go.wait()
