"""onnxruntime's exception classes at onnxruntime's module path (``onnxruntime.capi.onnxruntime_pybind11_state``).

lstminfer's own errors subclass them (``lstminfer.errors``): ``except InvalidArgument`` catches a bad
feed, ``except NoSuchFile`` a missing model file, ``except NotImplemented`` an unsupported op.
"""
from ..errors import ORT_EXCEPTIONS

Fail = ORT_EXCEPTIONS["Fail"]
InvalidArgument = ORT_EXCEPTIONS["InvalidArgument"]
NoSuchFile = ORT_EXCEPTIONS["NoSuchFile"]
NoModel = ORT_EXCEPTIONS["NoModel"]
EngineError = ORT_EXCEPTIONS["EngineError"]
RuntimeException = ORT_EXCEPTIONS["RuntimeException"]
InvalidProtobuf = ORT_EXCEPTIONS["InvalidProtobuf"]
ModelLoaded = ORT_EXCEPTIONS["ModelLoaded"]
NotImplemented = ORT_EXCEPTIONS["NotImplemented"]  # noqa: A001 (onnxruntime's name)
InvalidGraph = ORT_EXCEPTIONS["InvalidGraph"]
EPFail = ORT_EXCEPTIONS["EPFail"]
ModelLoadCanceled = ORT_EXCEPTIONS["ModelLoadCanceled"]
ModelRequiresCompilation = ORT_EXCEPTIONS["ModelRequiresCompilation"]
NotFound = ORT_EXCEPTIONS["NotFound"]
DeviceReset = ORT_EXCEPTIONS["DeviceReset"]

__all__ = sorted(ORT_EXCEPTIONS)
