"""Glue ops (elementwise, tensor, nn, reduce) against onnxruntime, where the ONNX cases are thin.

Each model is one node built with onnx.helper, fed through graph inputs (so
the kernel runs at run time, not folded at load), and run by lstminfer and
onnxruntime: outputs must agree in dtype, shape and value. Focus: opset-version
differences (Softmax 11/13, Squeeze 11/13, Slice 9/10, Split 11/13/18, Clip
6/11, Reduce* attribute vs input axes...), integer semantics, random inputs
(hypothesis), and bad attributes / inputs raising errors that name the node.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper as oh

import lstminfer
from lstminfer.errors import ExecutionError, InvalidModelError, UnsupportedModelError

# ---------------------------------------------------------------- harness


def build(op, inputs, attrs=None, opset=17, n_out=1, consts=None):
    """One-node model. ``inputs``: arrays fed at run time (None = omitted input);
    ``consts``: {position: array} stored as initializers instead."""
    consts = consts or {}
    total = max([len(inputs)] + [p + 1 for p in consts])
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i in range(total):
        if i in consts:
            name = f"c{i}"
            inits.append(onnx.numpy_helper.from_array(np.asarray(consts[i]), name))
        elif i < len(inputs) and inputs[i] is not None:
            name = f"x{i}"
            value = np.asarray(inputs[i])
            elem = oh.np_dtype_to_tensor_dtype(value.dtype)
            graph_inputs.append(oh.make_tensor_value_info(name, elem, value.shape))
            feeds[name] = value
        else:
            name = ""
        names.append(name)
    outs = [f"y{i}" for i in range(n_out)]
    node = oh.make_node(op, names, outs, name="the_node", **(attrs or {}))
    graph = oh.make_graph([node], "g", graph_inputs, [onnx.ValueInfoProto(name=o) for o in outs], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    return model, feeds


def run_ours(model, feeds):
    return lstminfer.load(model).run(None, feeds)


def run_ort(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(op, inputs, attrs=None, opset=17, n_out=1, consts=None, rtol=1e-5, atol=1e-6):
    """Run both engines; outputs must agree in dtype, shape and value."""
    model, feeds = build(op, inputs, attrs, opset, n_out, consts)
    expected = run_ort(model, feeds)
    got = run_ours(model, feeds)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        where = f"{op}-{opset} output {i}"
        assert isinstance(g, np.ndarray), f"{where}: got {type(g).__name__}"
        assert g.dtype == e.dtype, f"{where}: dtype {g.dtype} != onnxruntime {e.dtype}"
        assert g.shape == e.shape, f"{where}: shape {g.shape} != onnxruntime {e.shape}"
        if e.dtype.kind in "fc":
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=where)
        else:
            np.testing.assert_array_equal(g, e, err_msg=where)
    return got


def load_error(op, inputs, attrs=None, opset=17, n_out=1, consts=None):
    model, _ = build(op, inputs, attrs, opset, n_out, consts)
    with pytest.raises((UnsupportedModelError, InvalidModelError)) as info:
        lstminfer.load(model)
    return info


def run_error(op, inputs, attrs=None, opset=17, n_out=1, consts=None):
    model, feeds = build(op, inputs, attrs, opset, n_out, consts)
    loaded = lstminfer.load(model)
    with pytest.raises(ExecutionError) as info:
        loaded.run(None, feeds)
    assert "the_node" in str(info.value)
    return info


def f32(*shape, seed=0, low=-3.0, high=3.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def i64(values):
    return np.array(values, dtype=np.int64)


X3 = f32(2, 3, 4)

# ---------------------------------------------------------------- softmax family: opset 11 vs 13


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, -3])
def test_softmax_family_axis_semantics(op, opset, axis):
    attrs = {} if axis is None else {"axis": axis}
    check(op, [X3], attrs, opset=opset)


def test_softmax_opsets_really_differ():
    """Opset 11 normalises over the flattened dims [1:], opset 13 over the last axis only."""
    m11, feeds = build("Softmax", [X3], opset=11)
    m13, _ = build("Softmax", [X3], opset=13)
    y11, y13 = run_ours(m11, feeds)[0], run_ours(m13, feeds)[0]
    np.testing.assert_allclose(y11.sum(axis=(1, 2)), 1, rtol=1e-5)
    np.testing.assert_allclose(y13.sum(axis=-1), 1, rtol=1e-5)


def test_softmax_float16_and_large_values():
    check("Softmax", [np.array([[1000.0, 1001.0, -1000.0]], np.float32)], opset=13)
    check("LogSoftmax", [np.array([[1000.0, 1001.0, -1000.0]], np.float32)], opset=13)
    check("Softmax", [f32(3, 5).astype(np.float16)], opset=13, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- squeeze / unsqueeze / reshape


X_SQ = f32(1, 3, 1, 2)


@pytest.mark.parametrize("axes", [None, [0], [2, 0], [-2]])
def test_squeeze_attr_opset11_vs_input_opset13(axes):
    check("Squeeze", [X_SQ], {} if axes is None else {"axes": axes}, opset=11)
    check("Squeeze", [X_SQ] if axes is None else [X_SQ, i64(axes)], opset=13)


@pytest.mark.parametrize("axes", [[0], [1, 3], [-1], [0, -1]])
def test_unsqueeze_attr_opset11_vs_input_opset13(axes):
    x = f32(3, 2)
    check("Unsqueeze", [x], {"axes": axes}, opset=11)
    check("Unsqueeze", [x, i64(axes)], opset=13)
    check("Unsqueeze", [x], opset=13, consts={1: i64(axes)})


@pytest.mark.parametrize("shape, allowzero", [
    ([4, -1], 0), ([0, -1], 0), ([0, 0, 4], 0), ([-1], 0), ([2, 3, 2, 2], 0), ([24], 1),
])
def test_reshape(shape, allowzero):
    check("Reshape", [X3, i64(shape)], {"allowzero": allowzero}, opset=14)


def test_reshape_allowzero_keeps_zero_dims():
    empty = np.zeros((0, 3), np.float32)
    check("Reshape", [empty, i64([3, 0])], {"allowzero": 1}, opset=14)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten(axis):
    check("Flatten", [X3], {"axis": axis}, opset=13)


@pytest.mark.parametrize("perm", [None, [0, 2, 1], [2, 0, 1]])
def test_transpose(perm):
    check("Transpose", [X3], {} if perm is None else {"perm": perm})


# ---------------------------------------------------------------- slice: opset 9 attrs vs 10+ inputs


SLICE_CASES = [
    # starts, ends, axes, steps
    ([0, 1], [2, 3], [0, 1], None),
    ([-100], [100], [2], None),          # clamping
    ([1], [-1], [-1], None),             # negative end and axis
    ([3], [-100], [2], [-1]),            # negative step down to the start
    ([-1, 2], [-5, 0], [1, 2], [-1, -2]),
    ([0], [2 ** 63 - 1], [1], [2]),      # INT64_MAX end
    ([5], [1], [2], [1]),                # empty result
]


@pytest.mark.parametrize("starts, ends, axes, steps", SLICE_CASES)
def test_slice_inputs(starts, ends, axes, steps):
    inputs = [X3, i64(starts), i64(ends), i64(axes)] + ([] if steps is None else [i64(steps)])
    check("Slice", inputs, opset=13)


BOUND = st.one_of(st.integers(-6, 6), st.sampled_from([-(2 ** 63), 2 ** 63 - 1]))


@settings(max_examples=40, deadline=None)
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5), data=st.data())
def test_slice_random_against_onnxruntime(shape, data):
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank,
                              unique_by=lambda a: a % rank))
    n = len(axes)
    starts = data.draw(st.lists(BOUND, min_size=n, max_size=n))
    ends = data.draw(st.lists(BOUND, min_size=n, max_size=n))
    steps = data.draw(st.lists(st.integers(-3, 3).filter(bool), min_size=n, max_size=n))
    # onnxruntime reads end = INT64_MAX with a negative step as "to the beginning"; the
    # spec clamps it to dim-1 (see test_slice_int64_max_end_with_negative_step_follows_spec).
    ends = [2 ** 62 if e == 2 ** 63 - 1 and st_ < 0 else e for e, st_ in zip(ends, steps)]
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    check("Slice", [x, i64(starts), i64(ends), i64(axes), i64(steps)], opset=13)


def test_slice_int64_max_end_with_negative_step_follows_spec():
    """Spec: ends clamp to [-1, dim-1] for negative steps, so INT64_MAX -> dim-1 and
    x[3:INT64_MAX:-1] is x[3:4:-1] = empty (the ONNX reference and shape inference agree;
    onnxruntime 1.32 instead returns x[3::-1])."""
    x = np.arange(5, dtype=np.float32)
    model, feeds = build("Slice", [x, i64([3]), i64([2 ** 63 - 1]), i64([0]), i64([-1])], opset=13)
    assert run_ours(model, feeds)[0].shape == (0,)
    model, feeds = build("Slice", [x, i64([3]), i64([-(2 ** 63)]), i64([0]), i64([-1])], opset=13)
    np.testing.assert_array_equal(run_ours(model, feeds)[0], [3, 2, 1, 0])


@pytest.mark.parametrize("starts, ends, axes", [c[:3] for c in SLICE_CASES if c[3] is None])
def test_slice_attributes_opset9(starts, ends, axes):
    check("Slice", [X3], {"starts": starts, "ends": ends, "axes": axes}, opset=9)


def test_slice_default_axes_opset9_and_10():
    check("Slice", [X3], {"starts": [1, 0], "ends": [2, 2]}, opset=9)
    check("Slice", [X3, i64([1, 0]), i64([2, 2])], opset=10)


# ---------------------------------------------------------------- split: 11 attr, 13 input, 18 num_outputs


def test_split_versions():
    x = f32(6, 4)
    check("Split", [x], {"axis": 0, "split": [1, 5]}, opset=11, n_out=2)
    check("Split", [x], {"axis": 1}, opset=11, n_out=2)
    check("Split", [x, i64([2, 0, 4])], {"axis": 0}, opset=13, n_out=3)
    check("Split", [x], {"axis": 0}, opset=13, n_out=3)
    check("Split", [x], {"axis": 0, "num_outputs": 4}, opset=18, n_out=4)   # 2,2,2,0
    check("Split", [f32(7, 2)], {"axis": 0, "num_outputs": 3}, opset=18, n_out=3)  # 3,3,1


def test_split_uneven_without_sizes_fails_before_opset18():
    run_error("Split", [f32(5)], {"axis": 0}, opset=13, n_out=2)


# ---------------------------------------------------------------- concat / gather / scatter


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    a = f32(2, 3, seed=1)
    b = f32(2, 3, seed=2)
    check("Concat", [a, b, a], {"axis": axis}, opset=13)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather(axis):
    check("Gather", [X3, i64([[0, -1], [1, 0]])], {"axis": axis}, opset=13)
    check("Gather", [X3, np.array(-1, np.int32)], {"axis": axis}, opset=13)


def test_gather_elements_and_scatter_elements():
    data = f32(3, 4)
    idx = i64([[0, 3, -1], [2, 1, 0]])
    check("GatherElements", [data, idx], {"axis": 1}, opset=13)
    check("GatherElements", [data, i64([[2, 0, 1, 1]])], {"axis": 0}, opset=13)
    upd = f32(2, 3, seed=5)
    for reduction in ["none", "add", "mul", "max", "min"]:
        check("ScatterElements", [data, i64([[0, 3, 1], [2, 1, 0]]), upd],
              {"axis": 1, "reduction": reduction}, opset=18)


def test_gather_nd_batch_dims_and_scatter_nd():
    data = f32(2, 3, 4)
    check("GatherND", [data, i64([[1, 2], [0, -1]])], opset=13)
    check("GatherND", [data, i64([[[2], [0]], [[1], [1]]])], {"batch_dims": 1}, opset=13)
    check("GatherND", [data, i64([[1, 3], [0, 0]])], {"batch_dims": 1}, opset=13)
    upd = f32(2, 4, seed=3)
    for reduction in ["none", "add", "mul", "max", "min"]:
        check("ScatterND", [data, i64([[1, 2], [0, 0]]), upd], {"reduction": reduction}, opset=18)
    check("ScatterND", [data, i64([[0, 1], [0, 1]]), upd], {"reduction": "add"}, opset=16)


# ---------------------------------------------------------------- pad: opset 2 attrs vs 11 / 18 inputs


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", [[1, 2, 0, 2], [0, -1, 1, 1], [1, 0, -1, 1], [-1, 1, 0, -2]])
def test_pad_versions(mode, pads):
    x = f32(3, 4)
    check("Pad", [x], {"mode": mode, "pads": pads, "value": 1.5}, opset=7)
    check("Pad", [x, i64(pads), np.array(1.5, np.float32)], {"mode": mode}, opset=11)
    check("Pad", [x, i64(pads)], {"mode": mode}, opset=13)


def test_pad_axes_opset18_and_wrap_opset19():
    x = f32(2, 3, 4)
    # onnxruntime reads 'axes' only from an initializer
    check("Pad", [x, i64([1, 2]), np.array(7, np.float32)], opset=18, consts={3: i64([-1])})
    check("Pad", [x, i64([1, 0, 2, 1])], {"mode": "edge"}, opset=18, consts={3: i64([0, 2])})
    check("Pad", [x, i64([0, 1, 2, 0, 2, 1])], {"mode": "wrap"}, opset=19)
    check("Pad", [np.arange(6, dtype=np.int64).reshape(2, 3), i64([1, 1, 1, 1]),
                  np.array(-4, np.int64)], opset=13)


def test_pad_reflect_beyond_the_cropped_edge_fails():
    # Negative pads crop first; onnxruntime then rejects a reflection longer than length-1.
    model, feeds = build("Pad", [f32(3, 4), i64([2, 0, -1, 3])], {"mode": "reflect"}, opset=13)
    with pytest.raises(Exception, match="exceeds"):
        run_ort(model, feeds)
    _names(run_error("Pad", [f32(3, 4), i64([2, 0, -1, 3])], {"mode": "reflect"}, opset=13),
           "reflect pads (2, 0) exceed 1")


# ---------------------------------------------------------------- clip: 6 attrs vs 11 / 13 inputs


def test_clip_versions():
    x = f32(4, 5)
    check("Clip", [x], {"min": -1.0, "max": 0.5}, opset=10)
    check("Clip", [x], {"max": 0.5}, opset=7)
    check("Clip", [x, np.array(-1, np.float32), np.array(0.5, np.float32)], opset=11)
    check("Clip", [x, None, np.array(0.5, np.float32)], opset=11)
    check("Clip", [x, np.array(1, np.float32), np.array(-1, np.float32)], opset=13)  # min > max
    check("Clip", [x], opset=13)
    check("Clip", [np.arange(-5, 5, dtype=np.int32), np.array(-2, np.int32), np.array(3, np.int32)],
          opset=13)


# ---------------------------------------------------------------- reductions: axes attribute vs input


REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("axes, keepdims", [(None, 1), ([1], 0), ([0, -1], 1), ([2, 0], 0)])
def test_reduce_axes_attribute_and_input(op, axes, keepdims):
    x = f32(2, 3, 4, low=0.1, high=2.0)
    attr_axes = {} if axes is None else {"axes": axes}
    input_opset = 13 if op == "ReduceSum" else 18
    check(op, [x], {**attr_axes, "keepdims": keepdims}, opset=input_opset - 1 if op != "ReduceSum" else 11)
    inputs = [x] if axes is None else [x, i64(axes)]
    check(op, inputs, {"keepdims": keepdims}, opset=input_opset)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_empty_axes_noop_applies_elementwise_part(op):
    x = f32(2, 3, low=0.1, high=2.0)
    opset = 13 if op == "ReduceSum" else 18
    check(op, [x, i64([])], {"noop_with_empty_axes": 1}, opset=opset)
    check(op, [x, i64([])], {"noop_with_empty_axes": 0}, opset=opset)


def test_reduce_integer_mean_truncates_and_empty_sets():
    check("ReduceMean", [np.array([[1, 2], [-3, -6]], np.int32)], {"axes": [1]}, opset=13)
    empty = np.zeros((2, 0, 3), np.float32)
    for op in ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceLogSumExp"]:
        check(op, [empty, i64([1])], opset=18 if op != "ReduceSum" else 13)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis, keepdims, last", [(0, 1, 0), (-1, 0, 1), (1, 1, 1)])
def test_arg_reductions(op, axis, keepdims, last):
    x = np.array([[[1, 3, 3], [2, 2, 0]], [[3, 3, 1], [0, 0, 0]]], np.float32)
    check(op, [x], {"axis": axis, "keepdims": keepdims, "select_last_index": last}, opset=12)
    check(op, [x], {"axis": axis, "keepdims": keepdims}, opset=11)


# ---------------------------------------------------------------- integer arithmetic semantics


def test_integer_div_mod_pow_match_onnxruntime():
    a = np.array([-7, 7, -7, 7, 0, -1], np.int32)
    b = np.array([2, -2, -2, 2, 3, 5], np.int32)
    check("Div", [a, b], opset=14)
    check("Mod", [a, b], opset=13)
    check("Mod", [a, b], {"fmod": 1}, opset=13)
    check("Mod", [a.astype(np.float32) + 0.5, b.astype(np.float32)], {"fmod": 1}, opset=13)
    check("Pow", [i64([2, 3, -2, 5]), i64([3, 0, 3, 2])], opset=15)
    check("Pow", [i64([2, 3, -2]), np.array([0.5, 2.5, 3.0], np.float32)], opset=15)
    check("Pow", [f32(4, low=0.1), np.array([2, 3, -1, 0], np.int64)], opset=15)
    check("Div", [np.array([7, 200], np.uint8), np.array([2, 3], np.uint8)], opset=14)


INT_BINARY = [("Add", {}), ("Sub", {}), ("Mul", {}), ("Div", {}), ("Mod", {}), ("Mod", {"fmod": 1}),
              ("Max", {}), ("Min", {}), ("Pow", {})]


@settings(max_examples=30, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
       op=st.sampled_from(INT_BINARY), dtype=st.sampled_from([np.int32, np.int64, np.int8, np.uint8]),
       seed=st.integers(0, 2 ** 16))
def test_integer_binary_random(shapes, op, dtype, seed):
    name, attrs = op
    if name == "Pow" and dtype not in (np.int32, np.int64):
        dtype = np.int64  # onnxruntime's integer Pow kernels
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    a = rng.integers(max(info.min, -100), min(info.max, 100), shapes.input_shapes[0], dtype=dtype)
    b = rng.integers(max(info.min, -9), 10, shapes.input_shapes[1], dtype=dtype)
    if name in ("Div", "Mod"):
        b = np.where(b == 0, dtype(3), b).astype(dtype)
    if name == "Pow":
        b = np.abs(b) % 4
    check(name, [a, b], attrs, opset=15)


def test_bitshift_unsigned():
    x = np.array([16, 255, 1], np.uint8)
    y = np.array([1, 4, 7], np.uint8)
    check("BitShift", [x, y], {"direction": "LEFT"}, opset=11)
    check("BitShift", [x, y], {"direction": "RIGHT"}, opset=11)


# ---------------------------------------------------------------- elementwise on random broadcast shapes


BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less",
          "Greater", "LessOrEqual", "GreaterOrEqual", "PRelu", "Where"]


@settings(max_examples=40, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
       op=st.sampled_from(BINARY), seed=st.integers(0, 2 ** 16))
def test_binary_broadcasting_random(shapes, op, seed):
    a_shape, b_shape = shapes.input_shapes
    if op == "PRelu":  # unidirectional: slope broadcasts to X
        a_shape = shapes.result_shape
    a = f32(*a_shape, seed=seed)
    b = f32(*b_shape, seed=seed + 1)
    if op == "Pow":
        a = np.abs(a) + np.float32(0.1)
    if op == "Where":
        check(op, [a > 0, a, b], opset=16)
    else:
        check(op, [a, b], opset=16 if op == "PRelu" else 14, rtol=1e-5, atol=1e-5)


UNARY = ["Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Erf",
         "Sin", "Cos", "Tan", "Atan", "Sinh", "Cosh", "Asinh", "Sigmoid", "Tanh", "Relu", "Softplus",
         "Softsign", "Mish", "HardSwish", "IsNaN", "IsInf", "Not"]


UNARY_DOUBLE = {"Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
                "Sigmoid", "Tanh", "Relu", "Sin", "Cos", "IsNaN", "IsInf", "Not"}


@settings(max_examples=30, deadline=None)
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), op=st.sampled_from(UNARY),
       seed=st.integers(0, 2 ** 16), dtype=st.sampled_from([np.float32, np.float64]))
def test_unary_random(shape, op, seed, dtype):
    if op not in UNARY_DOUBLE:
        dtype = np.float32  # onnxruntime has no double kernel for it
    x = f32(*shape, seed=seed, low=-20, high=20).astype(dtype)
    if op in ("Sqrt", "Log"):
        x = np.abs(x) + dtype(0.01)
    if op == "Not":
        x = x > 0
    if op == "Round":
        x = (x * 2).round() / 2  # exact halves: ties must go to even
    check(op, [x], opset=18, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op, attrs", [
    ("LeakyRelu", {"alpha": 0.2}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Celu", {"alpha": 2.0}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("ThresholdedRelu", {"alpha": 0.5}),
    ("Shrink", {"bias": 0.5, "lambd": 1.0}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}),
])
def test_parametrised_activations(op, attrs):
    x = f32(3, 7, low=-5, high=5)
    check(op, [x], attrs, opset=20, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- casts


@pytest.mark.parametrize("src", [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8,
                                 np.int8, np.bool_])
@pytest.mark.parametrize("dst", [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8,
                                 np.bool_])
def test_cast_matrix(src, dst):
    x = np.array([0, 1.7, -2.2, 3.5, 100.2, -0.4], np.float64)
    if np.dtype(src).kind in "ub":
        x = np.abs(x)
    x = x.astype(src)
    check("Cast", [x], {"to": oh.np_dtype_to_tensor_dtype(np.dtype(dst))}, opset=13)
    check("CastLike", [x, np.zeros(1, dst)], opset=15)


def test_cast_from_string_parses_numbers():
    model, _ = build("Cast", [np.zeros(5, np.float32)], {"to": onnx.TensorProto.FLOAT}, opset=13)
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.STRING
    feeds = {"x0": np.array(["1.5", "-2", "NaN", "-INF", "1e3"], dtype=object)}
    np.testing.assert_array_equal(run_ours(model, feeds)[0], run_ort(model, feeds)[0])


# ---------------------------------------------------------------- matrix products and norms


def test_matmul_shapes_and_dtypes():
    check("MatMul", [f32(3), f32(3, 4)], opset=13)
    check("MatMul", [f32(2, 1, 3, 4), f32(5, 4, 2)], opset=13)
    check("MatMul", [f32(4), f32(4)], opset=13)
    check("MatMul", [f32(3, 4).astype(np.float16), f32(4, 2).astype(np.float16)], opset=13,
          rtol=1e-2, atol=1e-2)
    check("MatMul", [np.arange(6, dtype=np.int64).reshape(2, 3), np.arange(3, dtype=np.int64)], opset=13)


@pytest.mark.parametrize("attrs", [{}, {"transA": 1}, {"transB": 1, "alpha": 0.5, "beta": 2.0},
                                   {"transA": 1, "transB": 1, "beta": 0.0}])
@pytest.mark.parametrize("c_shape", [None, (), (5,), (1, 5), (3, 1), (3, 5)])
def test_gemm(attrs, c_shape):
    a = f32(4, 3) if attrs.get("transA") else f32(3, 4)
    b = f32(5, 4, seed=1) if attrs.get("transB") else f32(4, 5, seed=1)
    inputs = [a, b] + ([] if c_shape is None else [f32(*c_shape, seed=2)])
    check("Gemm", inputs, attrs, opset=13)
    if c_shape is not None:
        check("Gemm", inputs, attrs, opset=9)


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_layer_normalization_outputs_and_dtypes(axis):
    x = f32(2, 3, 4)
    shape = x.shape[axis % 3:]
    check("LayerNormalization", [x, f32(*shape, seed=1), f32(*shape, seed=2)],
          {"axis": axis, "epsilon": 1e-3}, opset=17, n_out=3, rtol=1e-4, atol=1e-5)
    check("LayerNormalization", [x.astype(np.float64), f32(*shape, seed=1).astype(np.float64)],
          {"axis": axis}, opset=17, n_out=3, rtol=1e-4, atol=1e-5)


def test_batch_normalization_inference():
    x = f32(2, 3, 4, 5)
    params = [f32(3, seed=1), f32(3, seed=2), f32(3, seed=3), f32(3, seed=4, low=0.1, high=2)]
    check("BatchNormalization", [x] + params, {"epsilon": 1e-3}, opset=15, rtol=1e-4, atol=1e-5)
    check("BatchNormalization", [x] + params, opset=9, rtol=1e-4, atol=1e-5)
    check("BatchNormalization", [f32(4, 3)] + params, opset=14, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("equation, shapes", [
    ("ij,jk->ik", [(2, 3), (3, 4)]), ("bij,bjk->bik", [(2, 2, 3), (2, 3, 2)]), ("ii->i", [(3, 3)]),
    ("i,i", [(4,), (4,)]), ("...ij->...ji", [(2, 3, 4)]), ("ij", [(2, 3)]),
])
def test_einsum(equation, shapes):
    check("Einsum", [f32(*s, seed=i) for i, s in enumerate(shapes)], {"equation": equation}, opset=12,
          rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- generators and selection


def test_range_onehot_eyelike_cumsum_trilu():
    check("Range", [np.array(0.1, np.float32), np.array(10, np.float32), np.array(0.3, np.float32)],
          opset=11)
    check("Range", [np.array(10, np.int64), np.array(-3, np.int64), np.array(-4, np.int64)], opset=11)
    check("Range", [np.array(5, np.int32), np.array(1, np.int32), np.array(1, np.int32)], opset=11)
    check("OneHot", [np.array([[1, -1], [5, 0]], np.int64), np.array(3, np.int64),
                     np.array([0, 2], np.float32)], {"axis": 0}, opset=11)
    check("OneHot", [np.array([1.7, -1.2], np.float32), np.array(3.9, np.float32),
                     np.array([0, 1], np.float32)], opset=11)
    check("EyeLike", [f32(3, 4)], {"k": 1, "dtype": onnx.TensorProto.INT32}, opset=9)
    check("EyeLike", [np.zeros((4, 2), np.int64)], {"k": -1}, opset=9)
    for exclusive in (0, 1):
        for reverse in (0, 1):
            check("CumSum", [f32(3, 4), np.array(-1, np.int64)],
                  {"exclusive": exclusive, "reverse": reverse}, opset=14)
    check("CumSum", [np.arange(6, dtype=np.int32).reshape(2, 3), np.array(0, np.int32)], opset=14)
    for k in (None, 1, -2, 10):
        for upper in (0, 1):
            inputs = [f32(2, 3, 4)] + ([] if k is None else [np.array(k, np.int64)])
            check("Trilu", inputs, {"upper": upper}, opset=14)


def test_topk_versions_and_ties():
    x = np.array([[3, 1, 3, 2], [0, 5, 5, 5]], np.float32)
    check("TopK", [x], {"k": 2}, opset=9, n_out=2)
    check("TopK", [x, i64([3])], {"axis": -1}, opset=10, n_out=2)
    check("TopK", [x, i64([3])], {"largest": 0}, opset=11, n_out=2)
    check("TopK", [x, i64([2])], {"axis": 0, "largest": 1}, opset=11, n_out=2)
    check("TopK", [np.array([5, 1, 5, 3], np.int64), i64([4])], opset=11, n_out=2)


def test_selection_ops():
    check("NonZero", [np.array([[1, 0], [0, 3]], np.int32)], opset=13)
    check("NonZero", [np.array(3.0, np.float32)], opset=13)
    check("Compress", [f32(3, 4), np.array([True, False, True])], {"axis": 0}, opset=11)
    check("Compress", [f32(3, 4), np.array([False, True])], {"axis": 1}, opset=11)
    check("Compress", [f32(3, 2), np.array([True, False, True, True])], opset=11)
    check("ReverseSequence", [f32(4, 3, 2), i64([4, 1, 3])], {"batch_axis": 1, "time_axis": 0},
          opset=10)
    check("ReverseSequence", [f32(3, 4), i64([1, 2, 4])], {"batch_axis": 0, "time_axis": 1}, opset=10)


def test_shape_size_expand_tile_constant_of_shape():
    check("Shape", [X3], opset=13)
    for start, end in [(1, None), (-2, None), (0, -1), (5, 10), (2, 1)]:
        attrs = {"start": start} if end is None else {"start": start, "end": end}
        check("Shape", [X3], attrs, opset=15)
    check("Size", [X3], opset=13)
    check("Expand", [f32(3, 1), i64([2, 1, 4])], opset=13)
    check("Expand", [f32(2, 3), i64([3])], opset=13)
    check("Tile", [f32(2, 3), i64([2, 1])], opset=13)
    check("ConstantOfShape", [i64([2, 3])], {"value": onnx.numpy_helper.from_array(
        np.array([7], np.int32))}, opset=9)
    check("ConstantOfShape", [i64([2, 0])], opset=9)


def test_dropout_is_identity_with_mask():
    x = f32(3, 4)
    check("Dropout", [x, np.array(0.3, np.float32)], opset=13, n_out=2)
    check("Dropout", [x, np.array(0.3, np.float32), np.array(False)], opset=13, n_out=2)
    check("Dropout", [x], {"ratio": 0.3}, opset=10)
    # Before opset 12 onnxruntime returns an all-False mask; the spec's inference mask
    # (and the ONNX cases for opset 12+) keep everything: all True / ones.
    got = run_ours(*build("Dropout", [x], {"ratio": 0.3}, opset=10, n_out=2))
    np.testing.assert_array_equal(got[0], x)
    assert got[1].dtype == np.bool_ and got[1].all()
    got = run_ours(*build("Dropout", [x], {"ratio": 0.3}, opset=7, n_out=2))
    assert got[1].dtype == x.dtype and np.all(got[1] == 1), "opset 7 mask has X's dtype"


def test_scalar_results_are_zero_d_arrays():
    """NumPy returns scalars for 0-D results; kernels must still return ndarrays (check asserts)."""
    v = f32(4)
    check("Gather", [v, np.array(2, np.int64)], opset=13)
    check("GatherND", [f32(2, 2), i64([1, 0])], opset=13)
    check("GatherElements", [np.array(5.0, np.float32).reshape(1), i64([0])], opset=13)
    check("MatMul", [v, v], opset=13)
    check("ReduceSum", [v], {"keepdims": 0}, opset=13)
    check("ReduceLogSumExp", [v], {"keepdims": 0}, opset=18)
    check("ArgMax", [v], {"keepdims": 0}, opset=13)
    check("Add", [np.array(1.5, np.float32), np.array(2, np.float32)], opset=14)
    check("Einsum", [v, v], {"equation": "i, i ->"}, opset=12)


# ---------------------------------------------------------------- errors


def _names(info, *words):
    text = str(info.value)
    assert "the_node" in text, text
    for word in words:
        assert word in text, f"{word!r} missing from: {text}"


@pytest.mark.parametrize("op, inputs, attrs, opset, words", [
    ("Pad", [f32(2), i64([1, 1])], {"mode": "mirror"}, 13, ["mode", "mirror", "reflect"]),
    ("Pad", [f32(2), i64([1, 1])], {"mode": "wrap"}, 18, ["mode", "wrap"]),
    ("Gelu", [f32(2)], {"approximate": "fast"}, 20, ["approximate", "fast", "tanh"]),
    ("ScatterND", [f32(3), i64([[0]]), f32(1)], {"reduction": "max"}, 16, ["reduction", "max"]),
    ("ScatterElements", [f32(3), i64([0]), f32(1)], {"reduction": "sum"}, 18, ["reduction", "sum"]),
    ("Cast", [f32(2)], {"to": onnx.TensorProto.BFLOAT16}, 13, ["to", "bfloat16"]),
    ("Cast", [f32(2)], {"to": onnx.TensorProto.STRING}, 13, ["to", "string"]),
    ("LayerNormalization", [f32(2, 3), f32(3)], {"stash_type": 11}, 17, ["stash_type", "11"]),
    ("ReduceSum", [f32(2, 3)], {"keepdims": 2}, 13, ["keepdims", "2"]),
    ("ArgMax", [f32(2, 3)], {"select_last_index": 5}, 13, ["select_last_index"]),
    ("ReverseSequence", [f32(2, 2), i64([1, 1])], {"batch_axis": 2}, 10, ["batch_axis", "2"]),
    ("Einsum", [f32(2, 2)], {"equation": "ij->j$"}, 12, ["equation"]),
    ("BitShift", [np.zeros(2, np.uint8), np.zeros(2, np.uint8)], {"direction": "UP"}, 11,
     ["direction", "UP"]),
    ("Transpose", [f32(2, 3)], {"perm": [0, 0]}, 13, ["perm"]),
    ("Split", [f32(4)], {"num_outputs": 3}, 18, ["num_outputs"]),
])
def test_bad_attributes_fail_at_load(op, inputs, attrs, opset, words):
    n_out = 2 if op == "Split" else 1
    _names(load_error(op, inputs, attrs, opset, n_out=n_out), *words)


def test_batchnorm_training_and_dropout_training_fail_at_load():
    params = [f32(3) for _ in range(4)]
    info = load_error("BatchNormalization", [f32(2, 3)] + params, {"training_mode": 1}, opset=15)
    _names(info, "training_mode")
    info = load_error("Dropout", [f32(3)], opset=13, n_out=1,
                      consts={1: np.array(0.5, np.float32), 2: np.array(True)})
    _names(info, "training_mode")
    model, feeds = build("Dropout", [f32(3), np.array(0.5, np.float32), np.array(True)], opset=13)
    with pytest.raises(UnsupportedModelError, match="training_mode"):
        lstminfer.load(model).run(None, feeds)


@pytest.mark.parametrize("op, inputs, attrs, opset, words", [
    ("Reshape", [f32(2, 3), i64([4, -1])], {}, 13, ["(2, 3)", "[4, -1]"]),
    ("Reshape", [f32(2, 3), i64([-1, -1])], {}, 13, ["more than one -1"]),
    ("Squeeze", [f32(2, 3), i64([0])], {}, 13, ["squeeze axis 0", "size 2"]),
    ("Gather", [f32(3, 2), i64([3])], {"axis": 0}, 13, ["out of range", "3"]),
    ("Slice", [f32(3), i64([0]), i64([2]), i64([0]), i64([0])], {}, 13, ["step"]),
    ("Concat", [f32(2, 3), f32(2, 3)], {"axis": 2}, 13, ["axis 2", "out of range"]),
    ("TopK", [f32(3), i64([4])], {}, 11, ["k = 4"]),
    ("Expand", [f32(2, 3), i64([4, 3, 2])], {}, 13, ["cannot be broadcast"]),
    ("Split", [f32(4), i64([1, 2])], {}, 13, ["split [1, 2]"]),
])
def test_bad_runtime_values_name_the_node(op, inputs, attrs, opset, words):
    n_out = 2 if op == "Split" else 1
    _names(run_error(op, inputs, attrs, opset, n_out=n_out), *words)
