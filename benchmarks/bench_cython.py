"""The Cython backend against onnxruntime (1 thread), the same cases as test_bench_recurrent.py.

    pytest benchmarks/bench_cython.py --benchmark-json=bench_cython.json     # pytest-benchmark
    python benchmarks/bench_cython.py                                        # quick table on stdout
    python benchmarks/bench_cython.py cold                                   # the cold-start table only

Three measurements:

* layers: one LSTM/GRU layer, H in {64, 128, 256, 512}, configs stream
  (T=1, B=1, state fed back), seq (T=256, B=1), batch (T=128, B=64), for
  "lstminfer-cython" (through ``lstminfer.load(..., backend="cython")``),
  "cython-kernel" (the kernel called directly: no executor) and "ort-1t";
* cold start: a fresh process imports lstminfer, loads the bundled
  ``adding_lstm`` with backend="cython" and runs one prediction (target
  <= 0.15 s), next to onnxruntime's and the Numba backend's (warm cache),
  with cached bytecode (as installed) and compiling from source;
* two threads: two concurrent long calls of one kernel, against the same
  two calls one after the other (the kernels release the GIL: expect ~0.5-0.7
  on two free cores, 1.0 if the GIL were held).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import CONFIGS, HIDDEN_SIZES, Case, feeds, measure, ort_runner, weights  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("ort-1t", "lstminfer-cython", "cython-kernel")


# ------------------------------------------------------------- wiring --

def _stateful(run_once, case: Case):
    current = dict(feeds(case))
    names = ["h0", "c0"] if case.op == "LSTM" else ["h0"]
    if case.config != "stream":
        return lambda: run_once(current)

    def step():
        outputs = run_once(current)
        current.update(zip(names, outputs[1:]))
        return outputs

    return step


def cython_model_runner(case: Case):
    import lstminfer
    from peers import onnx_model

    model = lstminfer.load(onnx_model(case.op, case.hidden), backend="cython")
    return _stateful(lambda f: model.run(None, f), case)


def cython_kernel_runner(case: Case):
    from lstminfer.kernels.cython_backend import cython_kernel
    from lstminfer.ops.recurrent import RecurrentSpec
    from lstminfer.reference import cell_activations

    w = weights(case.op, case.hidden)
    spec = RecurrentSpec(op=case.op, hidden_size=case.hidden, direction="forward", layout=0,
                         activations=cell_activations(case.op, "forward", None, None, None), clip=None,
                         num_outputs=3 if case.op == "LSTM" else 2)
    kernel = cython_kernel(spec, w["W"], w["R"], w["B"], None)
    if case.op == "LSTM":
        return _stateful(lambda f: kernel(f["X"], w["W"], w["R"], w["B"], None, f["h0"], f["c0"], None), case)
    return _stateful(lambda f: kernel(f["X"], w["W"], w["R"], w["B"], None, f["h0"]), case)


def make_runner(peer: str, case: Case):
    if peer == "ort-1t":
        return ort_runner(case, 1)
    if peer == "lstminfer-cython":
        return cython_model_runner(case)
    if peer == "cython-kernel":
        return cython_kernel_runner(case)
    raise ValueError(f"unknown peer {peer}")


# --------------------------------------------------------- cold start --

_COLD = {
    "lstminfer-cython": """
import lstminfer, lstminfer.models, numpy as np
m = lstminfer.load(lstminfer.models.path("adding_lstm"), backend="cython")
m.run(None, {{"x": np.zeros((1, 50, 2), np.float32), "h0": np.zeros((1, 1, 32), np.float32),
              "c0": np.zeros((1, 1, 32), np.float32)}})
""",
    "lstminfer-numba": """
import lstminfer, lstminfer.models, numpy as np
m = lstminfer.load(lstminfer.models.path("adding_lstm"), backend="numba")
m.run(None, {{"x": np.zeros((1, 50, 2), np.float32), "h0": np.zeros((1, 1, 32), np.float32),
              "c0": np.zeros((1, 1, 32), np.float32)}})
""",
    # The model's path as a literal: importing lstminfer.models would import lstminfer too.
    "ort-1t": """
import onnxruntime as ort, numpy as np
o = ort.SessionOptions(); o.intra_op_num_threads = 1
s = ort.InferenceSession({model!r}, o, providers=["CPUExecutionProvider"])
s.run(None, {{"x": np.zeros((1, 50, 2), np.float32), "h0": np.zeros((1, 1, 32), np.float32),
              "c0": np.zeros((1, 1, 32), np.float32)}})
""",
}


# Bytecode: a pip-installed package has compiled .pyc files, but a checkout run with
# PYTHONDONTWRITEBYTECODE=1 (as our dev machines are) compiles lstminfer's modules at every
# import (~30 ms). "pyc" runs with bytecode cached under a private PYTHONPYCACHEPREFIX (the
# deployment case; every peer gets the same), "source" with the environment as it is.
BYTECODE_MODES = ("pyc", "source")
_PYC_DIR = os.path.join(tempfile.gettempdir(), "lstminfer-bench-pyc")


def cold_start(peer: str, bytecode: str = "pyc") -> float:
    """Seconds for a fresh process: import, load the bundled model, one prediction (interpreter start excluded)."""
    model = os.path.join(ROOT, "lstminfer", "models", "adding_lstm.onnx")
    body = "import sys, time\n_t = time.perf_counter()\n" + _COLD[peer].format(model=model) \
        + "print(time.perf_counter() - _t)\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    if bytecode == "pyc":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = _PYC_DIR
    out = subprocess.run([sys.executable, "-c", body], check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def cold_start_table(rounds: int = 7) -> None:
    """Best and median of ``rounds`` fresh processes per peer and bytecode mode, rounds interleaved
    (the machine is shared: interleaving spreads its noise over every peer)."""
    print("| cold start (import + load + 1 run) | bytecode | best | median |")
    print("|---|---|---|---|")
    for bytecode in BYTECODE_MODES:
        times: dict[str, list[float]] = {peer: [] for peer in _COLD}
        failed: dict[str, str] = {}
        for peer in _COLD:  # warm-up: fills the .pyc and Numba caches
            try:
                cold_start(peer, bytecode)
            except subprocess.CalledProcessError as e:
                failed[peer] = ((e.stderr or "").strip().splitlines() or ["?"])[-1]
        for _ in range(rounds):
            for peer in _COLD:
                if peer not in failed:
                    times[peer].append(cold_start(peer, bytecode))
        for peer in _COLD:
            if peer in failed:
                print(f"| {peer} | {bytecode} | failed: {failed[peer]} | |")
                continue
            ts = sorted(times[peer])
            print(f"| {peer} | {bytecode} | {ts[0]:.3f} s | {ts[len(ts) // 2]:.3f} s |", flush=True)


def import_breakdown() -> str:
    """The slowest imports of ``import lstminfer.kernels.cython_backend`` in a fresh process (-X importtime)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lstminfer.kernels.cython_backend"],
                         env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, capture_output=True, text=True)
    rows = []
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return "\n".join(f"{us / 1e3:8.1f} ms {name}" for us, name in rows[:12])


# --------------------------------------------------------- two threads --

def two_thread_ratio(rounds: int = 5) -> tuple[float, float]:
    """(best wall(two concurrent calls) / wall(two calls in a row), one call's seconds)."""
    case = Case("LSTM", 128, "batch")
    run = cython_kernel_runner(case)
    run()
    best, one = float("inf"), 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        run()
        serial = time.perf_counter() - start
        threads = [threading.Thread(target=run) for _ in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = min(best, (time.perf_counter() - start) / serial)
        one = serial / 2
    return best, one


# -------------------------------------------------------------- pytest --

CASES = [Case(op, H, config) for op in ("LSTM", "GRU") for config in CONFIGS for H in HIDDEN_SIZES]


@pytest.mark.parametrize("peer,case", [pytest.param(p, c, id=f"{c.name}-{p}") for c in CASES for p in PEERS])
def test_cython_layer(benchmark, peer, case):
    measure(benchmark, make_runner(peer, case), case, peer)


@pytest.mark.parametrize("bytecode", BYTECODE_MODES)
@pytest.mark.parametrize("peer", list(_COLD))
def test_cython_cold_start(benchmark, peer, bytecode):
    cold_start(peer, bytecode)  # fill the .pyc (and Numba) caches once: the deployment case
    benchmark.group = "cold-start-cython"
    benchmark.extra_info.update(op="LSTM", hidden=32, config=f"cold-start-{bytecode}", peer=peer, T=50, B=1,
                                flops=0)
    benchmark.pedantic(lambda: cold_start(peer, bytecode), rounds=3, iterations=1)


def test_two_threads_use_two_cores(benchmark):
    ratio, one = benchmark.pedantic(two_thread_ratio, rounds=1, iterations=1)
    benchmark.extra_info.update(ratio=ratio, one_call_s=one)


# --------------------------------------------------------------- script --

def _best(run, seconds: float = 0.3) -> float:
    run()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds / 3 or n < 2:
        run()
        n += 1
    n = max(1, n)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            run()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main() -> None:
    if sys.argv[1:] == ["cold"]:  # the cold-start table only
        cold_start_table()
        return
    from lstminfer.kernels import cython_backend

    hidden = [int(h) for h in os.environ.get("BENCH_H", "64,256").split(",")]
    print(f"cython build: {cython_backend.isa()}   (LSTMINFER_PORTABLE=1 forces 'portable')")
    print("| case | ort-1t | lstminfer-cython (run) | ratio | cython-kernel | ratio | kernel us/step |")
    print("|---|---|---|---|---|---|---|")
    for op in ("LSTM", "GRU"):
        for config in CONFIGS:
            for H in hidden:
                case = Case(op, H, config)
                t = {peer: _best(make_runner(peer, case)) for peer in PEERS}
                ort, model, kernel = t["ort-1t"], t["lstminfer-cython"], t["cython-kernel"]
                print(f"| {case.name} | {ort * 1e6:.1f} us | {model * 1e6:.1f} us | {ort / model:.2f} | "
                      f"{kernel * 1e6:.1f} us | {ort / kernel:.2f} | {kernel / case.T * 1e6:.2f} |", flush=True)
    cold_start_table()
    print("slowest imports of lstminfer.kernels.cython_backend:\n" + import_breakdown())
    ratio, one = two_thread_ratio()
    print(f"two threads: wall(2 concurrent) / wall(2 in a row) = {ratio:.2f} (one call {one * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
