"""lstminfer: fast, trustworthy CPU inference for ONNX recurrent models.

    import lstminfer
    m = lstminfer.load("model.onnx")        # or lstminfer.InferenceSession(...)
    y = m.run(None, {"X": x})               # exactly like onnxruntime
    y = m.predict(x)                        # friendlier
"""
from __future__ import annotations

from typing import Any

from .backends import available_backends
from .errors import (
    BackendUnavailableError,
    ExecutionError,
    InvalidArgumentError,
    InvalidInputError,
    InvalidModelError,
    LstminferError,
    NotStreamableError,
    UnsupportedModelError,
)
from .model import Model, ModelMetadata, NodeArg

__version__ = "0.1.0"


def load(model: Any, backend: str = "auto", **options: Any) -> Model:
    """Load an ONNX model (path, bytes or ``onnx.ModelProto``) and build its plan."""
    return Model(model, backend=backend, **options)


def quantize(src: Any, dst: Any, mode: str = "int8", *, dense: bool = True):
    """Save ``src`` as a standard ONNX file with int8 (DequantizeLinear) or bf16 (Cast) weights
    that onnxruntime runs and ``lstminfer.load`` runs on its int8 kernel; returns a summary
    of what was quantized (see ``lstminfer.quantize_export``)."""
    from .quantize_export import quantize as write_quantized  # imports onnx: only when used

    return write_quantized(src, dst, mode, dense=dense)


# Same object as ``Model``: swapping ``onnxruntime`` for ``lstminfer`` is enough.
InferenceSession = Model

__all__ = [
    "BackendUnavailableError", "ExecutionError", "InferenceSession", "InvalidArgumentError",
    "InvalidInputError", "InvalidModelError", "LstminferError", "Model", "ModelMetadata",
    "NodeArg", "NotStreamableError", "UnsupportedModelError", "available_backends", "load", "quantize",
]
