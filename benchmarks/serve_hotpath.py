"""The WebSocket stream's per-chunk cost in process, without sockets: what the server's Python adds to a pool step.

N ``StreamConnection``s on fake transports (their writes counted, not sent) are fed one masked
client frame each per round, as ``data_received`` would be; the round ends when every reply
is written. Reports CPU microseconds per chunk (``time.process_time``: both threads) of the
whole path, of a bare ``StreamPool.step`` of the same batch, and their difference: the
frame parsing, batching and reply writing that the kernel-side (syscall) cost adds to.

    python benchmarks/serve_hotpath.py MODEL.onnx --streams 400 --rounds 200 [--quantize int8]

Each connection takes the express lane as in the server (whole binary chunks queued, stepped and
answered in C); ``--python-path`` leaves it out: every chunk through the Python path.

``INLINE=US`` in the environment sets the batcher's ``inline_below_us`` (e.g. 1000000000: every step on
the loop, as a server confined to one core does; unset: the library's default, 50).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lstminfer  # noqa: E402
from lstminfer.serve.sequences import SequenceManager  # noqa: E402
from lstminfer.serve.stream_connection import StreamConnection  # noqa: E402


INLINE = int(os.environ["INLINE"]) if os.environ.get("INLINE") else None


class _Transport:
    """The transport calls a StreamConnection makes, counting what is written."""

    written = 0  # frames written by every connection
    wanted = 0
    done: asyncio.Future | None = None

    def write(self, data):
        cls = _Transport
        cls.written += 1
        if cls.written >= cls.wanted and cls.done is not None and not cls.done.done():
            cls.done.set_result(None)

    def is_closing(self):
        return False

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        pass

    def abort(self):
        pass


def masked(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    mask = os.urandom(4)
    key = np.frombuffer((mask * (n // 4 + 1))[:n], np.uint8)
    return head + mask + (np.frombuffer(payload, np.uint8) ^ key).tobytes()


async def run(model, streams: int, rounds: int, frames: int, features: int, express: bool) -> dict:
    manager = SequenceManager(model, max_streams=streams, **({"inline_below_us": INLINE} if INLINE is not None else {}))
    x = np.random.default_rng(0).standard_normal((frames, features)).astype(np.float32)
    frame = masked(x.tobytes())
    connections = []
    for sid in range(streams):
        manager.start(sid)
        manager.hold(sid)
        transport = _Transport()
        connection = StreamConnection(
            transport, manager, sid, max_size=1 << 20, close_wait_s=1.0,
            on_binary=lambda p: np.frombuffer(p, np.float32).reshape(1, frames, features),
            on_reply=lambda y: y.tobytes(), on_text=None, on_error=lambda e, n: (None, str(e)),
            count_frame=lambda a, b: None, lost=lambda exc: None)
        if express:
            connection.express = manager.express_stream(sid, connection, transport.write, features, 1 << 20,
                                                        lambda *counts: None)
        connections.append(connection)
    loop = asyncio.get_running_loop()

    async def one_round(target: int):
        _Transport.wanted, _Transport.done = target * streams, loop.create_future()
        for c in connections:
            c.data_received(frame)
        await _Transport.done

    await one_round(1)  # warm up: plan, buffers
    cpu, wall = time.process_time(), time.perf_counter()
    for r in range(rounds):
        await one_round(r + 2)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    chunks = streams * rounds

    pool = model.stream_pool(streams)
    ids = [pool.open() for _ in range(streams)]
    batch = {i: x[None] for i in ids}
    pool.step(batch)
    bare = time.process_time()
    for _ in range(rounds):
        pool.step(batch)
    bare = time.process_time() - bare
    await manager.aclose()
    return {"streams": streams, "frames": frames, "cpu_us_per_chunk": 1e6 * cpu / chunks,
            "bare_step_us_per_chunk": 1e6 * bare / chunks, "python_us_per_chunk": 1e6 * (cpu - bare) / chunks,
            "mean_batch": manager.stats.mean_batch_size, "wall_us_per_chunk": 1e6 * wall / chunks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--quantize", choices=("int8",))
    parser.add_argument("--python-path", action="store_true", help="no express lane: every chunk the Python way")
    args = parser.parse_args()
    model = lstminfer.load(args.model, quantize=args.quantize) if args.quantize else lstminfer.load(args.model)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(model, args.streams, args.rounds, args.frames, args.features, not args.python_path))
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
