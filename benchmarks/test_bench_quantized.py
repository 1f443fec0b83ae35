"""int8 and bf16: ``lstminfer.load(..., quantize=...)`` and the Cython kernels against onnxruntime.

    cd benchmarks && pytest -q test_bench_quantized.py --benchmark-json=/tmp/q.json && python report.py /tmp/q.json

One LSTM/GRU node (``peers.onnx_model``: x, h0[, c0] -> Y, Y_h[, Y_c]), one thread everywhere:

* ``stream``: T = 1, B = 1, the state fed back each call; ``seq``: T = 256, B = 1;
  ``batch``: T = 128, B = 64 (both from a zero state).
* ort-1t: the float model, ``session.run`` (the baseline of report.py's ratios).
* ort-int8: ``quantize_dynamic`` (per-channel int8 weights, dynamic uint8
  activations: DynamicQuantizeLSTM; LSTM only, onnxruntime has no int8 GRU),
  run with IOBinding, the stream's state outputs bound as the next call's inputs.
* lstminfer-f32 / -int8 / -bf16: ``model.run`` with quantize=None / "int8" / "bf16"
  (stream only: the per-call path a streaming application takes).
* kernel-f32 / kernel-int8-wo / kernel-int8-vnni / kernel-bf16: the Cython kernel
  alone (no plan, no feed checks): float32, weight-only int8, dynamic int8 on
  AVX-512 VNNI (skipped without it), bf16 weights.

Issue 7 targets (ort-1t time / lstminfer time, same run): stream LSTM H=256/512
int8 >= 3x and >= 1.3x ort-int8's speed; seq/batch LSTM int8 >= ort-int8; GRU int8
>= 2x ort-1t at H >= 256.
"""
from __future__ import annotations

import numpy as np
import pytest

from peers import CONFIGS, onnx_model, time_short_calls, weights

CASES = [(op, hidden, config) for config in ("stream", "seq", "batch") for op in ("LSTM", "GRU")
         for hidden in (64, 256, 512)]
PEERS = ("ort-1t", "ort-int8", "lstminfer-f32", "lstminfer-int8", "lstminfer-bf16",
         "kernel-f32", "kernel-int8-wo", "kernel-int8-vnni", "kernel-bf16")


def _states(op, batch, hidden):
    return [np.zeros((1, batch, hidden), np.float32) for _ in range(2 if op == "LSTM" else 1)]


def _input(config, hidden):
    T, B = CONFIGS[config]
    return np.random.default_rng(1).standard_normal((T, B, hidden)).astype(np.float32)


def _session(source):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _feeds(op, x, states):
    return dict(zip(("X", "h0", "c0"), (x, *states)))


def ort_f32(op, hidden, config, tmp_path):
    session = _session(onnx_model(op, hidden).SerializeToString())
    x = _input(config, hidden)
    states = _states(op, x.shape[1], hidden)

    def run():
        outputs = session.run(None, _feeds(op, x, states))
        if config == "stream":
            states[:] = outputs[1:]

    return run


def ort_int8(op, hidden, config, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if op != "LSTM":
        raise ImportError("onnxruntime has no int8 GRU")
    src, dst = tmp_path / "f32.onnx", tmp_path / "int8.onnx"
    onnx.save(onnx_model(op, hidden), src)
    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    session = _session(str(dst))
    binding = session.io_binding()
    x = _input(config, hidden)
    T, B = x.shape[:2]
    binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_numpy(np.zeros((T, 1, B, hidden), np.float32)))
    states = [ort.OrtValue.ortvalue_from_numpy(np.zeros((1, B, hidden), np.float32)) for _ in range(4)]
    side = [0]

    def run():
        i = side[0]
        binding.bind_ortvalue_input("h0", states[i])
        binding.bind_ortvalue_input("c0", states[i + 1])
        binding.bind_ortvalue_output("Y_h", states[2 - i])
        binding.bind_ortvalue_output("Y_c", states[3 - i])
        session.run_with_iobinding(binding)
        if config == "stream":
            side[0] = 2 - i

    return run


def _lstminfer(quantize):
    def make(op, hidden, config, tmp_path):
        import lstminfer

        if config != "stream":
            raise ImportError("model.run peers are measured on the stream only")
        model = lstminfer.load(onnx_model(op, hidden), backend="cython", quantize=quantize)
        x = _input(config, hidden)
        states = _states(op, 1, hidden)

        def run():
            states[:] = model.run(None, _feeds(op, x, states))[1:]

        return run

    return make


def _kernel(precision):
    def make(op, hidden, config, tmp_path):
        from lstminfer import quantization as lq
        from lstminfer.kernels import cython_backend as cb
        from lstminfer.ops.recurrent import RecurrentSpec
        from lstminfer.reference import cell_activations

        if precision == "int8-vnni" and not cb.vnni_available():
            raise ImportError("this CPU has no AVX-512 VNNI")
        w = weights(op, hidden)
        W, R, B = w["W"], w["R"], w["B"]
        spec = RecurrentSpec(op=op, hidden_size=hidden, direction="forward", layout=0,
                             activations=cell_activations(op, "forward", None, None, None), clip=None,
                             input_forget=False, linear_before_reset=False, num_outputs=3 if op == "LSTM" else 2)
        quantized = (*lq.int8_per_row(W), *lq.int8_per_row(R))
        if precision == "f32":
            kernel = cb.cython_kernel(spec, W, R, B, None)
        elif precision == "bf16":
            kernel = cb.cython_bf16_kernel(spec, W, R, B, None)
        else:
            kernel = cb.cython_int8_kernel(spec, W, R, B, None, quantized,
                                           scheme="vnni" if precision == "int8-vnni" else "weight-only")
        x = _input(config, hidden)
        states = _states(op, x.shape[1], hidden)

        def run():
            outputs = kernel(x, W, R, B, None, *states)
            if config == "stream":
                states[:] = outputs[1:]

        return run

    return make


RUNNERS = {"ort-1t": ort_f32, "ort-int8": ort_int8, "lstminfer-f32": _lstminfer(None),
           "lstminfer-int8": _lstminfer("int8"), "lstminfer-bf16": _lstminfer("bf16"),
           "kernel-f32": _kernel("f32"), "kernel-int8-wo": _kernel("int8"), "kernel-int8-vnni": _kernel("int8-vnni"),
           "kernel-bf16": _kernel("bf16")}


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("case", CASES, ids=[f"{op}-H{h}-{c}" for op, h, c in CASES])
def test_quantized(benchmark, tmp_path, peer, case):
    op, hidden, config = case
    try:
        run = RUNNERS[peer](op, hidden, config, tmp_path)
    except ImportError as err:  # onnxruntime absent, no int8 GRU there, no VNNI here: that peer is missing
        pytest.skip(f"{peer} unavailable: {err}")
    run()  # first call outside the timing
    T, B = CONFIGS[config]
    G = 4 if op == "LSTM" else 3
    benchmark.group = f"{op}-H{hidden}-{config}-quantized"
    benchmark.extra_info.update(op=op, hidden=hidden, config=config, peer=peer, T=T, B=B,
                                flops=2 * G * hidden * 2 * hidden * T * B)
    if config == "stream":
        time_short_calls(benchmark, run)
    else:
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
