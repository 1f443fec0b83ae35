"""lstminfer as an ``onnx.backend`` backend, so ONNX's own backend tests (and any
tool written against ``onnx.backend.base.Backend``) can drive it.

    import lstminfer.onnx_backend as backend
    outputs = backend.run_model(model_proto, [x])
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .model import Model
from .ops.registry import MAX_OPSET


class LstminferRep(BackendRep):
    """A prepared model; ``run`` takes inputs in graph order (or a dict by name)."""

    def __init__(self, model: Model):
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feeds = dict(zip(self.model.input_names, inputs))
        return tuple(self.model.run(None, feeds))


class LstminferBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> LstminferRep:
        if not cls.supports_device(device):
            raise ValueError(f"lstminfer runs on the CPU only, not on {device!r}")
        return LstminferRep(Model(model, **kwargs))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[Any], device: str = "CPU",
                 outputs_info: Any = None, **kwargs: Any) -> tuple[Any, ...]:
        """Run one node: wraps it in a graph whose inputs take the given arrays' types."""
        opset = kwargs.pop("opset_version", None)
        graph_inputs = [
            onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(x).dtype),
                                               np.asarray(x).shape)
            for name, x in zip(node.input, inputs) if name
        ]
        graph_outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name]
        graph = onnx.helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        imports = [onnx.helper.make_opsetid("", opset or min(onnx.defs.onnx_opset_version(), MAX_OPSET))]
        if node.domain not in ("", "ai.onnx"):
            imports.append(onnx.helper.make_opsetid(node.domain, 1))
        model = onnx.helper.make_model(graph, opset_imports=imports)
        feeds = [np.asarray(x) for name, x in zip(node.input, inputs) if name]
        return cls.run_model(model, feeds, device, **kwargs)


prepare = LstminferBackend.prepare
run_model = LstminferBackend.run_model
run_node = LstminferBackend.run_node
supports_device = LstminferBackend.supports_device
