"""lstminfer: fast, trustworthy CPU inference for ONNX recurrent models.

    import lstminfer
    m = lstminfer.load("model.onnx")        # backend="auto" | "cython" | "numba" | "reference"
    y = m.run(None, {"X": x})               # exactly like onnxruntime
    y = m.predict(x)                        # friendlier

onnxruntime code runs unchanged after ``import lstminfer as ort``: ``ort.InferenceSession(path,
sess_options, providers)``, ``ort.SessionOptions``, ``io_binding``, ``OrtValue``, ``run_async`` and
onnxruntime's exceptions (``lstminfer.capi.onnxruntime_pybind11_state``); README.md's
"onnxruntime compatibility" table lists every name.
"""
from __future__ import annotations

import importlib
from typing import Any

from .arguments import check_keywords, keyword_names, strict_keywords
from .backends import available_backends
from .errors import (
    BackendUnavailableError,
    ExecutionError,
    InvalidArgumentError,
    InvalidInputError,
    InvalidModelError,
    LstminferError,
    ModelNotFoundError,
    NotStreamableError,
    UnsupportedModelError,
)
from .model import Model, ModelMetadata, NodeArg

__version__ = "0.1.0"
_load_options: frozenset[str] | None = None  # Model's keywords, found on the first load given any


def load(model: Any, backend: str = "auto", **options: Any) -> Model:
    """Load an ONNX model (path, bytes or ``onnx.ModelProto``) and build its plan.

    ``backend``: "auto" (the first available of "cython", "numba", "reference"), "cython" (kernels
    compiled ahead of time), "numba" (JIT, cached on disk) or "reference" (pure NumPy, the oracle).
    ``options``: the keywords ``Model`` takes (``threads``, ``quantize``, ``sess_options``,
    ``providers``, ...); an unknown one is a ``TypeError`` naming the closest valid one."""
    global _load_options
    if options:
        if _load_options is None:
            _load_options = keyword_names(Model.__init__) - {"model"}
        check_keywords("load()", options, _load_options)
    return Model(model, backend=backend, **options)


@strict_keywords
def quantize(src: Any, dst: Any, mode: str = "int8", *, dense: bool = True):
    """Save ``src`` as a standard ONNX file with int8 (DequantizeLinear) or bf16 (Cast) weights
    that onnxruntime runs and ``lstminfer.load`` runs on its int8 kernel; returns a summary
    of what was quantized (see ``lstminfer.quantize_export``)."""
    from .quantize_export import quantize as write_quantized  # imports onnx: only when used

    return write_quantized(src, dst, mode, dense=dense)


# Public names imported on first use (PEP 562): ``import lstminfer`` stays as quick as before.
_LAZY = {
    "InferenceSession": ("session", "InferenceSession"),
    "SessionOptions": ("session_options", "SessionOptions"),
    "RunOptions": ("session_options", "RunOptions"),
    "GraphOptimizationLevel": ("session_options", "GraphOptimizationLevel"),
    "ExecutionMode": ("session_options", "ExecutionMode"),
    "get_available_providers": ("session_options", "get_available_providers"),
    "get_all_providers": ("session_options", "get_all_providers"),
    "get_device": ("session_options", "get_device"),
    "get_version_string": ("session_options", "get_version_string"),
    "get_build_info": ("session_options", "get_build_info"),
    "set_default_logger_severity": ("session_options", "set_default_logger_severity"),
    "set_default_logger_verbosity": ("session_options", "set_default_logger_verbosity"),
    "set_seed": ("session_options", "set_seed"),
    "disable_telemetry_events": ("session_options", "disable_telemetry_events"),
    "enable_telemetry_events": ("session_options", "enable_telemetry_events"),
    "OrtValue": ("ort_value", "OrtValue"),
    "IOBinding": ("io_binding", "IOBinding"),
    "SessionIOBinding": ("io_binding", "IOBinding"),
    "models": ("models", None),
    "capi": ("capi", None),
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'lstminfer' has no attribute '{name}'")
    module = importlib.import_module(f".{where[0]}", __name__)
    if where[0] == "capi":
        importlib.import_module(".capi.onnxruntime_pybind11_state", __name__)
    value = module if where[1] is None else getattr(module, where[1])
    globals()[name] = value
    return value


__all__ = [
    "BackendUnavailableError", "ExecutionError", "ExecutionMode", "GraphOptimizationLevel", "IOBinding",
    "InferenceSession", "InvalidArgumentError", "InvalidInputError", "InvalidModelError", "LstminferError", "Model",
    "ModelMetadata", "ModelNotFoundError", "NodeArg", "NotStreamableError", "OrtValue", "RunOptions",
    "SessionIOBinding", "SessionOptions", "UnsupportedModelError", "available_backends", "capi",
    "disable_telemetry_events", "enable_telemetry_events", "get_all_providers", "get_available_providers",
    "get_build_info", "get_device", "get_version_string", "load", "models", "quantize", "set_default_logger_severity",
    "set_default_logger_verbosity", "set_seed",
]


def __dir__() -> list[str]:
    """The public API only (not the submodules an import leaves as attributes)."""
    return sorted(__all__ + ["__version__"])
