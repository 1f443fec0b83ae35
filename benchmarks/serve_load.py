"""Load generator for ``lstminfer serve`` and its peer: N live WebSocket streams in real time.

A separate process on one core (asyncio, uvloop when installed, the ``websockets``
client, no compression, no pings), loopback only, bounded in streams (``--max-streams``)
and time (``--duration`` per run, a hard stop for the whole command). It speaks the
stream protocol of ``ws://HOST:PORT/v2/models/{m}/stream``: reads the header text frame,
then sends binary chunks ``[T, features...]`` and expects one binary reply per chunk.
The websockets client opens each stream (handshake and header); after that the stream's
transport is handed to a small protocol that sends one frame masked in advance and parses
replies in its callback, with no task or future per message, so the generator stays far
below the servers' cost per chunk.

Modes:

* default: N streams, each sending a chunk of T frames every ``T * period`` ms, start
  times spread evenly over that interval, for ``--duration`` s. A chunk's latency is
  from its *scheduled* send time to its reply (a generator or socket falling behind
  counts against the server, not hidden). The run *held real time* when p99 <= 100 ms,
  no chunk was sent more than 100 ms late, every chunk got its reply and none was an error.
* ``--search``: the largest N held in real time: doubling from ``--start``, then
  bisection to within ``--resolution`` (each run ``--duration``, default 5 s).
* ``--rtt``: one stream, one chunk at a time (send, wait for the reply, repeat): the
  round-trip median; with ``--echo-url`` the same against a bare echo server in alternating
  blocks, and the server's share of the round trip (the median over blocks of the server's
  block median minus the echo's beside it: drift during the run hits both alike).
* ``--echo``: serve that bare echo server (websockets, uvloop) and print its URL.

``--server-pid PID`` adds the server's CPU seconds per chunk (utime + stime from
``/proc/PID/stat`` around the timed window); ``--batch-metrics`` the mean streams per pool
step of ``lstminfer serve`` (its ``lstminfer_batch_size`` histogram at ``/metrics``). Output: one JSON line, then a short table
(``--json`` for the JSON line only).

Examples::

    taskset -c 0 python benchmarks/serve_peer.py A.onnx --port 0    # prints its URL
    taskset -c 1 python benchmarks/serve_load.py http://127.0.0.1:PORT --model A \\
        --frames 1 --period-ms 20 --search --server-pid PID
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit, urlunsplit

import numpy as np

REALTIME_P99_S = 0.100  # the real-time bound on a chunk's latency
LATE_SEND_S = 0.100  # a chunk sent later than this after its schedule marks the run as not held
REPLY_GRACE_S = 1.0  # after the last chunk's schedule, how long replies are awaited
CONNECT_TIMEOUT_S = 30.0
CONNECT_CONCURRENCY = 64  # handshakes in flight at once
SEND_SLACK_S = 0.0005  # chunks due within this are sent in the same wake-up
V2_DTYPES = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4",
             "INT16": "<i2", "INT8": "i1", "UINT8": "u1", "BOOL": "?"}


class LoadError(Exception):
    """A run that cannot be made as asked (bad URL, refused host, bad header)."""


# ------------------------------------------------------------------ URLs --

def stream_url(url: str, model: str | None) -> str:
    """The ``ws://`` stream URL from a base ``http(s)://``/``ws://`` URL and a model name,
    or a full stream URL; refuses any host that is not loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws"):
        raise LoadError(f"URL scheme must be http or ws (loopback, no TLS); got {url!r}")
    host = parts.hostname or ""
    if not is_loopback(host):
        raise LoadError(f"refusing host {host!r}: the load generator only targets loopback "
                        f"(127.0.0.0/8, ::1, localhost)")
    path = parts.path.rstrip("/")
    if model:
        path = f"{path}/v2/models/{model}/stream"
    elif not path.endswith("/stream"):
        raise LoadError(f"give --model or a full stream URL (.../v2/models/NAME/stream); got {url!r}")
    return urlunsplit(("ws", parts.netloc, path, parts.query, ""))


def metrics_endpoint(stream: str) -> str:
    """The server's ``/metrics`` URL beside a stream URL."""
    parts = urlsplit(stream)
    return urlunsplit(("http", parts.netloc, "/metrics", "", ""))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -------------------------------------------------------------- payloads --

def chunk_for(stream: int, frames: int, frame_shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """The chunk stream ``stream`` sends every time: ``[frames, *frame_shape]``, seeded by (seed, stream)."""
    rng = np.random.default_rng([seed, stream])
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal((frames, *frame_shape)).astype(dt)
    return rng.integers(0, 2, (frames, *frame_shape)).astype(dt)


def parse_header(text) -> tuple[tuple[int, ...], str, int]:
    """(frame shape, little-endian dtype, reply bytes per frame) from the stream's header frame."""
    try:
        header = json.loads(text)
        data_in, data_out = header["inputs"][0], header["outputs"][0]
        in_shape, out_shape = data_in["shape"], data_out["shape"]
        if in_shape[0] != -1 or out_shape[0] != -1:
            raise ValueError(f"time axis must be -1 first; got inputs {in_shape}, outputs {out_shape}")
        out_frame = int(np.prod(out_shape[1:], dtype=np.int64)) * np.dtype(V2_DTYPES[data_out["datatype"]]).itemsize
        return tuple(int(d) for d in in_shape[1:]), V2_DTYPES[data_in["datatype"]], out_frame
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise LoadError(f"bad stream header (expected JSON with inputs/outputs [-1, ...]): "
                        f"{type(e).__name__}: {e}; got {str(text)[:200]!r}") from None


# ---------------------------------------------------------------- results --

@dataclass
class LoadResult:
    streams: int
    frames: int
    period_ms: float
    duration_s: float
    chunks_sent: int = 0
    chunks_answered: int = 0
    errors: int = 0
    late_sends: int = 0
    first_error: str = ""
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    max_send_lag_ms: float = 0.0
    chunks_per_s: float = 0.0
    frames_per_s: float = 0.0
    server_cpu_us_per_chunk: float | None = None
    mean_batch_size: float | None = None  # from the server's /metrics (lstminfer_batch_size), when asked
    client_cpu_util: float = 0.0  # the generator's CPU seconds per wall second (near 1: it may limit)
    held: bool = False
    replies: list = field(default_factory=list, repr=False)  # per stream: the reply bytes (keep_replies)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("replies")
        # NaN (no reply at all) becomes null: the JSON line stays strict JSON.
        return {k: (None if v != v else round(v, 3)) if isinstance(v, float) else v for k, v in out.items()}


async def _connect(url: str):
    from websockets.asyncio.client import connect

    # No compression and no pings: neither is part of what is measured.
    return await connect(url, compression=None, ping_interval=None, max_queue=None, open_timeout=CONNECT_TIMEOUT_S)


async def _open_ws(url: str, index: int, frames: int, seed: int):
    """(websockets connection, this stream's chunk bytes, reply bytes per chunk) after the header."""
    ws = await _connect(url)
    try:
        frame_shape, dtype, out_frame = parse_header(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S))
    except BaseException:
        await ws.close()
        raise
    return ws, chunk_for(index, frames, frame_shape, dtype, seed).tobytes(), frames * out_frame


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One whole client frame (FIN, masked as RFC 6455 requires of clients) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    key = np.frombuffer((mask * (n // 4 + 1))[:n], np.uint8)
    return head + mask + (np.frombuffer(payload, np.uint8) ^ key).tobytes()


class _FastStream(asyncio.Protocol):
    """One stream's hot path after the websockets handshake: the same frame sent every time
    (masked once, in advance), replies parsed in ``data_received`` without a task or a
    future per message. Handles what a server may send: binary/text messages, ping, close."""

    def __init__(self, transport, frame: bytes, reply_bytes: int, keep: bool):
        self.transport, self.frame, self.reply_bytes = transport, frame, reply_bytes
        self.buffer = bytearray()
        self.due: list[float] = []  # scheduled send times, in order (replies come in order)
        self.latencies: list[float] = []
        self.expected = 0
        self.answered = self.errors = 0
        self.first_error = ""
        self.replies = [] if keep else None
        self.done = asyncio.get_running_loop().create_future()

    def send(self, due: float) -> None:
        self.due.append(due)
        self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        clock = time.monotonic
        while True:
            size = len(buf)
            if size < 2:
                return
            length, start = buf[1] & 0x7F, 2
            if length == 126:
                if size < 4:
                    return
                length, start = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if size < 10:
                    return
                length, start = int.from_bytes(buf[2:10], "big"), 10
            end = start + length
            if size < end:
                return
            first = buf[0]
            opcode = first & 0x0F
            if opcode == 0x2 and first & 0x80 and length == self.reply_bytes and self.answered < len(self.due):
                self.latencies.append(clock() - self.due[self.answered])
                if self.replies is not None:
                    self.replies.append(bytes(buf[start:end]))
                self._answered()
            elif opcode == 0x9:  # ping: answer with a pong carrying its payload
                self.transport.write(masked_frame(bytes(buf[start:end]), 0xA))
            elif opcode == 0x8:
                self._fail(f"server closed the stream: {bytes(buf[start:end])!r}")
            elif opcode != 0xA:
                body = bytes(buf[start:end])
                self.errors += 1
                self._fail(body.decode("utf-8", "replace")[:200] if opcode == 0x1 else
                           f"reply frame opcode {opcode} fin {first >> 7} of {length} bytes, "
                           f"expected one binary frame of {self.reply_bytes}")
                self._answered()
            del buf[:end]

    def _answered(self) -> None:
        self.answered += 1
        if self.answered >= self.expected and not self.done.done():
            self.done.set_result(None)

    def _fail(self, message: str) -> None:
        if not self.first_error:
            self.first_error = message

    def connection_lost(self, exc) -> None:
        if self.answered < self.expected:
            self._fail(f"connection lost after {self.answered} replies: {exc}")
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(masked_frame((1000).to_bytes(2, "big"), 0x8))
            self.transport.close()


async def _open_fast(url: str, index: int, frames: int, seed: int, keep: bool) -> _FastStream:
    """Handshake and header through the websockets client, then its transport to a _FastStream."""
    ws, payload, reply_bytes = await _open_ws(url, index, frames, seed)
    stream = _FastStream(ws.transport, masked_frame(payload), reply_bytes, keep)
    ws.transport.set_protocol(stream)  # the server sends nothing after the header until a chunk comes
    return stream


BATCH_METRIC = "lstminfer_batch_size"  # the histogram of streams per pool step


def histogram_totals(metrics_text: str, name: str = BATCH_METRIC) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram in text format, added over its label sets."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def _fetch_batch_totals(metrics_url: str) -> tuple[float, float]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            return histogram_totals(response.read().decode("utf-8", "replace"))
    except (OSError, urllib.error.URLError) as e:
        raise LoadError(f"cannot read the server's metrics at {metrics_url}: {e}") from None


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def run_load(url: str, streams: int, frames: int, period_ms: float, duration_s: float, *,
                   seed: int = 0, server_pid: int | None = None, metrics_url: str | None = None,
                   keep_replies: bool = False) -> LoadResult:
    """N streams (``url``: the stream URL) in real time for ``duration_s``; see the module doc."""
    if streams < 1 or frames < 1 or period_ms <= 0 or duration_s <= 0:
        raise LoadError(f"need streams >= 1, frames >= 1, period_ms > 0, duration_s > 0; got "
                        f"{streams}, {frames}, {period_ms}, {duration_s}")
    result = LoadResult(streams, frames, period_ms, duration_s)
    interval = frames * period_ms / 1000.0
    per_stream = max(1, int(duration_s / interval))
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one(i: int) -> _FastStream:
        async with gate:
            return await _open_fast(url, i, frames, seed, keep_replies)

    opened = await asyncio.gather(*(open_one(i) for i in range(streams)), return_exceptions=True)
    live = [o for o in opened if not isinstance(o, BaseException)]
    try:
        failed = [o for o in opened if isinstance(o, BaseException)]
        if not live:
            raise LoadError(f"no stream opened ({streams} tried): {failed[0]!r}")
        if failed:  # a server refusing streams under load: the run is not held, and says why
            result.errors += len(failed)
            result.first_error = f"{len(failed)} of {streams} streams failed to open: {failed[0]!r}"
        for s in live:
            s.expected = per_stream
        batches0 = await asyncio.to_thread(_fetch_batch_totals, metrics_url) if metrics_url else None
        cpu0, proc0 = (_cpu_seconds(server_pid) if server_pid else 0.0), time.process_time()
        start = time.monotonic() + 0.05
        offsets = [start + i * interval / streams for i in range(streams)]
        sent = late = 0
        max_lag = 0.0
        clock, sleep = time.monotonic, asyncio.sleep
        for k in range(per_stream):  # every stream once per interval, in offset order
            base = k * interval
            for s, offset in zip(live, offsets):
                due = offset + base
                now = clock()
                if due - now > SEND_SLACK_S:
                    await sleep(due - now)
                    now = clock()
                s.send(due)
                lag = now - due
                if lag > max_lag:
                    max_lag = lag
                if lag > LATE_SEND_S:
                    late += 1
            sent += len(live)
        last_due = offsets[-1] + (per_stream - 1) * interval
        wait = max(0.0, last_due + REPLY_GRACE_S - clock())
        await asyncio.wait([s.done for s in live], timeout=wait)
        end = clock()
        cpu1, proc1 = (_cpu_seconds(server_pid) if server_pid else 0.0), time.process_time()
        batches1 = await asyncio.to_thread(_fetch_batch_totals, metrics_url) if metrics_url else None
    finally:
        for s in live:
            s.close()

    lat = np.concatenate([np.asarray(s.latencies) for s in live]) * 1000.0
    result.chunks_sent, result.late_sends, result.max_send_lag_ms = sent, late, max_lag * 1000.0
    result.chunks_answered = sum(s.answered for s in live)
    result.errors += sum(s.errors for s in live)
    result.first_error = result.first_error or next((s.first_error for s in live if s.first_error), "")
    wall = end - start
    if lat.size:
        result.p50_ms, result.p99_ms = (float(v) for v in np.percentile(lat, [50, 99]))
        result.max_ms = float(lat.max())
    result.chunks_per_s = lat.size / wall
    result.frames_per_s = result.chunks_per_s * frames
    result.client_cpu_util = (proc1 - proc0) / wall
    if server_pid and lat.size:
        result.server_cpu_us_per_chunk = (cpu1 - cpu0) / lat.size * 1e6
    if batches0 and batches1 and batches1[1] > batches0[1]:
        result.mean_batch_size = (batches1[0] - batches0[0]) / (batches1[1] - batches0[1])
    result.held = (len(live) == streams and lat.size == sent and result.errors == 0 and late == 0
                   and result.p99_ms <= REALTIME_P99_S * 1000.0)
    if keep_replies:
        result.replies = [s.replies for s in live]
    return result


class Bisection:
    """The search for the largest N held, one run at a time: ``next()`` is the N to run (None: done),
    ``record(n, held)`` its outcome. Doubling from ``start``, then bisection to within ``resolution``
    of N; an N counts as not held only after ``tries`` runs that did not hold it (a machine shared with
    other work has bursts). Step-wise so that several servers' searches can take turns
    (``serve_compare.py --interleave``: the machine's drift then hits every server alike)."""

    def __init__(self, start: int = 16, max_streams: int = 4096, resolution: float = 0.05, max_runs: int = 16,
                 tries: int = 1):
        self.max_streams, self.resolution, self.max_runs, self.tries = max_streams, resolution, max_runs, max(1, tries)
        self.lo, self.hi, self.n = 0, None, max(1, min(start, max_streams))
        self.runs = 0
        self.best_n = 0
        self._failed_at_n = 0
        self._doubling = True
        self._done = False

    def next(self) -> int | None:
        return None if self._done or self.runs >= self.max_runs else self.n

    def record(self, n: int, held: bool) -> None:
        if n != self.n:
            raise ValueError(f"recorded N={n}, but the search asked for {self.n}")
        self.runs += 1
        if held:
            self.best_n = max(self.best_n, n)
            self._failed_at_n = 0
            self.lo = n
            if self._doubling:
                if n >= self.max_streams:
                    self._done = True
                    return
                self.n = min(2 * n, self.max_streams)
                return
        else:
            self._failed_at_n += 1
            if self._failed_at_n < self.tries:
                return  # the same N again
            self._failed_at_n = 0
            self.hi = n
            self._doubling = False
        if self.hi is None or self.hi - self.lo <= max(1, int(self.lo * self.resolution)):
            self._done = True
            return
        self.n = (self.lo + self.hi) // 2


async def search(url: str, frames: int, period_ms: float, duration_s: float, *, start: int = 16,
                 max_streams: int = 4096, resolution: float = 0.05, max_runs: int = 16, tries: int = 1,
                 server_pid: int | None = None, metrics_url: str | None = None, progress=None) -> tuple[LoadResult | None, list[LoadResult]]:
    """The largest N held in real time (``Bisection``) and every run made; (None, runs) when even
    ``start`` is not held."""
    runs: list[LoadResult] = []
    best: LoadResult | None = None
    steps = Bisection(start, max_streams, resolution, max_runs, tries)
    while (n := steps.next()) is not None:
        r = await run_load(url, n, frames, period_ms, duration_s, server_pid=server_pid, metrics_url=metrics_url)
        runs.append(r)
        if progress:
            progress(r)
        await asyncio.sleep(0.5)  # let the server release the closed streams before the next run
        steps.record(n, r.held)
        if r.held and (best is None or n > best.streams):
            best = r
    return best, runs


async def _warm_up(ws, payload: bytes, chunks: int = 50) -> None:
    for _ in range(chunks):
        await ws.send(payload)
        await ws.recv()


async def _timed_chunks(ws, payload: bytes, count: int, stop: float | None = None) -> list[float]:
    """Seconds of each of ``count`` round trips, one chunk in flight (fewer once one ends past ``stop``)."""
    clock = time.perf_counter
    times = []
    for _ in range(count):
        t0 = clock()
        await ws.send(payload)
        reply = await ws.recv()
        times.append(clock() - t0)
        if isinstance(reply, str):
            raise LoadError(f"server answered a chunk with an error: {reply[:200]}")
        if stop is not None and times[-1] + t0 > stop:
            break
    return times


def _round_trip_summary(url: str, seconds: list[float]) -> dict:
    t = np.asarray(seconds) * 1000.0
    return {"url": url, "chunks": int(t.size), "median_ms": float(np.median(t)),
            "p99_ms": float(np.percentile(t, 99)), "min_ms": float(t.min())}


async def round_trip(url: str, frames: int, count: int, duration_s: float, seed: int = 0) -> dict:
    """One stream, one chunk in flight: round-trip median/p99 in ms over ``count`` chunks
    (or ``duration_s``, whichever comes first), after 50 unmeasured warm-up chunks."""
    ws, payload, _ = await _open_ws(url, 0, frames, seed)
    try:
        await _warm_up(ws, payload)
        times = await _timed_chunks(ws, payload, count, time.perf_counter() + duration_s)
    finally:
        await ws.close()
    return _round_trip_summary(url, times)


async def interleaved_round_trips(server_url: str, echo_url: str, frames: int, count: int, duration_s: float,
                                  seed: int = 0, blocks: int = 10) -> dict:
    """The server's share of a one-stream round trip: ``count`` chunks on each of the two connections in
    ``blocks`` alternating blocks (server, echo, server, ...), so that the machine's drift within the run
    (the bare echo server's own median moved 0.11-0.18 ms between runs) hits both alike; the share is the
    median over blocks of (server block median - the echo block's beside it)."""
    conns = [await _open_ws(server_url, 0, frames, seed), await _open_ws(echo_url, 0, frames, seed)]
    times: list[list[list[float]]] = [[], []]  # connection -> blocks -> seconds
    per_block = max(1, count // blocks)
    try:
        for ws, payload, _ in conns:
            await _warm_up(ws, payload)
        stop = time.perf_counter() + duration_s
        for _ in range(blocks):
            for k, (ws, payload, _) in enumerate(conns):
                times[k].append(await _timed_chunks(ws, payload, per_block))
            if time.perf_counter() > stop:
                break
    finally:
        for ws, _, _ in conns:
            await ws.close()
    shares = [1000.0 * (np.median(a) - np.median(b)) for a, b in zip(*times)]
    return {"server": _round_trip_summary(server_url, [t for block in times[0] for t in block]),
            "echo": _round_trip_summary(echo_url, [t for block in times[1] for t in block]),
            "server_share_ms": float(np.median(shares)), "blocks": len(shares)}


# ------------------------------------------------------------ echo server --

async def echo_server(host: str, port: int, features: int, ready=None) -> None:
    """A bare WebSocket echo server: the stream header for ``[T, features]`` float32, then
    every message sent back unchanged. Runs until cancelled."""
    from websockets.asyncio.server import serve

    header = json.dumps({"sequence_id": 0, "model": "echo",
                         "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, features]}],
                         "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, features]}]})

    async def echo(ws) -> None:
        await ws.send(header)
        async for message in ws:
            await ws.send(message)

    if not is_loopback(host):
        raise LoadError(f"refusing to bind {host!r}: the echo server is loopback only")
    async with serve(echo, host, port, compression=None, ping_interval=None) as server:
        bound = next(iter(server.sockets)).getsockname()
        if ready:
            ready(f"ws://{bound[0]}:{bound[1]}/v2/models/echo/stream")
        await asyncio.Future()


# ------------------------------------------------------------------- CLI --

def _table(rows: list[LoadResult]) -> str:
    head = f"{'streams':>8} {'T':>3} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'chunks/s':>9} " \
           f"{'srv us/chunk':>12} {'batch':>6} {'client cpu':>10} {'held':>5}"
    lines = [head]
    for r in rows:
        cpu = f"{r.server_cpu_us_per_chunk:.1f}" if r.server_cpu_us_per_chunk is not None else "-"
        batch = f"{r.mean_batch_size:.1f}" if r.mean_batch_size is not None else "-"
        lines.append(f"{r.streams:>8} {r.frames:>3} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.max_ms:>8.2f} "
                     f"{r.chunks_per_s:>9.0f} {cpu:>12} {batch:>6} {r.client_cpu_util:>10.2f} "
                     f"{'yes' if r.held else 'no':>5}")
    return "\n".join(lines)


def _raise_fd_limit(streams: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, streams + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if streams + 64 > want:
        raise LoadError(f"{streams} streams need ~{streams + 64} file descriptors; the limit is {want}")


def _run(coro):
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", help="server base URL (with --model) or a full stream URL")
    parser.add_argument("--model", help="model name: the stream URL is URL/v2/models/MODEL/stream")
    parser.add_argument("--streams", "-n", type=int, default=16)
    parser.add_argument("--frames", "-t", type=int, default=1, help="frames per chunk (T)")
    parser.add_argument("--period-ms", type=float, default=20.0, help="real time of one frame")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-pid", type=int, help="measure this process's CPU per chunk")
    parser.add_argument("--batch-metrics", action="store_true",
                        help="mean streams per pool step from the server's /metrics (lstminfer serve)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--search", action="store_true", help="find the largest N held in real time")
    mode.add_argument("--rtt", action="store_true", help="one stream, one chunk in flight: round trip")
    mode.add_argument("--echo", action="store_true", help="serve a bare echo server and print its URL")
    parser.add_argument("--start", type=int, default=16, help="--search: first N")
    parser.add_argument("--max-streams", type=int, default=4096, help="never more streams than this")
    parser.add_argument("--resolution", type=float, default=0.05, help="--search: stop within this of N")
    parser.add_argument("--tries", type=int, default=1, help="--search: runs at one N before it counts as not held")
    parser.add_argument("--count", type=int, default=2000, help="--rtt: chunks measured")
    parser.add_argument("--echo-url", help="--rtt: the echo server's URL, measured too and subtracted")
    parser.add_argument("--host", default="127.0.0.1", help="--echo: bind address (loopback only)")
    parser.add_argument("--port", type=int, default=0, help="--echo: port (0: a free one, printed)")
    parser.add_argument("--features", type=int, default=40, help="--echo: features per frame in its header")
    parser.add_argument("--hard-stop", type=float, default=600.0, help="seconds before the command gives up")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    try:
        if args.echo:
            _run(echo_server(args.host, args.port, args.features, ready=lambda u: print(u, flush=True)))
            return 0
        if not args.url:
            raise LoadError("a server URL is required (except with --echo)")
        if not 0 < args.duration <= args.hard_stop:
            raise LoadError(f"--duration must be in (0, --hard-stop={args.hard_stop}]; got {args.duration}")
        if not 1 <= args.streams <= args.max_streams:
            raise LoadError(f"--streams must be in [1, --max-streams={args.max_streams}]; got {args.streams}")
        url = stream_url(args.url, args.model)
        _raise_fd_limit(max(args.streams, args.max_streams if args.search else 0))
        out = _run(asyncio.wait_for(_dispatch(args, url), args.hard_stop))
    except LoadError as e:
        print(f"serve_load: {e}", file=sys.stderr)
        return 2
    except (asyncio.TimeoutError, TimeoutError):
        print(f"serve_load: hard stop after {args.hard_stop} s", file=sys.stderr)
        return 3
    except OSError as e:
        print(f"serve_load: {e}", file=sys.stderr)
        return 2
    record, rows = out
    print(json.dumps(record), flush=True)
    if not args.json and rows:
        print(_table(rows))
    if not args.json and record["mode"] == "rtt":
        print(_rtt_table(record))
    return 0


def _rtt_table(record: dict) -> str:
    lines = [f"{'round trip':<12} {'median ms':>10} {'p99 ms':>8} {'chunks':>7}"]
    for who in ("server", "echo"):
        if who in record:
            r = record[who]
            lines.append(f"{who:<12} {r['median_ms']:>10.3f} {r['p99_ms']:>8.3f} {r['chunks']:>7}")
    if "server_share_ms" in record:
        lines.append(f"{'server share':<12} {record['server_share_ms']:>10.3f}")
    return "\n".join(lines)


async def _dispatch(args, url: str) -> tuple[dict, list[LoadResult]]:
    if args.rtt:
        if args.echo_url:
            return {"mode": "rtt", "frames": args.frames, **await interleaved_round_trips(
                url, stream_url(args.echo_url, None), args.frames, args.count, args.duration, args.seed)}, []
        return {"mode": "rtt", "frames": args.frames,
                "server": await round_trip(url, args.frames, args.count, args.duration, args.seed)}, []
    metrics = metrics_endpoint(url) if args.batch_metrics else None
    if args.search:
        show = None if args.json else (lambda r: print(_table([r]).splitlines()[1], file=sys.stderr, flush=True))
        best, runs = await search(url, args.frames, args.period_ms, args.duration, start=args.start,
                                  max_streams=args.max_streams, resolution=args.resolution, tries=args.tries,
                                  server_pid=args.server_pid, metrics_url=metrics, progress=show)
        record = {"mode": "search", "url": url, "max_streams_held": best.streams if best else 0,
                  "best": best.summary() if best else None, "runs": [r.summary() for r in runs]}
        return record, ([best] if best else [])
    r = await run_load(url, args.streams, args.frames, args.period_ms, args.duration, seed=args.seed,
                       server_pid=args.server_pid, metrics_url=metrics)
    return {"mode": "run", "url": url, **r.summary()}, [r]


if __name__ == "__main__":
    sys.exit(main())
