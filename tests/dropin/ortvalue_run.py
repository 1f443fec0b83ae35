"""OrtValues: inputs wrapped with ortvalue_from_numpy, run_with_ort_values, and an output bound to an
OrtValue made by ortvalue_from_shape_and_type."""
import sys

import numpy as np
import onnxruntime as ort

model_path, out_path = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])

x = np.random.default_rng(2).random((3, 15, 2), dtype=np.float32)
state = np.zeros((1, 3, 32), dtype=np.float32)
x_value = ort.OrtValue.ortvalue_from_numpy(x, "cpu", 0)
state_value = ort.OrtValue.ortvalue_from_numpy(state)
info = [x_value.device_name(), x_value.data_type(), str(x_value.shape()), str(x_value.is_tensor())]

outputs = session.run_with_ort_values(["y", "h_n"], {"x": x_value, "h0": state_value, "c0": state_value})
y, h_n = outputs[0].numpy(), outputs[1].numpy()

y_value = ort.OrtValue.ortvalue_from_shape_and_type([3, 15, 1], np.float32, "cpu", 0)
binding = session.io_binding()
binding.bind_ortvalue_input("x", x_value)
binding.bind_ortvalue_input("h0", state_value)
binding.bind_ortvalue_input("c0", state_value)
binding.bind_ortvalue_output("y", y_value)
session.run_with_iobinding(binding)

np.savez(out_path, y=y, h_n=h_n, y_bound=y_value.numpy(), info=np.array(info),
         y_type=np.array(outputs[0].data_type()), y_shape=np.array(outputs[0].shape()))
