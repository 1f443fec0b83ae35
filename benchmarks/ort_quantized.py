"""An onnxruntime-quantized file, lstminfer against onnxruntime on it, in one run.

``python benchmarks/ort_quantized.py [--hidden 256] [--input 64] [--rounds 15]``

Exports a PyTorch ``nn.LSTM(I, H, batch_first=True)`` + ``nn.Linear(H, 10)`` (TorchScript
exporter, opset 17, dynamic batch and time, h0/c0 in and h_n/c_n out), quantizes it with
``onnxruntime.quantization.quantize_dynamic`` (default settings: DynamicQuantizeLSTM,
DynamicQuantizeLinear + MatMulInteger head), and times on that one file, batch 1, 1 thread each:

* ``frame``: one frame per call (T=1), the state fed back (``run`` for both);
* ``stream``: lstminfer's ``Stream.step`` against onnxruntime's ``run`` with the state fed back;
* ``seq``: one T=256 sequence.

Rounds of back-to-back calls (~20 ms each), the peers interleaved; prints the median time of one
call and the ratio onnxruntime / lstminfer (> 1: lstminfer faster), the same for the best rounds
(on a shared machine the least disturbed), and the max abs difference.
Needs torch.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import warnings

import numpy as np
import onnxruntime as ort

import lstminfer


def export_quantized(hidden: int, inputs: int, directory: str) -> str:
    import torch
    from onnxruntime.quantization import quantize_dynamic

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(inputs, hidden, batch_first=True)
            self.fc = torch.nn.Linear(hidden, 10)

        def forward(self, x, h0, c0):
            y, (h, c) = self.rnn(x, (h0, c0))
            return self.fc(y), h, c

    torch.manual_seed(0)
    model = Model().eval()
    example = (torch.randn(1, 5, inputs), torch.zeros(1, 1, hidden), torch.zeros(1, 1, hidden))
    src, dst = os.path.join(directory, "lstm.onnx"), os.path.join(directory, "lstm.int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        torch.onnx.export(model, example, buffer, input_names=["x", "h0", "c0"], output_names=["y", "hn", "cn"],
                          dynamo=False, opset_version=17,
                          dynamic_axes={"x": {0: "b", 1: "t"}, "h0": {1: "b"}, "c0": {1: "b"}, "y": {0: "b", 1: "t"},
                                        "hn": {1: "b"}, "cn": {1: "b"}})
    with open(src, "wb") as f:
        f.write(buffer.getvalue())
    quantize_dynamic(src, dst)
    return dst


def per_call(fn, round_seconds: float = 0.02) -> float:
    """Seconds per call of ``fn`` over one round of back-to-back calls."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= round_seconds:
            return elapsed / calls


def compare(name: str, ours, theirs, rounds: int) -> tuple[float, float]:
    ours(), theirs()  # warm: compiled programs, onnxruntime's allocations
    a, b = [], []
    for _ in range(rounds):
        a.append(per_call(ours))
        b.append(per_call(theirs))
    t_ours, t_theirs = float(np.median(a)), float(np.median(b))
    best_ours, best_theirs = min(a), min(b)  # the best rounds: what other jobs on the machine disturb least
    print(f"{name:8s} lstminfer {t_ours * 1e6:9.1f} us   onnxruntime {t_theirs * 1e6:9.1f} us   "
          f"ratio {t_theirs / t_ours:5.2f}x   (best rounds {best_ours * 1e6:.1f} / {best_theirs * 1e6:.1f} us, "
          f"{best_theirs / best_ours:.2f}x)")
    return t_ours, t_theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    H, I = args.hidden, args.input
    with tempfile.TemporaryDirectory() as directory:
        path = export_quantized(H, I, directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        model = lstminfer.load(path, threads=1)
    print(f"LSTM I={I} H={H} + Linear(10), quantize_dynamic defaults, batch 1, 1 thread; "
          f"lstminfer {getattr(lstminfer, '__version__', '?')} from {os.path.dirname(lstminfer.__file__)}")
    lstm_line = next(line for line in model.describe().splitlines() if "DynamicQuantizeLSTM ->" in line)
    print("lstminfer runs:", lstm_line.split(" via ", 1)[1])

    rng = np.random.default_rng(0)
    zeros = np.zeros((1, 1, H), np.float32)
    frames = rng.standard_normal((64, 1, 1, I)).astype(np.float32)

    def fed_back(run):
        state = {"h0": zeros, "c0": zeros}
        position = [0]

        def call():
            x = frames[position[0] % len(frames)]
            position[0] += 1
            y, state["h0"], state["c0"] = run(None, {"x": x, **state})
            return y

        return call

    stream = model.stream()
    position = [0]

    def stream_step():
        x = frames[position[0] % len(frames)]
        position[0] += 1
        return stream.step(x)

    x_seq = rng.standard_normal((1, 256, I)).astype(np.float32)
    seq_feeds = {"x": x_seq, "h0": zeros, "c0": zeros}
    ours, theirs = model.run(None, seq_feeds), session.run(None, seq_feeds)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))
    print(f"T=256 max |lstminfer - onnxruntime| over y, h_n, c_n: {diff:.2e}")

    compare("frame", fed_back(model.run), fed_back(session.run), args.rounds)
    compare("stream", stream_step, fed_back(session.run), args.rounds)
    compare("seq", lambda: model.run(None, seq_feeds), lambda: session.run(None, seq_feeds), args.rounds)


if __name__ == "__main__":
    main()
