"""The peer of ``lstminfer serve``'s benchmarks: the service a user would write instead.

Starlette on uvicorn with its standard extras (uvloop, httptools), one onnxruntime
``InferenceSession`` with 1 intra-op thread, ``run`` called once per chunk, each
stream's state kept in a dict. The same transports as ``lstminfer serve``:

* ``ws://HOST:PORT/v2/models/{m}/stream``: on connect one text frame
  ``{"sequence_id", "model", "inputs", "outputs"}``; each binary frame is one chunk of
  the data input (little-endian float32, C order, ``[T, features...]``), answered by one
  binary frame with the first non-state output for that chunk ``[T, ...]``.
* ``POST /v2/models/{m}/infer`` (KServe v2, JSON tensors): ``parameters.sequence_id``
  keeps the state between requests (``sequence_start`` zeroes it, ``sequence_end``
  drops it); without it, a stateless run from zero state.
* ``GET /v2/health/live``, ``/v2/health/ready``.

The model's layout is the convention of the benchmark models (``serve_models.py``)
and the repo's exports: inputs ``[data, *states]``, outputs ``[data_out, *states]``
with the k state inputs paired with the last k outputs in order; the data input's
batch axis is axis 0 unless its first dimension is named like a time axis; state
tensors carry the batch on axis 1.

``python benchmarks/serve_peer.py MODEL.onnx [--host 127.0.0.1] [--port 0]`` prints
``http://HOST:PORT`` and the served model name on one line each; SIGTERM stops it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ORT_DTYPES = {"tensor(float)": ("FP32", np.float32), "tensor(double)": ("FP64", np.float64),
              "tensor(int64)": ("INT64", np.int64), "tensor(int32)": ("INT32", np.int32)}
V2_DTYPES = {v2: np.dtype(dt) for v2, dt in ORT_DTYPES.values()}
TIME_AXIS_NAMES = ("time", "seq", "sequence", "t")


@dataclass
class PeerModel:
    """One onnxruntime session and what the transports need to know of its signature."""
    name: str
    session: object
    data_input: str
    data_dtype: np.dtype
    frame_shape: tuple[int, ...]  # one time step of the data input, batch and time dropped
    batch_axis: int  # of the data input and output: 0 batch first, 1 time first
    state_inputs: tuple[str, ...]
    state_outputs: tuple[str, ...]
    state_shapes: dict  # name -> shape at batch 1
    data_output: str
    out_frame_shape: tuple[int, ...] = ()  # one time step of the data output, set by load_model

    def zero_state(self) -> dict[str, np.ndarray]:
        return {n: np.zeros(self.state_shapes[n], np.float32) for n in self.state_inputs}

    def run_chunk(self, chunk: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        """Output for ``chunk [T, *frame]``; ``state`` is replaced by the state after it."""
        feeds = dict(state)
        feeds[self.data_input] = np.expand_dims(chunk, self.batch_axis)
        outputs = self.session.run(None, feeds)
        for name, value in zip(self.state_inputs, outputs[len(outputs) - len(self.state_inputs):]):
            state[name] = value
        return np.squeeze(outputs[0], self.batch_axis)

    def tensor_meta(self) -> tuple[list, list]:
        """The header's ``inputs``/``outputs``: per-chunk shapes, time axis -1, batch dropped."""
        inputs = [{"name": self.data_input, "datatype": ORT_DTYPES_BY_NP[self.data_dtype],
                   "shape": [-1, *self.frame_shape]}]
        inputs += [{"name": n, "datatype": "FP32", "shape": list(self.state_shapes[n])}
                   for n in self.state_inputs]
        outputs = [{"name": self.data_output, "datatype": "FP32", "shape": [-1, *self.out_frame_shape]}]
        outputs += [{"name": n, "datatype": "FP32", "shape": list(self.state_shapes[i])}
                    for n, i in zip(self.state_outputs, self.state_inputs)]
        return inputs, outputs


ORT_DTYPES_BY_NP = {np.dtype(dt): v2 for v2, dt in ORT_DTYPES.values()}


def load_model(path: str, name: str | None = None) -> PeerModel:
    """An onnxruntime session (1 intra-op thread) on ``path`` and its streaming signature."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    n_states = len(inputs) - 1
    if n_states < 0 or len(outputs) < n_states + 1:
        raise ValueError(f"{path}: expected inputs [data, *states] and outputs [output, *states]; "
                         f"got inputs {[i.name for i in inputs]}, outputs {[o.name for o in outputs]}")
    data = inputs[0]
    if data.type not in ORT_DTYPES or len(data.shape) < 2:
        raise ValueError(f"{path}: data input {data.name!r} must be a numeric tensor [batch, time, ...]; "
                         f"got {data.type} {data.shape}")
    first = str(data.shape[0]).lower()
    batch_axis = 1 if first in TIME_AXIS_NAMES else 0
    frame_shape = tuple(int(d) for d in data.shape[2:])
    states = inputs[1:]
    state_shapes = {}
    for s in states:
        dims = list(s.shape)
        if len(dims) < 2:
            raise ValueError(f"{path}: state input {s.name!r} must have its batch on axis 1; got shape {dims}")
        dims[1] = 1
        state_shapes[s.name] = tuple(int(d) for d in dims)
    out = outputs[0]
    model = PeerModel(name=name or Path(path).stem, session=session, data_input=data.name,
                      data_dtype=np.dtype(ORT_DTYPES[data.type][1]), frame_shape=frame_shape,
                      batch_axis=batch_axis, state_inputs=tuple(s.name for s in states),
                      state_outputs=tuple(o.name for o in outputs[len(outputs) - n_states:]),
                      state_shapes=state_shapes, data_output=out.name)
    # One probe run gives the output's per-frame shape (its dims may be symbolic).
    probe = np.zeros((1, *frame_shape), model.data_dtype)
    model.out_frame_shape = tuple(model.run_chunk(probe, model.zero_state()).shape[1:])
    return model


def build_app(model: PeerModel):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    ids = itertools.count(1)
    sequences: dict = {}  # HTTP sequence_id -> state dict
    frame_bytes = int(np.prod(model.frame_shape, dtype=np.int64)) * model.data_dtype.itemsize
    inputs_meta, outputs_meta = model.tensor_meta()

    def unknown_model(m: str) -> JSONResponse:
        return JSONResponse({"error": f"unknown model {m!r}; serving {model.name!r}"}, status_code=404)

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        if ws.path_params["m"] != model.name:
            await ws.close(code=4404, reason=f"unknown model {ws.path_params['m']!r}")
            return
        sid = next(ids)
        state = model.zero_state()
        await ws.send_text(json.dumps({"sequence_id": sid, "model": model.name,
                                       "inputs": inputs_meta, "outputs": outputs_meta}))
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None:
                    await ws.send_text(json.dumps({"error": "expected a binary frame (one chunk)"}))
                    continue
                if not data or len(data) % frame_bytes:
                    await ws.send_text(json.dumps({"error": f"chunk of {len(data)} bytes is not a whole "
                                                            f"number (>= 1) of {frame_bytes}-byte frames"}))
                    continue
                chunk = np.frombuffer(data, model.data_dtype).reshape(-1, *model.frame_shape)
                # Run on the event loop, as the simplest service does: one core, nothing to overlap.
                await ws.send_bytes(model.run_chunk(chunk, state).astype("<f4", copy=False).tobytes())
        except WebSocketDisconnect:
            return

    async def infer(request):
        if request.path_params["m"] != model.name:
            return unknown_model(request.path_params["m"])
        try:
            body = json.loads(await request.body())
            params = body.get("parameters") or {}
            tensor = next(t for t in body["inputs"] if t["name"] == model.data_input)
            dtype = V2_DTYPES[tensor["datatype"]]
            data = np.asarray(tensor["data"], dtype).reshape(tensor["shape"])
        except (ValueError, KeyError, TypeError, StopIteration) as e:
            return JSONResponse({"error": f"malformed inference request: {type(e).__name__}: {e}"},
                                status_code=400)
        sid = params.get("sequence_id")
        if sid is None:
            state = model.zero_state()
        elif params.get("sequence_start"):
            state = sequences[sid] = model.zero_state()
        elif sid in sequences:
            state = sequences[sid]
        else:
            return JSONResponse({"error": f"unknown sequence {sid!r}"}, status_code=400)
        y = model.run_chunk(np.squeeze(data, model.batch_axis), state)
        if params.get("sequence_end"):
            sequences.pop(sid, None)
        y = np.expand_dims(y, model.batch_axis)
        return JSONResponse({"model_name": model.name, "parameters": params,
                             "outputs": [{"name": model.data_output, "datatype": "FP32",
                                          "shape": list(y.shape), "data": y.ravel().tolist()}]})

    async def ok(_request):
        return JSONResponse({})

    return Starlette(routes=[
        WebSocketRoute("/v2/models/{m}/stream", stream),
        Route("/v2/models/{m}/infer", infer, methods=["POST"]),
        Route("/v2/health/live", ok), Route("/v2/health/ready", ok),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="onnxruntime + Starlette/uvicorn peer of lstminfer serve")
    parser.add_argument("model", help="path of the .onnx model (served under its file stem)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    args = parser.parse_args(argv)
    import uvicorn

    try:
        model = load_model(args.model)
    except (OSError, ValueError) as e:
        print(f"serve_peer: {e}", file=sys.stderr)
        return 2
    # Bind here so that --port 0 can print the port the kernel chose.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)  # before the URL is printed: connections wait in the backlog, never refused
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(build_app(model), loop="uvloop", http="httptools", ws="auto",
                            log_level="warning", lifespan="off")
    print(f"http://{host}:{port}\nmodel {model.name}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
