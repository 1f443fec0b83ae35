"""LSTM, GRU and RNN: attributes parsed and checked at load, kernels swappable.

The factory turns a node into a ``RecurrentSpec`` (frozen, backend-neutral)
and then asks ``recurrent_kernel.build_recurrent_kernel`` for a kernel: the
builder of ``ctx.backend`` (``lstminfer.backends``) gets the first try, in
the weights' precision, the pure-NumPy reference (``lstminfer.reference``)
is the fallback. Every kernel carries ``kernel.describe``, a short string
naming what runs it.

Weights that are constants at load (initializers, folded values) are
checked against hidden_size/direction at load (``InvalidModelError``); all
shapes are checked again at run time, where W/R may be graph inputs, and
raise ``InvalidInputError`` naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import reference
from ..errors import InvalidModelError
from ..graph import Node
from ..reference.activations import Activation
from . import recurrent_rules
from .recurrent_kernel import build_recurrent_kernel
from .registry import BuildContext, Kernel, register

@dataclass(frozen=True)
class RecurrentSpec:
    """A recurrent node's attributes, validated, with the spec defaults filled in."""

    op: str  # "LSTM" | "GRU" | "RNN"
    hidden_size: int | None  # None: taken from R at run time
    direction: str  # "forward" | "reverse" | "bidirectional"
    layout: int  # 0: [T, B, ...]; 1: [B, T, ...]
    activations: tuple[Activation, ...]  # per direction, in spec order (LSTM f,g,h; GRU f,g; RNN f)
    clip: float | None  # None: no clip
    input_forget: bool = False  # LSTM only
    linear_before_reset: bool = False  # GRU only
    num_outputs: int = 1  # how many outputs the node lists (trailing ones may be omitted)

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    def reference_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``reference.lstm``/``gru``/``rnn`` for this spec."""
        kwargs: dict[str, Any] = dict(
            hidden_size=self.hidden_size, direction=self.direction, layout=self.layout,
            activations=self.activations, clip=self.clip,
        )
        if self.op == "LSTM":
            kwargs["input_forget"] = int(self.input_forget)
        if self.op == "GRU":
            kwargs["linear_before_reset"] = int(self.linear_before_reset)
        return kwargs


# ------------------------------------------------------------ parsing --


def parse_spec(node: Node, ctx: BuildContext, constant=None) -> RecurrentSpec:
    """Check the node against its op's rule table (``recurrent_rules``), then read its
    attributes with their ONNX defaults. ``constant(index)``: the node's input ``index``
    if known at load (its shape rules run, hidden_size may come from R), else None;
    without it only the attribute rules run (DynamicQuantizeLSTM's W/R are laid out otherwise)."""
    constant = constant or (lambda index: None)
    recurrent_rules.check(node, ctx.opset(), constant)
    subject = recurrent_rules.Subject(node, ctx.opset(), constant)
    op, direction = node.op_type, node.attr("direction", "forward")
    clip = node.attr("clip", None)
    try:
        activations = reference.cell_activations(
            op, direction, node.attr("activations", None),
            node.attr("activation_alpha", None), node.attr("activation_beta", None))
    except ValueError as err:  # the rules table should have caught it
        raise InvalidModelError(f"{node.label()}: attribute 'activations': {err}") from None
    return RecurrentSpec(
        op=op, hidden_size=subject.hidden_size(), direction=direction, layout=node.attr("layout", 0),
        activations=activations, clip=None if clip is None else float(clip),
        input_forget=bool(node.attr("input_forget", 0)),
        linear_before_reset=bool(node.attr("linear_before_reset", 0)),
        num_outputs=len(node.outputs),
    )


def _build(node: Node, ctx: BuildContext) -> Kernel:
    def constant(index: int):
        if index < len(node.inputs) and node.inputs[index]:
            return ctx.constant(node.inputs[index])
        return None

    return build_recurrent_kernel(parse_spec(node, ctx, constant), node, ctx)


@register("LSTM", since=7)
def lstm_factory(node: Node, ctx: BuildContext) -> Kernel:
    return _build(node, ctx)


@register("GRU", since=7)
def gru_factory(node: Node, ctx: BuildContext) -> Kernel:
    return _build(node, ctx)


@register("RNN", since=7)
def rnn_factory(node: Node, ctx: BuildContext) -> Kernel:
    return _build(node, ctx)
