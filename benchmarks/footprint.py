"""Resident memory serving the bundled model: `lstminfer serve` (after one inference request)
against the service a user would write instead (`serve_peer.py`: Starlette + uvicorn +
onnxruntime, after the same request), and a minimal lstminfer process (load + one run) against a
minimal onnxruntime process holding the same model (after one run), each a fresh process, VmRSS
from /proc. Linux only.

    python benchmarks/footprint.py [--model adding_lstm]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np

import lstminfer.models

_ORT_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
"""
_LSTMINFER_SCRIPT = """
import sys, numpy as np, lstminfer
s = lstminfer.load(sys.argv[1])
"""
_RUN_ONCE = """feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in s.get_inputs()}
s.run(None, feeds)
print(open("/proc/self/status").read().split("VmRSS:")[1].split()[0], flush=True)
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_peer.py")


def serve_rss(model: str, command: list[str] | None = None) -> int:
    """VmRSS of a v2 server on ``model`` after one inference request (default: ``lstminfer serve``)."""
    command = command or [sys.executable, "-m", "lstminfer", "serve", "--port", "0", model]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = proc.stdout.readline()
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        if port is None:
            raise RuntimeError("lstminfer serve printed no port")
        name = os.path.splitext(os.path.basename(model))[0]
        inputs = []
        for spec in lstminfer.load(model).get_inputs():  # the peer has no metadata endpoint: read the file
            shape = [d if isinstance(d, int) else 1 for d in spec.shape]
            inputs.append({"name": spec.name, "shape": shape, "datatype": "FP32",
                           "data": np.zeros(shape, np.float32).ravel().tolist()})
        body = json.dumps({"inputs": inputs}).encode()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{name}/infer", body,
                                                      {"Content-Type": "application/json"}), timeout=30).read()
        return rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def script_rss(script: str, model: str) -> int:
    out = subprocess.run([sys.executable, "-c", script + _RUN_ONCE, model], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="adding_lstm")
    args = parser.parse_args()
    path = lstminfer.models.path(args.model)
    serve = serve_rss(path)
    peer = serve_rss(path, [sys.executable, PEER, path, "--port", "0"])
    alone = script_rss(_LSTMINFER_SCRIPT, path)
    ort = script_rss(_ORT_SCRIPT, path)
    print(f"{args.model} RSS: lstminfer serve {serve / 1024:.1f} MiB, its peer (Starlette + uvicorn + onnxruntime) "
          f"{peer / 1024:.1f} MiB (serve/peer {serve / peer:.2f}); lstminfer.load + run {alone / 1024:.1f} MiB, "
          f"onnxruntime InferenceSession + run {ort / 1024:.1f} MiB (load/ort {alone / ort:.2f}, "
          f"serve/bare ort {serve / ort:.2f})")


if __name__ == "__main__":
    main()
