"""The figures of ``lstminfer serve --ray`` (issue #21) on this machine, against ``lstminfer serve`` direct.

1. Ray's added latency per chunk: one WebSocket stream, one chunk in flight (``serve_load.py --rtt``),
   bundled ``adding_lstm`` (T=1), direct and through Ray Serve (proxy -> ingress -> owner replica).
2. Streams held in real time, scenario B (``serve_models.py b``: 2-layer LSTM H=256, T=10 every 100 ms;
   ``serve_load.py --search``), direct and on Ray with 1 and 2 owner replicas.
3. Time to move a stream: 200 streams open on 2 replicas, scaled to 1 (the drained replica parks its
   streams) and back to 2 (the new replica claims its share from the live holder); each replica times
   claim -> state in place, read from its metrics snapshot.

Local Ray only (``ray.init(num_cpus=2)``, loopback), bounded in time by ``serve_load.py``'s own limits.

    python benchmarks/ray_serve_figures.py [--skip-search] [--json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
sys.path.insert(0, str(ROOT))  # this checkout's lstminfer, as the Ray workers get it through PYTHONPATH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(url: str, model: str, *extra: str) -> dict:
    out = subprocess.run([PY, str(HERE / "serve_load.py"), url, "--model", model, "--json", *extra],
                         capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rtt(url: str, model: str) -> dict:
    r = _load(url, model, "--rtt", "--count", "2000", "--frames", "1")["server"]
    return {"median_ms": r["median_ms"], "p99_ms": r["p99_ms"]}


def _search_b(url: str, model: str) -> dict:
    r = _load(url, model, "--frames", "10", "--period-ms", "10", "--search", "--duration", "4", "--start", "16",
              "--resolution", "0.1")
    best = r["best"] or {}
    return {"streams_held": r["max_streams_held"], "p50_ms": best.get("p50_ms"), "p99_ms": best.get("p99_ms")}


class Direct:
    """``lstminfer serve MODEL...`` in a subprocess."""

    def __init__(self, models: list[str]):
        self.port = _free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([PY, "-m", "lstminfer", "serve", *models, "--port", str(self.port)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"lstminfer serve did not start: {line!r}")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _deploy(models: list[str], replicas: int) -> None:
    from ray import serve

    from lstminfer.ray.application import APP_NAME, build

    serve.run(build(models, replicas=replicas), name=APP_NAME, route_prefix="/", external_scaler_enabled=True)


def _owner_replicas() -> int:
    from ray import serve

    return serve.status().applications["lstminfer"].deployments["StreamOwner"].replica_states.get("RUNNING", 0)


def _wait(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the replicas did not reach their target")
        time.sleep(0.2)


def _move_times(url: str, streams: int = 200, one_at_a_time: bool = False, first_sid: int = 900_000) -> dict:
    """Open ``streams`` sequences over HTTP on 2 replicas, scale 2 -> 1 -> 2 stepping each after every change
    (all at once, or ``one_at_a_time``)."""
    import aiohttp
    from ray import serve

    from lstminfer.ray.application import scale_owners

    async def step_all(session, start: bool, one_at_a_time: bool = False):
        body = lambda sid: {"parameters": {"sequence_id": sid, "sequence_start": start},  # noqa: E731
                            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 2], "data": [0.5, 0.5]}]}
        async def one(sid):
            async with session.post(f"{url}/v2/models/adding_lstm/infer", json=body(sid)) as r:
                assert r.status == 200, await r.text()
        if one_at_a_time:  # each move alone: its own time, not a queue at the directory
            for i in range(streams):
                await one(first_sid + i)
        else:
            await asyncio.gather(*(one(first_sid + i) for i in range(streams)))

    directory = serve.get_deployment_handle("StreamDirectory", "lstminfer")

    def moves() -> int:
        time.sleep(1.5)  # the replicas' next snapshots
        snapshots = directory.metrics.remote().result()
        return sum(replica["moves"] for replica in snapshots.values())

    async def run():
        async with aiohttp.ClientSession() as session:
            await step_all(session, True)
            scale_owners(1)
            await asyncio.to_thread(_wait, lambda: _owner_replicas() == 1)
            await step_all(session, False, one_at_a_time)
            after_down = await asyncio.to_thread(moves)
            scale_owners(2)
            await asyncio.to_thread(_wait, lambda: _owner_replicas() == 2)
            await asyncio.sleep(2)  # the routers see the new replica
            await step_all(session, False, one_at_a_time)
            return after_down, await asyncio.to_thread(moves)

    after_down, after_up = asyncio.run(run())
    snapshots = directory.metrics.remote().result()
    seconds = [s for replica in snapshots.values() for s in replica["move_seconds"]]
    seconds = np.asarray(seconds) * 1e3
    return {"moves": int(seconds.size), "moves_2_to_1": after_down, "moves_1_to_2": after_up - after_down,
            "p50_ms": round(float(np.median(seconds)), 3) if seconds.size else None,
            "p99_ms": round(float(np.percentile(seconds, 99)), 3) if seconds.size else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-search", action="store_true", help="only the round trips and the move times")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import ray
    from ray import serve

    sys.path.insert(0, str(HERE))
    from serve_models import SCENARIOS, export_lstm

    from lstminfer import models as bundled

    tmp = Path(tempfile.mkdtemp(prefix="ray_figures_"))
    scenario = SCENARIOS["b"]
    b_path = str(tmp / scenario.file_name)
    export_lstm(Path(b_path), scenario.layers, scenario.hidden)
    b_name = Path(b_path).stem
    specs = [f"adding_lstm={bundled.path('adding_lstm')}", f"{b_name}={b_path}"]
    figures: dict = {}

    direct = Direct(specs)
    try:
        figures["rtt_direct"] = _rtt(direct.url, "adding_lstm")
        if not args.skip_search:
            figures["b_direct"] = _search_b(direct.url, b_name)
    finally:
        direct.stop()

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        for replicas in ((1, 2) if not args.skip_search else (2,)):
            _deploy(specs, replicas)
            if replicas == 2:
                figures["rtt_ray"] = _rtt(url, "adding_lstm")
            if not args.skip_search:
                figures[f"b_ray_{replicas}"] = _search_b(url, b_name)
        figures["move"] = _move_times(url)
        _deploy(specs, 2)  # fresh replicas: their move counts start at 0
        figures["move_alone"] = _move_times(url, one_at_a_time=True, first_sid=800_000)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(figures))
    if not args.json:
        d, r = figures["rtt_direct"], figures["rtt_ray"]
        print(f"round trip, one stream (ms p50/p99): direct {d['median_ms']:.3f}/{d['p99_ms']:.3f}, "
              f"Ray {r['median_ms']:.3f}/{r['p99_ms']:.3f}, added {r['median_ms'] - d['median_ms']:.3f} ms p50")
        for key in ("b_direct", "b_ray_1", "b_ray_2"):
            if key in figures:
                print(f"scenario B {key}: {figures[key]}")
        print(f"moves, all at once: {figures['move']}")
        print(f"moves, one at a time: {figures['move_alone']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
