"""The ONNX spec's rules for LSTM, GRU and RNN nodes, as one table per op.

Each ``Rule`` is one sentence of the operator spec (onnx/docs/Operators.md,
opsets 7-22) with a check that returns the problem found, or None. ``recurrent``
runs the table of a node's op at load, in order (structure, attribute types,
attribute values, constant input shapes): the first broken rule raises
``InvalidModelError`` (or ``UnsupportedModelError`` for valid ONNX we do not run)
naming the node and the rule's id. tests/test_recurrent_rules.py breaks every
rule of every table with a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import InvalidModelError, LstminferError, UnsupportedModelError
from ..graph import Node
from ..reference import DEFAULT_ACTIVATIONS, DIRECTIONS, GATES, SUPPORTED_DTYPES
from ..reference.activations import ACTIVATION_KINDS, SUPPORTED_ACTIVATIONS

# Inputs and outputs of each op, in spec order.
INPUTS = {
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
OUTPUTS = {"LSTM": ("Y", "Y_h", "Y_c"), "GRU": ("Y", "Y_h"), "RNN": ("Y", "Y_h")}
REQUIRED_INPUTS = 3  # X, W, R
LAYOUT_SINCE = 14  # the layout attribute exists from opset 14

# Attribute -> (ONNX attribute type, the Python value lstminfer's graph holds for it).
ATTRIBUTE_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "hidden_size": ("INT", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "direction": ("STRING", lambda v: isinstance(v, str)),
    "layout": ("INT", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "clip": ("FLOAT", lambda v: isinstance(v, float)),
    "activations": ("STRINGS", lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v)),
    "activation_alpha": ("FLOATS", lambda v: isinstance(v, (list, tuple)) and all(isinstance(f, float) for f in v)),
    "activation_beta": ("FLOATS", lambda v: isinstance(v, (list, tuple)) and all(isinstance(f, float) for f in v)),
    "input_forget": ("INT", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "linear_before_reset": ("INT", lambda v: isinstance(v, int) and not isinstance(v, bool)),
}
COMMON_ATTRIBUTES = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size")
OP_ATTRIBUTES = {"LSTM": ("input_forget",), "GRU": ("linear_before_reset",), "RNN": ()}


@dataclass(frozen=True)
class Subject:
    """What a rule looks at: the node, the opset, and the node's inputs known at load."""

    node: Node
    opset: int
    constant: Callable[[int], Any]  # input index -> value known at load, else None

    @property
    def op(self) -> str:
        return self.node.op_type

    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)

    @property
    def num_directions(self) -> int:
        return 2 if self.attr("direction", "forward") == "bidirectional" else 1

    @property
    def activation_count(self) -> int:
        names = self.attr("activations")
        return len(names) if names is not None else len(DEFAULT_ACTIVATIONS[self.op]) * self.num_directions

    def hidden_size(self) -> int | None:
        """``hidden_size``, else R's last dimension when R is known at load."""
        H = self.attr("hidden_size")
        if H is None:
            R = self.constant(2)
            if R is not None and np.ndim(R) == 3:
                H = int(np.shape(R)[2])
        return H


@dataclass(frozen=True)
class Rule:
    """One rule of the spec: ``check`` returns what is wrong, or None."""

    id: str  # "<subject>.<what>", shown in the error
    ops: tuple[str, ...]  # the ops it applies to
    spec: str  # the rule, as the spec words it
    check: Callable[[Subject], str | None]
    error: type[LstminferError] = InvalidModelError


def violation(rule: Rule, subject: Subject) -> LstminferError | None:
    """The error for ``subject`` breaking ``rule``, or None."""
    problem = rule.check(subject)
    if problem is None:
        return None
    return rule.error(f"{subject.node.label()}: {problem} (rule {rule.id}: {rule.spec})")


def check(node: Node, opset: int, constant: Callable[[int], Any]) -> None:
    """Raise for the first rule of the node's op that the node breaks."""
    subject = Subject(node, opset, constant)
    for rule in RULES:
        if node.op_type in rule.ops:
            error = violation(rule, subject)
            if error is not None:
                raise error


def rules_of(op: str) -> list[Rule]:
    return [r for r in RULES if op in r.ops]


# ------------------------------------------------------------------ checks --
# Each takes a Subject and returns the problem in words, or None. Later rules may
# assume earlier ones held (types before values, attributes before shapes).


def _inputs_required(s: Subject) -> str | None:
    given = s.node.inputs
    if len(given) < REQUIRED_INPUTS or any(not n for n in given[:REQUIRED_INPUTS]):
        return f"inputs X, W and R are required, got inputs {list(given)}"
    return None


def _inputs_count(s: Subject) -> str | None:
    names = INPUTS[s.op]
    if len(s.node.inputs) > len(names):
        return f"at most {len(names)} inputs ({', '.join(names)}), got {len(s.node.inputs)}"
    return None


def _outputs_count(s: Subject) -> str | None:
    names = OUTPUTS[s.op]
    if not 1 <= len(s.node.outputs) <= len(names):
        return f"expected 1 to {len(names)} outputs ({', '.join(names)}), got {len(s.node.outputs)}"
    return None


def allowed_attributes(op: str, opset: int) -> set[str]:
    allowed = set(COMMON_ATTRIBUTES) | set(OP_ATTRIBUTES[op])
    if opset >= LAYOUT_SINCE:
        allowed.add("layout")
    return allowed


def _attributes_known(s: Subject) -> str | None:
    allowed = allowed_attributes(s.op, s.opset)
    unknown = sorted(set(s.node.attrs) - allowed)
    if unknown:
        return (f"unknown attribute(s) {unknown} for {s.op} at opset {s.opset} "
                f"(allowed: {', '.join(sorted(allowed))})")
    return None


def _onnx_type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    simple = {int: "INT", float: "FLOAT", str: "STRING", bytes: "STRING (not UTF-8)"}.get(type(value))
    if simple:
        return simple
    if isinstance(value, (list, tuple)):
        kinds = sorted({_onnx_type_of(v) for v in value})
        return f"a list of {'/'.join(kinds)}" if kinds else "an empty list"
    return type(value).__name__


def _attribute_types(s: Subject) -> str | None:
    for name, value in s.node.attrs.items():
        onnx_type, fits = ATTRIBUTE_TYPES.get(name, (None, None))
        if fits is not None and not fits(value):
            return f"attribute '{name}' must be {onnx_type}, got {_onnx_type_of(value)} {value!r}"
    return None


def _hidden_size_positive(s: Subject) -> str | None:
    H = s.attr("hidden_size")
    if H is not None and H <= 0:
        return f"attribute 'hidden_size' must be > 0, got {H}"
    return None


def _direction_value(s: Subject) -> str | None:
    direction = s.attr("direction", "forward")
    if direction not in DIRECTIONS:
        return f"attribute 'direction' must be one of {', '.join(DIRECTIONS)}, got '{direction}'"
    return None


def _layout_value(s: Subject) -> str | None:
    layout = s.attr("layout", 0)
    if layout not in (0, 1):
        return f"attribute 'layout' must be 0 or 1, got {layout}"
    return None


def _clip_positive(s: Subject) -> str | None:
    clip = s.attr("clip")
    if clip is not None and not clip > 0:  # NaN too
        return f"attribute 'clip' must be a positive threshold, got {clip}"
    return None


def _flag_value(name: str) -> Callable[[Subject], str | None]:
    def check_flag(s: Subject) -> str | None:
        value = s.attr(name, 0)
        if value not in (0, 1):
            return f"attribute '{name}' must be 0 or 1, got {value}"
        return None
    return check_flag


def _activation_names(s: Subject) -> str | None:
    for name in s.attr("activations") or ():
        if name.lower() not in ACTIVATION_KINDS:
            return (f"attribute 'activations': unknown activation '{name}' "
                    f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    return None


def _activations_count(s: Subject) -> str | None:
    names = s.attr("activations")
    if names is None:
        return None
    per_direction, D = len(DEFAULT_ACTIVATIONS[s.op]), s.num_directions
    if s.op == "RNN" and D == 1 and len(names) == 2:
        return None  # the RNN schema's own default lists two; onnxruntime takes the first
    if len(names) != per_direction * D:
        return (f"attribute 'activations': expected {per_direction * D} activations for direction "
                f"'{s.attr('direction', 'forward')}' ({per_direction} per direction), got {len(names)}: {list(names)}")
    return None


def _scales_count(name: str) -> Callable[[Subject], str | None]:
    def check_scales(s: Subject) -> str | None:
        values = s.attr(name)
        if values is not None and len(values) > s.activation_count:
            return (f"attribute '{name}' has {len(values)} values, more than the node's "
                    f"{s.activation_count} activation functions")
        return None
    return check_scales


def _scales_finite(s: Subject) -> str | None:
    for name in ("activation_alpha", "activation_beta"):
        values = s.attr(name) or ()
        if not all(np.isfinite(v) for v in values):
            return f"attribute '{name}' holds a non-finite value: {list(values)}"
    return None


_FLOAT_INPUTS = (1, 2, 3, 5, 6, 7)  # W R B initial_h initial_c P: type T


def _input_dtypes_supported(s: Subject) -> str | None:
    for index in _FLOAT_INPUTS:
        value = s.constant(index) if index < len(s.node.inputs) and s.node.inputs[index] else None
        if value is not None and np.asarray(value).dtype not in SUPPORTED_DTYPES:
            return (f"input '{INPUTS[s.op][index]}' ('{s.node.inputs[index]}') has element type "
                    f"{np.asarray(value).dtype}; supported: float32, float64")
    return None


def _input_dtypes_agree(s: Subject) -> str | None:
    seen: dict[str, np.dtype] = {}
    for index in _FLOAT_INPUTS:
        value = s.constant(index) if index < len(s.node.inputs) and s.node.inputs[index] else None
        if value is not None:
            seen[INPUTS[s.op][index]] = np.asarray(value).dtype
    if len(set(seen.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in seen.items())
        return f"inputs of type T must share one element type, got {shown}"
    return None


def _expected_shapes(s: Subject) -> dict[int, tuple[tuple, str]]:
    """Input index -> (shape with None for "any", meaning); sizes that need hidden_size are None
    when it is unknown (no attribute, R not known at load: then only ranks and directions count)."""
    G, D, H = GATES[s.op], s.num_directions, s.hidden_size()

    def times(k: int) -> int | None:
        return None if H is None else k * H

    state = ((None, D, H), "[batch_size, num_directions, hidden_size]") if s.attr("layout", 0) == 1 \
        else ((D, None, H), "[num_directions, batch_size, hidden_size]")
    shapes = {
        1: ((D, times(G), None), f"[num_directions, {G}*hidden_size, input_size]"),
        2: ((D, times(G), H), f"[num_directions, {G}*hidden_size, hidden_size]"),
        3: ((D, times(2 * G)), f"[num_directions, {2 * G}*hidden_size]"),
        4: ((None,), "[batch_size]"),
        5: state,
    }
    if s.op == "LSTM":
        shapes[6] = state
        shapes[7] = ((D, times(3)), "[num_directions, 3*hidden_size]")
    return shapes


def _input_shape(index: int) -> Callable[[Subject], str | None]:
    def check_shape(s: Subject) -> str | None:
        if index >= len(s.node.inputs) or not s.node.inputs[index]:
            return None
        value = s.constant(index)
        if value is None:
            return None
        shape, meaning = _expected_shapes(s)[index]
        got = np.shape(value)
        if len(got) == len(shape) and all(e is None or e == g for e, g in zip(shape, got)):
            return None
        batch_axis = 0 if s.attr("layout", 0) == 1 else 1
        free = {1: (2, "input_size"), 4: (0, "batch_size"), 5: (batch_axis, "batch_size"),
                6: (batch_axis, "batch_size")}.get(index)  # the axis any size fits, and its name
        shown = [e if e is not None else (free[1] if free and free[0] == i else "?") for i, e in enumerate(shape)]
        H = s.hidden_size()
        return (f"input '{INPUTS[s.op][index]}' ('{s.node.inputs[index]}') has shape {list(got)}, "
                f"expected {shown} = {meaning} for hidden_size={'unknown' if H is None else H}, "
                f"direction '{s.attr('direction', 'forward')}'")
    return check_shape


def _sequence_lens_type(s: Subject) -> str | None:
    value = s.constant(4) if len(s.node.inputs) > 4 and s.node.inputs[4] else None
    if value is not None and np.asarray(value).dtype != np.int32:
        return f"input 'sequence_lens' ('{s.node.inputs[4]}') must be int32, got {np.asarray(value).dtype}"
    return None


_ALL = ("LSTM", "GRU", "RNN")
_LSTM_STATE = ("LSTM",)

# The tables: order matters (a check may rely on the rules before it).
RULES: tuple[Rule, ...] = (
    Rule("inputs.required", _ALL, "X, W and R are required inputs", _inputs_required),
    Rule("inputs.count", _ALL, "LSTM takes at most 8 inputs, GRU and RNN 6", _inputs_count),
    Rule("outputs.count", _ALL, "LSTM has 1 to 3 outputs (Y, Y_h, Y_c), GRU and RNN 1 to 2", _outputs_count),
    Rule("attributes.known", _ALL, "only the op's attributes; 'layout' from opset 14", _attributes_known),
    Rule("attributes.type", _ALL, "each attribute has the type the op's schema gives it", _attribute_types),
    Rule("hidden_size.positive", _ALL, "hidden_size is the number of neurons, > 0", _hidden_size_positive),
    Rule("direction.value", _ALL, "direction is forward, reverse or bidirectional", _direction_value),
    Rule("layout.value", _ALL, "layout is 0 ([seq, batch, ...]) or 1 ([batch, seq, ...])", _layout_value),
    Rule("clip.positive", _ALL, "clip is a positive threshold", _clip_positive),
    Rule("input_forget.value", ("LSTM",), "input_forget is 0 or 1", _flag_value("input_forget")),
    Rule("linear_before_reset.value", ("GRU",), "linear_before_reset is 0 or 1", _flag_value("linear_before_reset")),
    Rule("activations.names", _ALL, "activations are among the functions the spec lists", _activation_names,
         UnsupportedModelError),
    Rule("activations.count", _ALL, "one activation per gate function (LSTM f,g,h; GRU f,g; RNN f) per direction",
         _activations_count),
    Rule("activation_alpha.count", _ALL, "activation_alpha values are consumed in the order of the activations",
         _scales_count("activation_alpha")),
    Rule("activation_beta.count", _ALL, "activation_beta values are consumed in the order of the activations",
         _scales_count("activation_beta")),
    Rule("activation_scales.finite", _ALL, "activation_alpha/beta are finite scales", _scales_finite),
    Rule("inputs.dtype", _ALL, "T is a floating-point type (lstminfer runs float32 and float64)",
         _input_dtypes_supported, UnsupportedModelError),
    Rule("inputs.same_dtype", _ALL, "W, R, B, initial_h, initial_c and P share the type T", _input_dtypes_agree),
    Rule("sequence_lens.dtype", _ALL, "sequence_lens is int32", _sequence_lens_type),
    Rule("W.shape", _ALL, "W is [num_directions, gates*hidden_size, input_size]", _input_shape(1)),
    Rule("R.shape", _ALL, "R is [num_directions, gates*hidden_size, hidden_size]", _input_shape(2)),
    Rule("B.shape", _ALL, "B is [num_directions, 2*gates*hidden_size]", _input_shape(3)),
    Rule("sequence_lens.shape", _ALL, "sequence_lens is [batch_size]", _input_shape(4)),
    Rule("initial_h.shape", _ALL, "initial_h is [num_directions, batch_size, hidden_size] "
         "([batch_size, num_directions, hidden_size] with layout 1)", _input_shape(5)),
    Rule("initial_c.shape", _LSTM_STATE, "initial_c is shaped as initial_h", _input_shape(6)),
    Rule("P.shape", _LSTM_STATE, "P is [num_directions, 3*hidden_size]", _input_shape(7)),
)
