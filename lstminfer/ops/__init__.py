"""Operator kernels, one module per family; each registers its ops with ``@register``.

The modules are imported on demand: ``lookup`` imports the one that defines a
node's op (``registry.OP_MODULES``), ``supported_ops``/``load_all`` all of them.
"""
from .registry import BuildContext, Kernel, OpSpec, load_all, lookup, register, supported_ops

__all__ = ["BuildContext", "Kernel", "OpSpec", "load_all", "lookup", "register", "supported_ops"]
