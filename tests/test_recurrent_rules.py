"""Strict loading: every rule of every recurrent op's table (lstminfer/ops/recurrent_rules.py) is broken
by a model here, and the load refuses it naming the node and the rule. A rule added to the table
without a breaking model below fails ``test_every_rule_is_broken_by_a_model``.

Also the model-level limits (IR version, opset) and the initializer size checks.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstminfer
from lstminfer.errors import InvalidModelError, UnsupportedModelError
from lstminfer.ops import recurrent_rules
from lstminfer.ops.registry import MAX_OPSET
from lstminfer.reference import DEFAULT_ACTIVATIONS, GATES

OPS = ("LSTM", "GRU", "RNN")
H, I, BATCH, T = 3, 2, 1, 4
NODE = "rnn_under_test"


def weights(op: str, dtype=np.float32, D: int = 1) -> dict[str, np.ndarray]:
    G = GATES[op]
    rng = np.random.default_rng(0)
    return {
        "W": rng.standard_normal((D, G * H, I)).astype(dtype),
        "R": rng.standard_normal((D, G * H, H)).astype(dtype),
        "B": rng.standard_normal((D, 2 * G * H)).astype(dtype),
    }


def build(op: str, *, attrs=None, inits=None, inputs=None, outputs=None, opset: int = 14) -> bytes:
    """A one-node model: X [T, 1, I] as graph input, W/R/B (and whatever ``inits`` adds) as initializers."""
    values = weights(op)
    values.update(inits or {})
    names = list(inputs) if inputs is not None else ["X", "W", "R", "B"]
    outs = list(outputs) if outputs is not None else ["Y", "Y_h"]
    node_attrs = {"hidden_size": H}
    node_attrs.update(attrs or {})
    node_attrs = {k: v for k, v in node_attrs.items() if v is not None}
    node = helper.make_node(op, names, outs, name=NODE, **node_attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", BATCH, I])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs if o],
        [numpy_helper.from_array(v, k) for k, v in values.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def with_inputs(op: str, **named) -> list[str]:
    """The node's input list with ``named`` optional inputs (given as initializers) filled in."""
    order = recurrent_rules.INPUTS[op]
    names = ["X", "W", "R", "B"] + [""] * (len(order) - 4)
    for key in named:
        names[order.index(key)] = key
    while names and not names[-1]:
        names.pop()
    return names


def per_direction(op: str) -> int:
    return len(DEFAULT_ACTIVATIONS[op])


# rule id -> op -> the model breaking it (None: the rule does not apply to that op).
def _breakers():
    B = {}
    B["inputs.required"] = lambda op: build(op, inputs=["X", "", "R"])
    B["inputs.count"] = lambda op: build(op, inputs=["X", "W", "R", "B"] + [""] * (len(recurrent_rules.INPUTS[op]) - 4) + ["B"])
    B["outputs.count"] = lambda op: build(op, outputs=[f"o{i}" for i in range(len(recurrent_rules.OUTPUTS[op]) + 1)])
    B["attributes.known"] = lambda op: build(op, attrs={"layout": 0}, opset=13)
    B["attributes.type"] = lambda op: build(op, attrs={"clip": 3})  # INT where FLOAT is due
    B["hidden_size.positive"] = lambda op: build(op, attrs={"hidden_size": -3})
    B["direction.value"] = lambda op: build(op, attrs={"direction": "backward"})
    B["layout.value"] = lambda op: build(op, attrs={"layout": 2})
    B["clip.positive"] = lambda op: build(op, attrs={"clip": 0.0})
    B["input_forget.value"] = lambda op: build(op, attrs={"input_forget": 2})
    B["linear_before_reset.value"] = lambda op: build(op, attrs={"linear_before_reset": 2})
    B["activations.names"] = lambda op: build(op, attrs={"activations": ["Swish"] * per_direction(op)})
    B["activations.count"] = lambda op: build(op, attrs={"activations": ["Tanh"] * 3 if op == "RNN"
                                                          else list(DEFAULT_ACTIVATIONS[op]) * 2})
    B["activation_alpha.count"] = lambda op: build(op, attrs={"activation_alpha": [1.0] * (per_direction(op) + 1)})
    B["activation_beta.count"] = lambda op: build(op, attrs={"activation_beta": [1.0] * (per_direction(op) + 1)})
    B["activation_scales.finite"] = lambda op: build(op, attrs={"activation_alpha": [float("nan")]})
    B["inputs.dtype"] = lambda op: build(op, inits=weights(op, np.float16))
    B["inputs.same_dtype"] = lambda op: build(op, inits={"B": weights(op, np.float64)["B"]})
    B["sequence_lens.dtype"] = lambda op: build(op, inits={"sequence_lens": np.full(BATCH, T, np.int64)},
                                                 inputs=with_inputs(op, sequence_lens=1))
    B["W.shape"] = lambda op: build(op, inits={"W": np.zeros((1, GATES[op] * H + 1, I), np.float32)})
    B["R.shape"] = lambda op: build(op, inits={"R": np.zeros((1, GATES[op] * H, H + 1), np.float32)})
    B["R.rank"] = lambda op: build(op, attrs={"hidden_size": None}, inits={"R": np.zeros((1, GATES[op] * H), np.float32)})
    B["B.shape"] = lambda op: build(op, inits={"B": np.zeros((1, GATES[op] * H), np.float32)})
    B["sequence_lens.shape"] = lambda op: build(op, inits={"sequence_lens": np.full((BATCH, 1), T, np.int32)},
                                                 inputs=with_inputs(op, sequence_lens=1))
    B["initial_h.shape"] = lambda op: build(op, inits={"initial_h": np.zeros((1, BATCH, H + 1), np.float32)},
                                             inputs=with_inputs(op, initial_h=1))
    B["initial_c.shape"] = lambda op: build(op, inits={"initial_c": np.zeros((2, BATCH, H), np.float32)},
                                             inputs=with_inputs(op, initial_c=1))
    B["P.shape"] = lambda op: build(op, inits={"P": np.zeros((1, 2 * H), np.float32)}, inputs=with_inputs(op, P=1))
    return B


BREAKERS = _breakers()
CASES = [(op, rule) for op in OPS for rule in recurrent_rules.rules_of(op)]


@pytest.mark.parametrize("op", OPS)
def test_every_rule_is_broken_by_a_model(op):
    missing = [r.id for r in recurrent_rules.rules_of(op) if r.id not in BREAKERS]
    assert not missing, f"rules of {op} without a model that breaks them: {missing}"


@pytest.mark.parametrize("op", OPS)
def test_the_unbroken_model_loads_and_runs(op):
    x = np.random.default_rng(1).standard_normal((T, BATCH, I)).astype(np.float32)
    y, y_h = lstminfer.load(build(op)).run(None, {"X": x})
    assert y.shape == (T, 1, BATCH, H) and y_h.shape == (1, BATCH, H)


@pytest.mark.parametrize("op,rule", CASES, ids=[f"{op}-{rule.id}" for op, rule in CASES])
def test_a_model_breaking_the_rule_is_refused_naming_node_and_rule(op, rule):
    with pytest.raises(rule.error) as info:
        lstminfer.load(BREAKERS[rule.id](op))
    message = str(info.value)
    assert f"node '{NODE}' ({op})" in message and f"rule {rule.id}:" in message, message


@pytest.mark.parametrize("op", OPS)
def test_without_hidden_size_a_constant_r_of_the_wrong_rank_is_refused(op):
    """(a fuzz finding: the shape rules were skipped when hidden_size was unknown)"""
    with pytest.raises(InvalidModelError, match=r"hidden_size=unknown.*rule R.shape:"):
        lstminfer.load(BREAKERS["R.rank"](op))


@pytest.mark.parametrize("op", OPS)
def test_the_onnx_checker_rejects_what_the_attribute_rules_reject(op):
    """Our table agrees with the checker where the checker looks (attribute names and types)."""
    for rule_id in ("attributes.known", "attributes.type"):
        with pytest.raises(onnx.checker.ValidationError):
            onnx.checker.check_model(onnx.load_from_string(BREAKERS[rule_id](op)))


# ----------------------------------------------------------------- model level --


def _model_with(**fields) -> bytes:
    model = onnx.load_from_string(build("LSTM"))
    for key, value in fields.items():
        if key == "opset":
            model.opset_import[0].version = value
        else:
            setattr(model, key, value)
    return model.SerializeToString()


def test_an_ir_version_newer_than_the_installed_onnx_is_refused():
    with pytest.raises(UnsupportedModelError, match=rf"ir_version {onnx.IR_VERSION + 1} is newer"):
        lstminfer.load(_model_with(ir_version=onnx.IR_VERSION + 1))


@pytest.mark.parametrize("opset", [MAX_OPSET + 1, max(MAX_OPSET + 1, onnx.defs.onnx_opset_version() + 1)])
def test_an_opset_newer_than_lstminfer_runs_is_refused(opset):
    with pytest.raises(UnsupportedModelError, match=rf"opset {opset} is newer"):
        lstminfer.load(_model_with(opset=opset))


# ----------------------------------------------------------- sizes before memory --


def _with_initializer(tensor: TensorProto) -> bytes:
    model = onnx.load_from_string(build("LSTM"))
    model.graph.initializer.append(tensor)
    return model.SerializeToString()


def test_a_header_promising_10_12_elements_is_refused_naming_the_initializer():
    t = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[10**6, 10**6], raw_data=b"\0" * 16)
    with pytest.raises(InvalidModelError, match=r"initializer 'huge'.*raw_data holds 16 bytes, expected 4000000000000"):
        lstminfer.load(_with_initializer(t))


def test_typed_data_shorter_than_dims_is_refused():
    t = TensorProto(name="short", data_type=TensorProto.FLOAT, dims=[10**12], float_data=[1.0, 2.0])
    with pytest.raises(InvalidModelError, match=r"initializer 'short'.*float_data holds 2 values, expected 10+"):
        lstminfer.load(_with_initializer(t))


def test_dims_whose_product_overflows_int64_are_refused():
    t = TensorProto(name="wrap", data_type=TensorProto.BFLOAT16, dims=[2**32, 2**32], raw_data=b"")
    with pytest.raises(InvalidModelError, match=r"initializer 'wrap'.*raw_data holds 0 bytes"):
        lstminfer.load(_with_initializer(t))


def test_a_sparse_initializer_with_a_huge_dense_form_is_refused():
    model = onnx.load_from_string(build("LSTM"))
    values = numpy_helper.from_array(np.ones(1, np.float32), "sparse")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "sparse_idx")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [10**6, 10**6]))
    with pytest.raises(InvalidModelError, match=r"sparse initializer 'sparse'.*dense tensor of 1000000000000"):
        lstminfer.load(model.SerializeToString())


def test_a_sparse_index_out_of_range_is_refused():
    model = onnx.load_from_string(build("LSTM"))
    values = numpy_helper.from_array(np.ones(2, np.float32), "sparse")
    indices = numpy_helper.from_array(np.array([1, 99], np.int64), "sparse_idx")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    with pytest.raises(InvalidModelError, match=r"sparse initializer 'sparse'.*out of range"):
        lstminfer.load(model.SerializeToString())


def test_external_data_in_a_model_given_as_bytes_is_refused_not_read_from_the_working_directory():
    t = TensorProto(name="outside", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="/etc/passwd")
    with pytest.raises(InvalidModelError, match=r"initializer 'outside'.*external file \('/etc/passwd'\)"):
        lstminfer.load(_with_initializer(t))


def test_external_data_outside_the_model_directory_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    (tmp_path / "models").mkdir()
    t = TensorProto(name="outside", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../secret.bin")
    path = tmp_path / "models" / "m.onnx"
    path.write_bytes(_with_initializer(t))
    with pytest.raises(InvalidModelError, match=r"external data"):
        lstminfer.load(path)
