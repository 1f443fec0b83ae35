"""Stepping a 2-layer LSTM one frame at a time with its state fed back: ``io_binding`` vs plain ``run``.

The model: a PyTorch 2-layer ``nn.LSTM`` (state in and out: x, h0, c0 -> y, h_n, c_n), exported with
the TorchScript exporter (tests/torch_models.py's RecurrentSpec). One step is T=1, B=1; every
variant runs 1 thread, in the same process, interleaved in rounds (the median of each is reported):

* ``lstminfer run``: ``y, h, c = sess.run(None, {"x": x, "h0": h, "c0": c})``;
* ``lstminfer io_binding (copy)``: outputs bound into preallocated buffers, state copied back into
  the bound input buffers (``np.copyto``) after each step: the onnxruntime idiom;
* ``lstminfer io_binding (in place)``: h_n/c_n bound to the very buffers h0/c0 are bound to, so the
  state needs no copy (lstminfer writes outputs once every input has been read);
* ``onnxruntime run`` and ``onnxruntime io_binding (copy)``: the same two loops on onnxruntime.

Run: python benchmarks/bench_iobinding.py [--hidden 128] [--steps 2000] [--rounds 7] [--json]
Results: benchmarks/RESULTS.md, "io_binding".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's lstminfer, not an installed one


def export_model(input_size: int, hidden: int) -> bytes:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torch_models import RecurrentSpec, export

    spec = RecurrentSpec("LSTM", num_layers=2, state_io=True, input_size=input_size, hidden_size=hidden)
    return export(spec, "torchscript", 17)


def loops(ort, model: bytes, input_size: int, hidden: int, steps: int, in_place: bool) -> dict:
    """name -> a zero-argument function running ``steps`` steps (each builds its session once)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    xs = np.random.default_rng(0).standard_normal((steps, 1, 1, input_size), dtype=np.float32)
    zeros = np.zeros((2, 1, hidden), np.float32)

    def plain():
        h, c = zeros, zeros
        for x in xs:
            y, h, c = sess.run(None, {"x": x, "h0": h, "c0": c})
        return y, h, c

    def bound(same_buffers: bool):
        x_buf, h_in, c_in = np.empty_like(xs[0]), zeros.copy(), zeros.copy()
        y_buf = np.empty((1, 1, hidden), np.float32)
        h_out, c_out = (h_in, c_in) if same_buffers else (np.empty_like(h_in), np.empty_like(c_in))
        binding = sess.io_binding()
        for name, buf in (("x", x_buf), ("h0", h_in), ("c0", c_in)):
            binding.bind_cpu_input(name, buf)
        for name, buf in (("y", y_buf), ("h_n", h_out), ("c_n", c_out)):
            binding.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)

        def run():
            for x in xs:
                np.copyto(x_buf, x)
                sess.run_with_iobinding(binding)
                if not same_buffers:
                    np.copyto(h_in, h_out)
                    np.copyto(c_in, c_out)
            return y_buf.copy(), h_in.copy(), c_in.copy()

        return run

    out = {"run": plain, "io_binding (copy)": bound(False)}
    if in_place:
        out["io_binding (in place)"] = bound(True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import lstminfer
    import onnxruntime

    model = export_model(args.input_size, args.hidden)
    variants = {f"lstminfer {k}": f for k, f in loops(lstminfer, model, args.input_size, args.hidden,
                                                       args.steps, in_place=True).items()}
    variants.update({f"onnxruntime {k}": f for k, f in loops(onnxruntime, model, args.input_size, args.hidden,
                                                             args.steps, in_place=False).items()})
    reference = None
    for name, run in variants.items():  # warm up, and every loop must end in the same state
        result = run()
        if reference is None:
            reference = result
        for got, want in zip(result, reference):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / args.steps * 1e6)
    median = {name: float(np.median(t)) for name, t in times.items()}
    base = median["onnxruntime io_binding (copy)"]
    if args.json:
        print(json.dumps({"hidden": args.hidden, "input_size": args.input_size, "steps": args.steps,
                          "us_per_step": median}, indent=2))
        return 0
    print(f"2-layer LSTM I{args.input_size} H{args.hidden}, T=1 B=1, state fed back, 1 thread; "
          f"median of {args.rounds} rounds of {args.steps} steps")
    print(f"{'loop':36s} {'us/step':>9s} {'vs onnxruntime io_binding':>26s}")
    for name, us in median.items():
        print(f"{name:36s} {us:9.2f} {base / us:25.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
