"""onnxruntime's ``capi`` package path, so that ``from lstminfer.capi.onnxruntime_pybind11_state import
InvalidArgument`` works as the onnxruntime import it replaces does."""
