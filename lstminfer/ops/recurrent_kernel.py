"""Which kernel runs a recurrent node: the weights' precision, the backend's builder, the reference.

The precision comes from the ``quantize`` load option, else from the file:
W/R that are folded int8 ``DequantizeLinear`` outputs with one scale per row
(``lstminfer.quantize``'s files, ``quantization.stored_int8``) are int8, with
those very values and scales; bf16-exact W/R are bf16; the rest float32.
The backend's builder (``lstminfer.backends``) is asked for a kernel in that
precision; where it has none, its float32 kernel runs on the weights expanded
back to float32 once, at load (the accuracy oracle of the low-precision
kernels: it saves no memory and gains no speed). A node the backend declines
runs the reference. Every kernel gets ``kernel.precision`` (printed by
``lstminfer info``) and its describe() names the precision.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import backends
from ..graph import Node
from ..kernels.shell import FLOAT32, KernelContext, Precision, RecurrentWeights, reference_kernel
from ..quantization import fake_quantize, is_bf16_exact, stored_int8
from .registry import BuildContext, Kernel

# kernel.precision (what ``lstminfer info`` prints) and the describe() suffix of each case.
PRECISION = {
    "float32": ("float32", "float32 weights"),
    "int8": ("int8 (weight-only, expanded to float32 at load)",
             "int8 weights (per-channel symmetric, weight-only: expanded to float32 at load)"),
    "int8-kernel": ("int8 (int8 kernel, weight-only)",
                    "int8 weights (per-channel symmetric, weight-only: int8 in the kernel, float32 accumulation)"),
    "bf16": ("bf16 (weight-only, expanded to float32 at load)",
             "bf16 weights (weight-only: expanded to float32 at load)"),
    "bf16-kernel": ("bf16 (bf16 kernel, weight-only)",
                    "bf16 weights (weight-only: bf16 in the kernel, float32 accumulation)"),
}
STORED = ", stored in the file"  # describe() note for weights that come quantized in the model


def _tag(kernel: Any, precision: str, note: str = "") -> Any:
    short, text = PRECISION[precision]
    scheme = getattr(kernel, "scheme", "weight-only") if precision == "int8-kernel" else "weight-only"
    if scheme != "weight-only":  # the int8 kernel's dynamic scheme (int8 activations, int32 accumulation)
        short, text = f"int8 (int8 kernel, dynamic: {scheme})", f"int8 weights and activations ({scheme})"
    kernel.precision = short
    kernel.describe = f"{getattr(kernel, 'describe', 'reference')}; {text}{note}"
    return kernel


def _constant_weights(node: Node, ctx: BuildContext) -> RecurrentWeights:
    def constant(index: int):
        name = node.inputs[index] if len(node.inputs) > index else ""
        return ctx.constant(name) if name else None

    return RecurrentWeights(*(constant(i) for i in (1, 2, 3, 7)))


def _kernel(spec: Any, weights: RecurrentWeights, precision: Precision, ctx: BuildContext,
            label: str) -> Kernel | None:
    """The backend's kernel in ``precision``; float32: the reference where the backend declines.
    A low precision the backend declines gives None."""
    build = backends.builder(ctx.backend)
    if build is None:
        return reference_kernel(spec, label) if precision.name == "float32" else None
    kernel, why_not = build(spec, weights, precision, KernelContext(ctx.options.get("threads", 1), label))
    if kernel is not None or precision.name != "float32":
        return kernel
    kernel = reference_kernel(spec, label)
    kernel.describe = f"reference ({ctx.backend} declined: {why_not})"
    return kernel


def _is_float32(w: Any) -> bool:
    return w is not None and np.asarray(w).dtype == np.float32


def build_recurrent_kernel(spec: Any, node: Node, ctx: BuildContext) -> Kernel:
    """The kernel of a recurrent node whose spec is parsed (hidden_size filled in where R is known)."""
    label = node.label()
    weights = _constant_weights(node, ctx)
    mode = ctx.options.get("quantize")
    if not (_is_float32(weights.W) and _is_float32(weights.R)):
        kernel = _kernel(spec, weights, FLOAT32, ctx, label)
        if mode:
            kernel.describe = f"{kernel.describe}; float32 weights (W/R not float32 constants: not quantized)"
        kernel.precision = PRECISION["float32"][0]
        return kernel

    note = ""
    if mode:
        precision = Precision(mode)
    else:  # as the file stores them
        note = STORED
        if stored_int8(weights.W) is not None and stored_int8(weights.R) is not None:
            # Dequantized weights (a DequantizeLinear computed them) may run with int8 activations
            # too; float initializers that merely happen to be int8-exact keep float results.
            plain = ctx.options.get("initializers", frozenset())
            scheme = "weight-only" if node.inputs[1] in plain or node.inputs[2] in plain else "auto"
            precision = Precision("int8", int8_scheme=scheme)
        elif is_bf16_exact(weights.W) and is_bf16_exact(weights.R):
            precision = Precision("bf16")
        else:
            return _tag(_kernel(spec, weights, FLOAT32, ctx, label), "float32")

    kernel = _kernel(spec, weights, precision, ctx, label)
    if kernel is not None:
        return _tag(kernel, f"{precision.name}-kernel", note)
    if not mode:  # the file's weights are the low-precision values already
        return _tag(_kernel(spec, weights, FLOAT32, ctx, label), precision.name, note)
    W_q, R_q = fake_quantize(weights.W, mode), fake_quantize(weights.R, mode)
    inner = _kernel(spec, RecurrentWeights(W_q, R_q, weights.B, weights.P), FLOAT32, ctx, label)

    def kernel(X, W, R, *rest):
        return inner(X, W_q, R_q, *rest)

    kernel.describe = getattr(inner, "describe", "reference")
    return _tag(kernel, mode)


def build_stored_int8_kernel(spec: Any, weights: RecurrentWeights, ctx: BuildContext, label: str,
                             note: str) -> Kernel | None:
    """The backend's int8 kernel on int8 values and row scales a file stores (``weights.stored``,
    with W/R their float32 expansion); its float32 kernel on that expansion where it has no int8
    one; None on the reference backend (the caller's own emulation is the oracle)."""
    if backends.builder(ctx.backend) is None:
        return None
    kernel = _kernel(spec, weights, Precision("int8", int8_scheme="auto"), ctx, label)
    if kernel is not None:
        return _tag(kernel, "int8-kernel", note)
    kernel = _kernel(spec, weights, FLOAT32, ctx, label)
    return None if kernel.describe.startswith("reference") else _tag(kernel, "int8", note)
