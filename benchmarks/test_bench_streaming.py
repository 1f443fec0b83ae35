"""Streaming cost: ``Stream.step`` and ``StreamPool.step`` against onnxruntime with the state fed back.

    pytest benchmarks/test_bench_streaming.py --benchmark-json=stream.json
    python benchmarks/report.py stream.json

One LSTM node (``peers.onnx_model``: x, h0, c0 -> Y, Y_h, Y_c), T = 1 per step:

* ``step``: one stream. ort-1t runs the session with h0/c0 fed back from
  the previous call; lstminfer-stream is ``model.stream().step(x)``.
* ``pool64``: 64 open streams, one frame each per unit of work. ort-1t and
  lstminfer-stream step them one by one (each with its own state);
  lstminfer-pool steps them all with one ``StreamPool.step`` (-2t: the
  model loaded with ``threads=2``, the batch of streams split across both cores).

Issue targets (ort-1t time / lstminfer time, same run): step H=64 >= 6x,
H=256 >= 1.6x; pool64 H=64 >= 15x, H=256 >= 5x, and pool >= 3x the streams
one by one.
"""
from __future__ import annotations

import numpy as np
import pytest

from peers import onnx_model, time_short_calls

STREAMS = 64
HIDDEN = (64, 256)
CONFIGS = {"step": 1, "pool64": STREAMS}  # streams stepped per unit of work
PEERS = ("ort-1t", "lstminfer-stream", "lstminfer-pool", "lstminfer-pool-2t")


def _frames(hidden: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal((1, 1, hidden)).astype(np.float32) for _ in range(n)]


def ort_runner(hidden: int, n: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_model("LSTM", hidden).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    frames = _frames(hidden, n)
    states = [[np.zeros((1, 1, hidden), np.float32)] * 2 for _ in range(n)]

    if n == 1:  # one stream: the call itself, no loop around it (as for lstminfer-stream)
        x, state = frames[0], states[0]

        def run_one():
            _, state[0], state[1] = session.run(None, {"X": x, "h0": state[0], "c0": state[1]})

        return run_one

    def run():
        for x, state in zip(frames, states):
            _, state[0], state[1] = session.run(None, {"X": x, "h0": state[0], "c0": state[1]})

    return run


def stream_runner(hidden: int, n: int):
    import lstminfer

    model = lstminfer.load(onnx_model("LSTM", hidden))
    streams = [model.stream() for _ in range(n)]
    frames = _frames(hidden, n)
    if n == 1:
        return lambda: streams[0].step(frames[0])

    def run():
        for s, x in zip(streams, frames):
            s.step(x)

    return run


def pool_runner(hidden: int, n: int, threads: int = 1):
    import lstminfer

    pool = lstminfer.load(onnx_model("LSTM", hidden), threads=threads).stream_pool(n)
    frames = dict(zip([pool.open() for _ in range(n)], _frames(hidden, n)))
    return lambda: pool.step(frames)


RUNNERS = {"ort-1t": ort_runner, "lstminfer-stream": stream_runner, "lstminfer-pool": pool_runner,
           "lstminfer-pool-2t": lambda hidden, n: pool_runner(hidden, n, threads=2)}
PARAMS = [pytest.param(peer, hidden, config, id=f"LSTM-H{hidden}-{config}-{peer}")
          for config in CONFIGS for hidden in HIDDEN for peer in PEERS
          if not (peer.startswith("lstminfer-pool") and config == "step")]


@pytest.mark.parametrize("peer,hidden,config", PARAMS)
def test_streaming(benchmark, peer, hidden, config):
    n = CONFIGS[config]
    try:
        run = RUNNERS[peer](hidden, n)
    except ImportError as err:  # onnxruntime absent: that peer is simply missing
        pytest.skip(f"{peer} unavailable: {err}")
    run()  # first call outside the timing (plans, caches, the fast path's shape check)
    benchmark.group = f"LSTM-H{hidden}-{config}"
    benchmark.extra_info.update(op="LSTM", hidden=hidden, config=config, peer=peer, T=1, B=n,
                                flops=2 * 4 * hidden * 2 * hidden * n)
    time_short_calls(benchmark, run)
