"""Inspecting a model before running it: inputs, outputs and metadata, as deployment scripts print them."""
import sys

import numpy as np
import onnxruntime as ort

model_path, out_path = sys.argv[1], sys.argv[2]
with open(model_path, "rb") as f:
    session = ort.InferenceSession(f.read(), providers=["CPUExecutionProvider"])  # from bytes

inputs = [f"{i.name} {i.shape} {i.type}" for i in session.get_inputs()]
outputs = [f"{o.name} {o.shape} {o.type}" for o in session.get_outputs()]
meta = session.get_modelmeta()
fields = [meta.producer_name, meta.graph_name, meta.domain, meta.description, str(meta.version)]
custom = sorted(meta.custom_metadata_map.items())
overridable = [i.name for i in session.get_overridable_initializers()]

np.savez(out_path, inputs=np.array(inputs), outputs=np.array(outputs), fields=np.array(fields),
         custom=np.array(custom), overridable=np.array(overridable, dtype=str))
