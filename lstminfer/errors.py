"""Exception types raised by lstminfer.

Every error names what went wrong (file, node, input) and expected vs. got.

Two families live here, so that code written for onnxruntime catches ours unchanged:

* onnxruntime's own exception classes (``Fail``, ``InvalidArgument``, ``NoSuchFile``, ...), the ones
  ``onnxruntime.capi.onnxruntime_pybind11_state`` defines; ``lstminfer.capi.onnxruntime_pybind11_state``
  re-exports them under the same path;
* lstminfer's errors, each a subclass of the fitting onnxruntime one (a bad feed is an
  ``InvalidArgument``, a malformed model an ``InvalidGraph``/``InvalidProtobuf``, an unsupported op a
  ``NotImplemented``, a missing file a ``NoSuchFile``). Input and model-format errors also subclass
  ``ValueError``, as they always have.
"""
from __future__ import annotations

_ORT_MODULE = "lstminfer.capi.onnxruntime_pybind11_state"


def _ort_class(name: str) -> type:
    """An exception class named and placed as onnxruntime's (plain ``Exception`` subclasses there too)."""
    cls = type(name, (Exception,), {"__doc__": f"onnxruntime's ``{name}``: lstminfer errors of that kind subclass it."})
    cls.__module__ = _ORT_MODULE
    return cls


# onnxruntime's status codes as Python exceptions (onnxruntime_pybind11_state; same names, same order).
Fail = _ort_class("Fail")
InvalidArgument = _ort_class("InvalidArgument")
NoSuchFile = _ort_class("NoSuchFile")
NoModel = _ort_class("NoModel")
EngineError = _ort_class("EngineError")
RuntimeException = _ort_class("RuntimeException")
InvalidProtobuf = _ort_class("InvalidProtobuf")
ModelLoaded = _ort_class("ModelLoaded")
OrtNotImplemented = _ort_class("NotImplemented")  # the capi module exports it as NotImplemented
InvalidGraph = _ort_class("InvalidGraph")
EPFail = _ort_class("EPFail")
ModelLoadCanceled = _ort_class("ModelLoadCanceled")
ModelRequiresCompilation = _ort_class("ModelRequiresCompilation")
NotFound = _ort_class("NotFound")
DeviceReset = _ort_class("DeviceReset")

ORT_EXCEPTIONS = {cls.__name__: cls for cls in (
    Fail, InvalidArgument, NoSuchFile, NoModel, EngineError, RuntimeException, InvalidProtobuf, ModelLoaded,
    OrtNotImplemented, InvalidGraph, EPFail, ModelLoadCanceled, ModelRequiresCompilation, NotFound, DeviceReset)}


class LstminferError(Exception):
    """Base class of every error lstminfer raises on purpose."""


class UnsupportedModelError(LstminferError, OrtNotImplemented):
    """The model uses an op, opset, domain, attribute or dtype we do not run (or comes from a newer
    onnx release than the installed one reads)."""


class InvalidModelError(LstminferError, InvalidGraph, InvalidProtobuf, ValueError):
    """The model file is malformed, truncated or inconsistent."""


class ModelNotFoundError(LstminferError, NoSuchFile, FileNotFoundError):
    """The model path names no file (nothing there, or a directory)."""


class InvalidInputError(LstminferError, InvalidArgument, ValueError):
    """A feed is missing, unknown, or has the wrong dtype, rank or shape."""


class InvalidArgumentError(LstminferError, InvalidArgument, ValueError):
    """A bad argument to an API call (unknown backend, unknown output name...)."""


class BackendUnavailableError(LstminferError, EPFail, RuntimeError):
    """The requested backend cannot run here (not built, not installed)."""


class ExecutionError(LstminferError, RuntimeException, RuntimeError):
    """A node failed while running; the message names the node."""


class NotStreamableError(LstminferError):
    """The model cannot be run chunk by chunk; the message names the node."""
