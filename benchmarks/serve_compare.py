"""The issue's head-to-head of ``lstminfer serve`` and its peer, every server with its defaults, in one run.

For each scenario (``a``: T=1 every 20 ms; ``b``: T=10 every 100 ms) and each server (the peer,
``lstminfer serve``, ``lstminfer serve --quantize int8``), in turn, ``--repeat`` times: the
server on core ``--server-core``, ``serve_load.py --search`` on core ``--load-core``, its JSON
line kept. ``--rtt`` adds the one-stream round trip of each server and of the bare echo server.
Writes one JSON line per measurement to ``--out`` and a summary table to stdout.

    python benchmarks/serve_compare.py --scenarios a b --repeat 2 --out /tmp/compare.jsonl

``--interleave`` starts every server at once instead and lets their searches take turns, one run
each: on a host whose speed drifts within minutes, every server then sees the same drift.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
SCENARIOS = {"a": {"frames": 1, "period_ms": 20.0, "start": 128}, "b": {"frames": 10, "period_ms": 10.0, "start": 64}}
SERVERS = {"peer": None, "serve": [], "serve-int8": ["--quantize", "int8"]}


def _model(scenario: str, out: Path) -> Path:
    path = subprocess.run([PY, str(HERE / "serve_models.py"), scenario, "--out", str(out)], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return Path(path)


def _start(server: str, model: Path, core: int) -> tuple[subprocess.Popen, str]:
    if server == "peer":
        cmd = [PY, str(HERE / "serve_peer.py"), str(model), "--port", "0"]
    elif server == "echo":
        cmd = [PY, str(HERE / "serve_load.py"), "--echo"]
    else:
        cmd = [PY, "-m", "lstminfer", "serve", str(model), "--port", "0", *SERVERS[server]]
    proc = subprocess.Popen(["taskset", "-c", str(core), *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=HERE.parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        for word in line.split():
            if word.startswith(("http://", "ws://")):
                url = word.rstrip(")")
                if server != "echo":
                    _wait_ready(url)
                return proc, url
    proc.kill()
    raise RuntimeError(f"{server} did not start")


def _wait_ready(url: str) -> None:
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/v2/health/ready", timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _load(args: list[str], core: int) -> dict:
    done = subprocess.run(["taskset", "-c", str(core), PY, str(HERE / "serve_load.py"), *args, "--json"],
                          capture_output=True, text=True, timeout=900)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"serve_load failed: {done.stderr[-2000:]}")
    return json.loads(lines[-1])


def _load_args(server: str, proc: subprocess.Popen, url: str, model: Path, spec: dict, args) -> list[str]:
    """``serve_load.py``'s arguments for one server under one scenario (the caller adds the mode)."""
    return [url, "--model", model.stem, "--frames", str(spec["frames"]), "--period-ms", str(spec["period_ms"]),
            "--duration", str(args.duration), "--server-pid", str(proc.pid),
            *(["--batch-metrics"] if server != "peer" else [])]


def _interleaved_searches(args, model: Path, spec: dict) -> list[dict]:
    """Every server of ``args.servers`` up at once on the server core; their ``Bisection`` searches take
    turns, one ``serve_load.py --streams N`` run each; one search record per server."""
    sys.path.insert(0, str(HERE))
    from serve_load import Bisection

    procs = {}
    try:
        for server in args.servers:
            procs[server] = _start(server, model, args.server_core)
        steps = {server: Bisection(spec["start"], resolution=args.resolution, tries=args.tries) for server in procs}
        runs: dict[str, list[dict]] = {server: [] for server in procs}
        while True:
            turn = [(server, steps[server].next()) for server in procs if steps[server].next() is not None]
            if not turn:
                break
            for server, n in turn:
                proc, url = procs[server]
                record = _load([*_load_args(server, proc, url, model, spec, args), "--streams", str(n)], args.load_core)
                runs[server].append(record)
                steps[server].record(n, bool(record.get("held")))
                time.sleep(0.5)  # the closed streams released before the next run
    finally:
        for proc, _ in procs.values():
            _stop(proc)
    out = []
    for server, made in runs.items():
        held = [r for r in made if r.get("held")]
        best = max(held, key=lambda r: r["streams"]) if held else None
        out.append({"mode": "search", "interleaved": True, "who": server,
                    "max_streams_held": best["streams"] if best else 0, "best": best, "runs": made})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["a", "b"], choices=sorted(SCENARIOS))
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--resolution", type=float, default=0.1)
    parser.add_argument("--tries", type=int, default=2, help="--search: runs at one N before it counts as not held "
                        "(2: one latency spike from another job on a shared machine does not end the search)")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--rtt", action="store_true", help="also the one-stream round trips (scenario a's model)")
    parser.add_argument("--no-search", action="store_true", help="only --rtt")
    parser.add_argument("--fixed", nargs="+", metavar="SERVER=N[,N...]",
                        help="instead of --search, runs at these stream counts (the server's CPU per chunk at a "
                             "given load: a capacity figure robust to other jobs' latency spikes)")
    parser.add_argument("--interleave", action="store_true",
                        help="every server started at once, their searches taking turns run by run (one N of "
                             "one server, then the next server's): the machine's drift within the comparison "
                             "then hits every server alike")
    parser.add_argument("--out", default="serve_compare.jsonl")
    args = parser.parse_args()
    models = Path(tempfile.mkdtemp(prefix="serve_compare_"))
    records = []

    def keep(record: dict) -> None:
        record["loadavg"] = os.getloadavg()[0]
        records.append(record)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        flat = {**record, **(record.get("best") or {})}
        if record.get("mode") == "rtt":
            flat.update(rtt_ms=record["server"]["median_ms"], echo_ms=record.get("echo", {}).get("median_ms"),
                        share_ms=record.get("server_share_ms"))
        print(json.dumps({k: flat.get(k) for k in (
            "scenario", "who", "max_streams_held", "streams", "held", "p50_ms", "p99_ms", "chunks_per_s", "server_cpu_us_per_chunk",
            "mean_batch_size", "client_cpu_util", "rtt_ms", "echo_ms", "share_ms", "loadavg") if k in flat}),
            flush=True)

    fixed = {}
    for item in args.fixed or []:
        server, counts = item.split("=")
        fixed[server] = [int(n) for n in counts.split(",")]
    for scenario in ([] if args.no_search else args.scenarios):
        model = _model(scenario, models)
        spec = SCENARIOS[scenario]
        if args.interleave and not fixed:
            for _ in range(args.repeat):
                for record in _interleaved_searches(args, model, spec):
                    keep({**record, "scenario": scenario})
            continue
        for _ in range(args.repeat):
            runs = [(server, n) for server, counts in fixed.items() for n in counts] if fixed else \
                [(server, None) for server in args.servers]
            for server, n in runs:  # a fresh server for each run: no backlog carried over
                proc, url = _start(server, model, args.server_core)
                try:
                    common = _load_args(server, proc, url, model, spec, args)
                    mode = ["--streams", str(n)] if n else ["--search", "--start", str(spec["start"]),
                                                            "--resolution", str(args.resolution), "--tries",
                                                            str(args.tries)]
                    record = _load([*common, *mode], args.load_core)
                finally:
                    _stop(proc)
                keep({**record, "scenario": scenario, "who": server})
    if args.rtt:
        model = _model("a", models)
        echo, echo_url = _start("echo", model, args.server_core)
        try:
            for _ in range(args.repeat):
                for server in args.servers:
                    if server == "serve-int8":
                        continue
                    proc, url = _start(server, model, args.server_core)
                    try:
                        record = _load([url, "--model", model.stem, "--rtt", "--count", "3000", "--echo-url",
                                        echo_url], args.load_core)
                    finally:
                        _stop(proc)
                    keep({**record, "scenario": "rtt", "who": server})
        finally:
            _stop(echo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
