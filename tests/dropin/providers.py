"""The provider list of GPU tutorials, CUDA first and CPU as the fallback, on a machine without CUDA:
onnxruntime warns and runs on the CPU."""
import sys
import warnings

import numpy as np
import onnxruntime as ort

model_path, out_path = sys.argv[1], sys.argv[2]

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    session = ort.InferenceSession(model_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
warned_about_cuda = any("CUDAExecutionProvider" in str(w.message) for w in caught)

x = np.full((1, 10, 2), 0.5, dtype=np.float32)
state = np.zeros((1, 1, 32), dtype=np.float32)
y = session.run(None, {"x": x, "h0": state, "c0": state})[0]

np.savez(out_path, y=y, providers=np.array(session.get_providers()), warned=np.array(warned_about_cuda),
         cpu_available=np.array("CPUExecutionProvider" in ort.get_available_providers()),
         device=np.array(ort.get_device()), cpu_options=np.array(sorted(session.get_provider_options())))
