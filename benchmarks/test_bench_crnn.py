"""CRNN front-ends (convolutions + BatchNorm + pools before an LSTM) against onnxruntime, same run.

    cd benchmarks && OPENBLAS_NUM_THREADS=1 pytest -q test_bench_crnn.py --benchmark-json=/tmp/crnn.json
    OPENBLAS_NUM_THREADS=1 python test_bench_crnn.py        # the same rows as a quick table, and the
                                                            # Stream.step times of two streamed CRNNs

Models, exported at benchmark time by the TorchScript exporter (opset 17, fixed seed):

* ``kws``: keyword spotting, x [B, T, 40] -> Conv1d(40, 64, 3) + BN + ReLU + MaxPool1d(2) ->
  Conv1d(64, 64, 3) + BN + ReLU -> LSTM(64, 128) -> Linear(128, 12), logits per (pooled) frame.
* ``ocr``: text-line OCR, image [B, 1, 32, W] -> 2 x (Conv2d 3x3 + BN + ReLU + MaxPool2d(2)) with
  32 and 64 channels -> one column of 64*8 features per time step -> LSTM(512, 128) -> Linear(128, 40).

Rows: ``seq`` (B=1) and ``batch`` (B=16), T=200 frames (kws) or W=256 pixels (ocr). onnxruntime
runs with 1 intra-op and 1 inter-op thread (its graph optimizations, BN folding included, on);
lstminfer with its defaults (1 thread). Before timing, lstminfer's output is checked against
onnxruntime's (atol 1e-5 + rtol 1e-5).
"""
from __future__ import annotations

import contextlib
import functools
import io
import time
import warnings

import numpy as np
import pytest

ROWS = {"seq": 1, "batch": 16}
LENGTH = {"kws": 200, "ocr": 256}


def _modules():
    import torch
    from torch import nn

    class Kws(nn.Module):
        def __init__(self):
            super().__init__()
            self.front = nn.Sequential(nn.Conv1d(40, 64, 3, padding=1), nn.BatchNorm1d(64), nn.ReLU(), nn.MaxPool1d(2),
                                       nn.Conv1d(64, 64, 3, padding=1), nn.BatchNorm1d(64), nn.ReLU())
            self.lstm = nn.LSTM(64, 128, batch_first=True)
            self.fc = nn.Linear(128, 12)

        def forward(self, x):
            y, _ = self.lstm(self.front(x.transpose(1, 2)).transpose(1, 2))
            return self.fc(y)

    class Ocr(nn.Module):
        def __init__(self):
            super().__init__()
            self.front = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                                       nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
            self.lstm = nn.LSTM(64 * 8, 128, batch_first=True)
            self.fc = nn.Linear(128, 40)

        def forward(self, image):
            z = self.front(image)
            y, _ = self.lstm(z.permute(0, 3, 1, 2).flatten(2))
            return self.fc(y)

    return torch, {"kws": Kws, "ocr": Ocr}


def example(name: str, batch: int, rng) -> np.ndarray:
    shape = (batch, LENGTH[name], 40) if name == "kws" else (batch, 1, 32, LENGTH[name])
    return rng.standard_normal(shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def export(name: str) -> bytes:
    torch, modules = _modules()
    torch.manual_seed(0)
    module = modules[name]().eval()
    for m in module.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.from_numpy(example(name, 2, np.random.default_rng(0)))
    time_axis = 1 if name == "kws" else 3
    buf = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", time_axis: "time"}})
    return buf.getvalue()


def runner(peer: str, name: str, row: str):
    x = example(name, ROWS[row], np.random.default_rng(1))
    if peer == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(export(name), options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"x": x})
    import lstminfer

    model = lstminfer.load(export(name))
    return lambda: model.run(None, {"x": x})


def check(name: str, row: str) -> float:
    got, expected = runner("lstminfer", name, row)()[0], runner("onnxruntime", name, row)()[0]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize("peer", ["lstminfer", "onnxruntime"])
@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("name", list(LENGTH))
def test_crnn(benchmark, name, row, peer):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    if peer == "lstminfer":
        benchmark.extra_info["max_abs_diff"] = check(name, row)
    run = runner(peer, name, row)
    run()
    benchmark.group = f"crnn-{name}-{row}"
    benchmark.extra_info.update(model=name, row=row, peer=peer, B=ROWS[row], T=LENGTH[name])
    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)


def _interleaved_medians(runs, rounds: int = 40) -> list[float]:
    """Median seconds per call of each of ``runs``, timed in alternation (on a shared machine both
    peers then see the same background load)."""
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, spent in zip(runs, times):
            start = time.perf_counter()
            run()
            spent.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def stream_steps(frames: int = 2000) -> None:
    """Median µs per ``Stream.step`` of 1 and of 10 frames for tests/conv_models.py's CausalCRNN (two
    causal convolutions carrying 4 and 1 frames) and ValidCRNN (unpadded dilated conv, MaxPool1d(2),
    strided conv: each carries its frames and a phase). No peer: onnxruntime cannot carry a
    convolution's frames between calls."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import conv_models
    import lstminfer

    x = conv_models.example("causal", np.random.default_rng(0), 1, frames)
    for name in ("causal", "valid"):
        stream = lstminfer.load(conv_models.export(name, time=29)).stream()
        for n in (1, 10):
            stream.reset()
            spent = []
            for start in range(0, frames, n):
                chunk = x[:, start:start + n]
                began = time.perf_counter()
                stream.step(chunk)
                spent.append(time.perf_counter() - began)
            print(f"stream {name:6} step of {n:2} frame(s): {np.median(spent[len(spent) // 10:]) * 1e6:6.1f} µs")


if __name__ == "__main__":
    print(f"{'model':6} {'row':6} {'lstminfer µs':>13} {'onnxruntime µs':>15} {'ratio':>6}  max |diff|")
    for name in LENGTH:
        for row in ROWS:
            diff = check(name, row)
            ours, peer = _interleaved_medians([runner(p, name, row) for p in ("lstminfer", "onnxruntime")])
            print(f"{name:6} {row:6} {ours * 1e6:13.0f} {peer * 1e6:15.0f} {peer / ours:6.2f}  {diff:.1e}")
    stream_steps()
