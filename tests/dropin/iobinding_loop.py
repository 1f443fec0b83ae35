"""Streaming with IOBinding: inputs and outputs bound to preallocated arrays once, then one frame per
run with the recurrent state copied back into the bound state inputs."""
import sys

import numpy as np
import onnxruntime as ort

model_path, out_path = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])

frames = np.random.default_rng(1).random((50, 1, 1, 2), dtype=np.float32)
x = np.empty((1, 1, 2), dtype=np.float32)
h, c = np.zeros((1, 1, 32), dtype=np.float32), np.zeros((1, 1, 32), dtype=np.float32)
y = np.empty((1, 1, 1), dtype=np.float32)
h_n, c_n = np.empty_like(h), np.empty_like(c)

binding = session.io_binding()
binding.bind_cpu_input("x", x)
binding.bind_cpu_input("h0", h)
binding.bind_cpu_input("c0", c)
binding.bind_output("y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
binding.bind_output("h_n", "cpu", 0, np.float32, list(h_n.shape), h_n.ctypes.data)
binding.bind_output("c_n", "cpu", 0, np.float32, list(c_n.shape), c_n.ctypes.data)

ys = []
for frame in frames:
    x[...] = frame
    binding.synchronize_inputs()
    session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    ys.append(y.copy())
    h[...] = h_n
    c[...] = c_n

# An output bound by name only: onnxruntime allocates it; copy_outputs_to_cpu returns it.
binding.clear_binding_outputs()
binding.bind_output("y")
session.run_with_iobinding(binding)
y_by_name = binding.copy_outputs_to_cpu()[0]
y_as_ortvalue = binding.get_outputs()[0].numpy()

whole = session.run(None, {"x": frames.reshape(1, 50, 2), "h0": np.zeros_like(h), "c0": np.zeros_like(c)})[0]
np.savez(out_path, ys=np.concatenate(ys, axis=1), h=h, c=c, y_by_name=y_by_name, y_as_ortvalue=y_as_ortvalue,
         whole=whole)
