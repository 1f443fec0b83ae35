"""The first example of every onnxruntime tutorial: load, look at the inputs, run, read the outputs."""
import sys

import numpy as np
import onnxruntime as ort

model_path, out_path = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])

rng = np.random.default_rng(0)
x = rng.random((2, 20, 2), dtype=np.float32)
h0 = np.zeros((1, 2, 32), dtype=np.float32)
c0 = np.zeros((1, 2, 32), dtype=np.float32)

input_name = session.get_inputs()[0].name
output_name = session.get_outputs()[0].name
y_only = session.run([output_name], {input_name: x, "h0": h0, "c0": c0})[0]
y, h_n, c_n = session.run(None, {"x": x, "h0": h0, "c0": c0})
from_lists = session.run(None, {"x": x.tolist(), "h0": h0.tolist(), "c0": c0.tolist()})[0]  # lists convert too

np.savez(out_path, y_only=y_only, y=y, h_n=h_n, c_n=c_n, from_lists=from_lists)
