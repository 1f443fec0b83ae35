"""Operator kernels. Importing this package fills the op table in ``registry``.

One module per family; each registers its ops with ``@register``.
"""
from . import control, elementwise, nn, quantized, recurrent, reduce, sequence, tensor  # noqa: F401
from .registry import BuildContext, Kernel, OpSpec, lookup, register, supported_ops

__all__ = ["BuildContext", "Kernel", "OpSpec", "lookup", "register", "supported_ops"]
