"""Rough latencies (median µs, one thread) of a last-step head streamed one frame at a time and of a model
with a node run by the onnxruntime fallback, each beside onnxruntime on the same file.

    PYTHONPATH=. python benchmarks/heads_fallback.py
"""
import io
import warnings

import torch
import sys
import time

import numpy as np
import onnxruntime as ort

import lstminfer

sys.path.insert(0, "tests")
import torch_models as zoo
def best(f, n=300):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e6
so = ort.SessionOptions(); so.intra_op_num_threads = 1
# fallback overhead: LSTM+Resize+Linear, B=1 T=32
class Upsampled(torch.nn.Module):  # LSTM -> F.interpolate (ONNX Resize: not in lstminfer) -> Linear
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = torch.nn.LSTM(5, 8, batch_first=True), torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.nn.functional.interpolate(self.rnn(x)[0], scale_factor=2.0, mode="nearest"))


buf = io.BytesIO()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(Upsampled().eval(), (torch.zeros(2, 4, 5),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "batch", 1: "time"}})
x = np.random.default_rng(0).standard_normal((1, 32, 5)).astype(np.float32)
m = lstminfer.load(buf.getvalue(), fallback="onnxruntime")
s = ort.InferenceSession(buf.getvalue(), so)
print(f"resize model B=1 T=32: lstminfer+fallback {best(lambda: m.run(None, {'x': x})):.1f} us, onnxruntime {best(lambda: s.run(None, {'x': x})):.1f} us")
# last-step head streaming: one frame per step vs onnxruntime re-running nothing comparable: step latency
for spec, exporter, dyn in ((zoo.LastStepSpec(), "torchscript", False), (zoo.LastStepSpec(), "dynamo", True)):
    data = zoo.export(spec, exporter, 17 if exporter == "torchscript" else 18, 3, 7, dyn)
    mm = lstminfer.load(data); st = mm.stream(); ss = ort.InferenceSession(data, so)
    f1 = np.random.default_rng(1).standard_normal((1, 1, 5)).astype(np.float32)
    print(f"{spec.name} {exporter}: stream.step(1 frame) {best(lambda: st.step(f1), 2000):.1f} us; onnxruntime run on the 1 frame {best(lambda: ss.run(None, {'x': f1}), 2000):.1f} us")
