"""int8 streaming step: ``lstminfer.load(..., quantize="int8")`` against onnxruntime float32 and int8.

    pytest benchmarks/test_bench_quantized.py --benchmark-json=quantized.json
    python benchmarks/report.py quantized.json

One LSTM node (``peers.onnx_model``: x, h0, c0 -> Y, Y_h, Y_c), T = 1, B = 1,
the state fed back each call, one thread everywhere:

* ort-f32: the float model, ``session.run``.
* ort-int8: ``quantize_dynamic`` (per-channel int8 weights, dynamic uint8
  activations: DynamicQuantizeLSTM), run with IOBinding, its state outputs
  bound as the next call's inputs (no copies).
* lstminfer-f32 / lstminfer-int8: ``model.run`` with and without ``quantize="int8"``.
* kernel-f32 / kernel-int8: the Cython kernel alone (no plan, no feed checks).

Issue 7 targets (ort-f32 time / lstminfer-int8 time, same run, H=256 and 512):
>= 3x, and >= 1.3x ort-int8's speed.
"""
from __future__ import annotations

import numpy as np
import pytest

from peers import onnx_model, weights

HIDDEN = (256, 512)
PEERS = ("ort-f32", "ort-int8", "lstminfer-f32", "lstminfer-int8", "kernel-f32", "kernel-int8")


def _zeros(hidden):
    return np.zeros((1, 1, hidden), np.float32)


def _frame(hidden):
    return np.random.default_rng(1).standard_normal((1, 1, hidden)).astype(np.float32)


def _session(source):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_f32(hidden, tmp_path):
    session = _session(onnx_model("LSTM", hidden).SerializeToString())
    x, state = _frame(hidden), [_zeros(hidden)] * 2

    def run():
        _, state[0], state[1] = session.run(None, {"X": x, "h0": state[0], "c0": state[1]})

    return run


def ort_int8(hidden, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "f32.onnx", tmp_path / "int8.onnx"
    onnx.save(onnx_model("LSTM", hidden), src)
    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    session = _session(str(dst))
    binding = session.io_binding()
    x = ort.OrtValue.ortvalue_from_numpy(_frame(hidden))
    y = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 1, 1, hidden), np.float32))
    states = [ort.OrtValue.ortvalue_from_numpy(_zeros(hidden)) for _ in range(4)]  # (h, c) in, (h, c) out
    binding.bind_ortvalue_input("X", x)
    binding.bind_ortvalue_output("Y", y)
    side = [0]

    def run():
        i = side[0]
        binding.bind_ortvalue_input("h0", states[i])
        binding.bind_ortvalue_input("c0", states[i + 1])
        binding.bind_ortvalue_output("Y_h", states[2 - i])
        binding.bind_ortvalue_output("Y_c", states[3 - i])
        session.run_with_iobinding(binding)
        side[0] = 2 - i

    return run


def _lstminfer(quantize):
    def make(hidden, tmp_path):
        import lstminfer

        model = lstminfer.load(onnx_model("LSTM", hidden), backend="cython", quantize=quantize)
        x, state = _frame(hidden), [_zeros(hidden)] * 2

        def run():
            _, state[0], state[1] = model.run(None, {"X": x, "h0": state[0], "c0": state[1]})

        return run

    return make


def _kernel(int8):
    def make(hidden, tmp_path):
        from lstminfer import quantization as lq
        from lstminfer.kernels import cython_backend
        from lstminfer.ops.recurrent import RecurrentSpec
        from lstminfer.reference import cell_activations

        w = weights("LSTM", hidden)
        W, R, B = w["W"], w["R"], w["B"]
        spec = RecurrentSpec(op="LSTM", hidden_size=hidden, direction="forward", layout=0,
                             activations=cell_activations("LSTM", "forward", None, None, None), clip=None,
                             input_forget=False, linear_before_reset=False, num_outputs=3)
        kernel = (cython_backend.cython_int8_kernel(spec, W, R, B, None, (*lq.int8_per_row(W), *lq.int8_per_row(R)))
                  if int8 else cython_backend.cython_kernel(spec, W, R, B, None))
        x, state = _frame(hidden), [_zeros(hidden)] * 2

        def run():
            _, state[0], state[1] = kernel(x, W, R, B, None, state[0], state[1])

        return run

    return make


RUNNERS = {"ort-f32": ort_f32, "ort-int8": ort_int8, "lstminfer-f32": _lstminfer(None),
           "lstminfer-int8": _lstminfer("int8"), "kernel-f32": _kernel(False), "kernel-int8": _kernel(True)}


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_quantized_step(benchmark, tmp_path, peer, hidden):
    try:
        run = RUNNERS[peer](hidden, tmp_path)
    except ImportError as err:  # onnxruntime absent: that peer is simply missing
        pytest.skip(f"{peer} unavailable: {err}")
    run()  # first call outside the timing
    benchmark.group = f"LSTM-H{hidden}-step-quantized"
    benchmark.extra_info.update(op="LSTM", hidden=hidden, config="step", peer=peer, T=1, B=1,
                                flops=2 * 4 * hidden * 2 * hidden)
    benchmark(run)
