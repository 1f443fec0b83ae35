"""Catching onnxruntime's exceptions: a feed of the wrong dtype is InvalidArgument, a wrong rank too,
a missing file NoSuchFile, a missing input a ValueError."""
import sys

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, NoSuchFile

model_path, out_path = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
state = np.zeros((1, 1, 32), dtype=np.float32)
caught = {}

try:
    session.run(None, {"x": np.zeros((1, 5, 2), dtype=np.float64), "h0": state, "c0": state})
except InvalidArgument:
    caught["wrong_dtype"] = "InvalidArgument"

try:
    session.run(None, {"x": np.zeros((5, 2), dtype=np.float32), "h0": state, "c0": state})
except ort.capi.onnxruntime_pybind11_state.InvalidArgument:
    caught["wrong_rank"] = "InvalidArgument"

try:
    session.run(None, {"x": np.zeros((1, 5, 2), dtype=np.float32)})
except ValueError:
    caught["missing_input"] = "ValueError"

try:
    ort.InferenceSession(model_path + ".missing.onnx", providers=["CPUExecutionProvider"])
except NoSuchFile:
    caught["missing_file"] = "NoSuchFile"

np.savez(out_path, caught=np.array(sorted(caught.items())))
