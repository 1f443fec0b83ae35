"""SessionOptions as performance guides set them: one intra-op thread, all graph optimizations,
sequential execution, quiet logging; then read back what the session was built with."""
import sys

import numpy as np
import onnxruntime as ort

model_path, out_path = sys.argv[1], sys.argv[2]

sess_options = ort.SessionOptions()
sess_options.intra_op_num_threads = 1
sess_options.inter_op_num_threads = 1
sess_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
sess_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess_options.log_severity_level = 3
sess_options.enable_cpu_mem_arena = True
sess_options.add_session_config_entry("session.intra_op.allow_spinning", "0")

session = ort.InferenceSession(model_path, sess_options, providers=["CPUExecutionProvider"])
options = session.get_session_options()

x = np.linspace(0, 1, 2 * 30 * 2, dtype=np.float32).reshape(2, 30, 2)
state = np.zeros((1, 2, 32), dtype=np.float32)
y, h_n, c_n = session.run(None, {"x": x, "h0": state, "c0": state})

disabled = ort.SessionOptions()
disabled.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
y_unoptimized = ort.InferenceSession(model_path, disabled, providers=["CPUExecutionProvider"]).run(
    ["y"], {"x": x, "h0": state, "c0": state})[0]

np.savez(out_path, y=y, h_n=h_n, c_n=c_n, y_unoptimized=y_unoptimized,
         threads=np.array(options.intra_op_num_threads),
         level=np.array(int(options.graph_optimization_level)),
         config=np.array(options.get_session_config_entry("session.intra_op.allow_spinning")))
