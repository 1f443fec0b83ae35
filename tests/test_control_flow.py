"""Loop, If, Scan and sequence ops: hand-built graphs run by lstminfer and onnxruntime.

Every model is built with onnx.helper and run by both; outputs must agree in
dtype, shape and value. Bad models must fail at load with an error that names
the node.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper as oh

import lstminfer
from lstminfer.errors import ExecutionError, InvalidModelError

F, I64, B = TP.FLOAT, TP.INT64, TP.BOOL


# ---------------------------------------------------------------- helpers

def vi(name, elem=F, shape=None):
    return oh.make_tensor_value_info(name, elem, shape)


def seq_vi(name, elem=F):
    return oh.make_tensor_sequence_value_info(name, elem, None)


def const(name, value, elem=F):
    value = np.asarray(value)
    return oh.make_node("Constant", [], [name], value=oh.make_tensor(name + "_v", elem, value.shape, value.ravel().tolist()))


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    return model


def ort_run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if isinstance(e, list):
            assert isinstance(g, list) and len(g) == len(e)
            assert_same(g, e)
            continue
        g = np.asarray(g)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        assert g.shape == e.shape, (g.shape, e.shape)
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


def check(model, feeds):
    """Run with both runtimes; return lstminfer's outputs after comparing."""
    expected = ort_run(model, feeds)
    got = lstminfer.load(model).run(None, feeds)
    assert_same(got, expected)
    return got


def loop_body(nodes, carried, scans, extra_inputs=()):
    """Body graph: (i, cond_in, *carried) -> (cond_out, *carried_out, *scans)."""
    inputs = [vi("i", I64, []), vi("cond_in", B, [])] + [vi(n + "_in", t) for n, t in carried]
    outputs = [vi("cond_out", B, [])] + [vi(n + "_out", t) for n, t in carried] + list(scans)
    return oh.make_graph(nodes, "body", inputs, outputs)


# ---------------------------------------------------------------- Loop

def counting_loop_model(opset=17):
    """Loop(M, cond): acc += x * w (w from the outer graph); scan out acc and i.

    The body stops itself once i reaches `stop` (an outer-scope graph input).
    """
    body = loop_body(
        [
            oh.make_node("Mul", ["x", "w"], ["xw"]),
            oh.make_node("Add", ["acc_in", "xw"], ["acc_out"]),
            oh.make_node("Identity", ["acc_out"], ["acc_scan"]),
            oh.make_node("Identity", ["i"], ["i_scan"]),
            const("one", 1, I64),
            oh.make_node("Add", ["i", "one"], ["next_i"]),
            oh.make_node("Less", ["next_i", "stop"], ["cond_out"]),
        ],
        carried=[("acc", F)],
        scans=[vi("acc_scan", F, [3]), vi("i_scan", I64, [])],
    )
    return make_model(
        [oh.make_node("Loop", ["M", "cond", "acc0"], ["acc", "accs", "iters"], body=body, name="the_loop")],
        [vi("M", I64, []), vi("cond", B, []), vi("acc0", F, [3]), vi("x", F, [3]), vi("stop", I64, [])],
        [vi("acc", F), vi("accs", F), vi("iters", I64)],
        [oh.make_tensor("w", F, [3], [0.5, -1.0, 2.0])],
        opset=opset,
    )


def counting_feeds(rng, trips, cond=True, stop=100):
    return {
        "M": np.array(trips, np.int64), "cond": np.array(cond),
        "acc0": rng.normal(size=3).astype(np.float32), "x": rng.normal(size=3).astype(np.float32),
        "stop": np.array(stop, np.int64),
    }


@pytest.mark.parametrize("opset", [11, 13, 16, 19, 21])
def test_loop_with_outer_scope_values_across_opsets(rng, opset):
    got = check(counting_loop_model(opset), counting_feeds(rng, 5))
    assert got[1].shape == (5, 3) and got[2].tolist() == [0, 1, 2, 3, 4]


def test_loop_terminated_by_body_condition(rng):
    got = check(counting_loop_model(), counting_feeds(rng, 50, stop=4))
    assert got[2].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("trips, cond", [(0, True), (5, False), (-3, True)])
def test_zero_trip_loop_keeps_initial_values(rng, trips, cond):
    feeds = counting_feeds(rng, trips, cond=cond)
    got = check(counting_loop_model(), feeds)
    np.testing.assert_array_equal(got[0], feeds["acc0"])
    assert got[1].shape == (0, 3) and got[2].shape == (0,)


@settings(max_examples=30, deadline=None)
@given(trips=st.integers(-1, 12), stop=st.integers(0, 14), cond=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_loop_trip_count_and_condition_property(trips, stop, cond, seed):
    check(counting_loop_model(), counting_feeds(np.random.default_rng(seed), trips, cond, stop))


def _optional_inputs_loop(loop_inputs, graph_inputs):
    body = loop_body(
        [
            const("limit", 3, I64),
            oh.make_node("Less", ["i", "limit"], ["cond_out"]),
            oh.make_node("Add", ["v_in", "v_in"], ["v_out"]),
        ],
        carried=[("v", F)],
        scans=[],
    )
    return make_model(
        [oh.make_node("Loop", loop_inputs, ["v"], body=body)],
        graph_inputs, [vi("v", F)],
    )


def test_loop_without_trip_count_runs_until_body_condition_is_false():
    model = _optional_inputs_loop(["", "cond", "v0"], [vi("cond", B, []), vi("v0", F, [2])])
    got = check(model, {"cond": np.array(True), "v0": np.ones(2, np.float32)})
    np.testing.assert_array_equal(got[0], [16, 16])  # i = 0..3 ran, then cond false


def test_loop_without_condition_input_still_honours_body_condition():
    # onnxruntime and the ONNX reference both stop on the body's cond here.
    model = _optional_inputs_loop(["M", "", "v0"], [vi("M", I64, []), vi("v0", F, [2])])
    check(model, {"M": np.array(10, np.int64), "v0": np.ones(2, np.float32)})
    check(model, {"M": np.array(2, np.int64), "v0": np.ones(2, np.float32)})


def test_loop_carried_value_may_change_shape():
    """The carried value grows by one row per iteration (a Concat in the body)."""
    body = loop_body(
        [
            const("axes", [0], I64),
            oh.make_node("Cast", ["i"], ["fi"], to=F),
            oh.make_node("Unsqueeze", ["fi", "axes"], ["row"]),
            oh.make_node("Concat", ["rows_in", "row"], ["rows_out"], axis=0),
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        carried=[("rows", F)],
        scans=[],
    )
    model = make_model(
        [oh.make_node("Loop", ["M", "", "rows0"], ["rows"], body=body)],
        [vi("M", I64, []), vi("rows0", F, [None])], [vi("rows", F)],
    )
    got = check(model, {"M": np.array(4, np.int64), "rows0": np.array([9.0], np.float32)})
    np.testing.assert_array_equal(got[0], [9, 0, 1, 2, 3])


def _passthrough_loop(scan_name):
    body = oh.make_graph(
        [], "body",
        [vi("i", I64, []), vi("cond_in", B, []), vi("v_in", F, [2])],
        [vi("cond_in", B, []), vi("v_in", F, [2]), vi(scan_name, F, [2] if scan_name == "v_in" else [3])],
    )
    return make_model(
        [oh.make_node("Loop", ["M", "", "v0"], ["v", "trace"], body=body)],
        [vi("M", I64, []), vi("v0", F, [2])], [vi("v", F), vi("trace", F)],
        [oh.make_tensor("w", F, [3], [1.0, 2.0, 3.0])],
    )


def test_loop_body_outputs_may_be_its_own_inputs():
    """A body with no nodes: its outputs are its inputs, wired straight through."""
    got = check(_passthrough_loop("v_in"), {"M": np.array(3, np.int64), "v0": np.array([4.0, 5.0], np.float32)})
    np.testing.assert_array_equal(got[1], [[4, 5]] * 3)


def test_loop_body_output_may_be_an_outer_value():
    # Valid ONNX that onnxruntime refuses ("add an Identity node"); we run it.
    model = _passthrough_loop("w")
    got = lstminfer.load(model).run(None, {"M": np.array(2, np.int64), "v0": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(got[1], [[1, 2, 3]] * 2)


def test_nested_loop_reads_values_from_every_enclosing_scope():
    """Inner body reads `scale` (main graph) and `j` (the outer body's iteration number)."""
    inner = oh.make_graph(
        [
            oh.make_node("Cast", ["j"], ["fj"], to=F),
            oh.make_node("Cast", ["k"], ["fk"], to=F),
            oh.make_node("Mul", ["fj", "scale"], ["a"]),
            oh.make_node("Add", ["a", "fk"], ["b"]),
            oh.make_node("Add", ["s_in", "b"], ["s_out"]),
            oh.make_node("Identity", ["c_in"], ["c_out"]),
            oh.make_node("Identity", ["b"], ["b_scan"]),
        ],
        "inner",
        [vi("k", I64, []), vi("c_in", B, []), vi("s_in", F, [])],
        [vi("c_out", B, []), vi("s_out", F, []), vi("b_scan", F, [])],
    )
    outer = oh.make_graph(
        [
            oh.make_node("Loop", ["inner_trips", "", "t_in"], ["t_out", "bs"], body=inner),
            oh.make_node("Identity", ["c"], ["c2"]),
        ],
        "outer",
        [vi("j", I64, []), vi("c", B, []), vi("t_in", F, [])],
        [vi("c2", B, []), vi("t_out", F, []), vi("bs", F, [None])],
    )
    model = make_model(
        [oh.make_node("Loop", ["M", "", "t0"], ["total", "all_bs"], body=outer)],
        [vi("M", I64, []), vi("inner_trips", I64, []), vi("t0", F, []), vi("scale", F, [])],
        [vi("total", F), vi("all_bs", F)],
    )
    feeds = {"M": np.array(3, np.int64), "inner_trips": np.array(4, np.int64),
             "t0": np.array(0.5, np.float32), "scale": np.array(10.0, np.float32)}
    got = check(model, feeds)
    assert got[1].shape == (3, 4)
    np.testing.assert_array_equal(got[1][2], [20, 21, 22, 23])


def test_loop_with_sequence_carried_value():
    """The PyTorch-export pattern: SequenceInsert in a Loop, then ConcatFromSequence."""
    body = loop_body(
        [
            oh.make_node("Cast", ["i"], ["fi"], to=F),
            oh.make_node("Mul", ["fi", "x"], ["item"]),
            oh.make_node("SequenceInsert", ["seq_in", "item"], ["seq_out"]),
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        carried=[],
        scans=[],
    )
    body.input.append(oh.make_tensor_sequence_value_info("seq_in", F, None))
    body.output.append(oh.make_tensor_sequence_value_info("seq_out", F, None))
    model = make_model(
        [
            oh.make_node("SequenceEmpty", [], ["empty"], dtype=F),
            oh.make_node("Loop", ["M", "", "empty"], ["items"], body=body),
            oh.make_node("ConcatFromSequence", ["items"], ["stacked"], axis=0, new_axis=1),
            oh.make_node("SequenceLength", ["items"], ["n"]),
        ],
        [vi("M", I64, []), vi("x", F, [2])],
        [vi("stacked", F), vi("n", I64), seq_vi("items")],
    )
    got = check(model, {"M": np.array(3, np.int64), "x": np.array([1.0, -2.0], np.float32)})
    assert got[0].shape == (3, 2) and int(got[1]) == 3 and len(got[2]) == 3


# ---------------------------------------------------------------- If

def if_model(opset=17):
    """If(c): then = x * w (w outer initializer), else = concat(x, y) (a different shape)."""
    then_g = oh.make_graph([oh.make_node("Mul", ["x", "w"], ["t"])], "then", [], [vi("t", F)])
    else_g = oh.make_graph([oh.make_node("Concat", ["x", "y"], ["e"], axis=0)], "else", [], [vi("e", F)])
    return make_model(
        [oh.make_node("If", ["c"], ["out"], then_branch=then_g, else_branch=else_g, name="branch")],
        [vi("c", B, [1]), vi("x", F, [2]), vi("y", F, [None])],
        [vi("out", F)],
        [oh.make_tensor("w", F, [2], [3.0, -1.0])],
        opset=opset,
    )


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
@pytest.mark.parametrize("cond", [True, False])
def test_if_picks_branch_with_outer_scope_values(rng, opset, cond):
    feeds = {"c": np.array([cond]), "x": rng.normal(size=2).astype(np.float32),
             "y": rng.normal(size=3).astype(np.float32)}
    got = check(if_model(opset), feeds)
    assert got[0].shape == ((2,) if cond else (5,))


def test_if_inside_loop_body():
    """Each iteration adds i or subtracts 1 depending on i's parity (If reads the body's values)."""
    then_g = oh.make_graph([oh.make_node("Add", ["s_in", "fi"], ["r1"])], "then", [], [vi("r1", F, [])])
    else_g = oh.make_graph([oh.make_node("Sub", ["s_in", "one"], ["r2"])], "else", [], [vi("r2", F, [])])
    body = loop_body(
        [
            const("two", 2, I64), const("zero", 0, I64), const("one", 1.0),
            oh.make_node("Cast", ["i"], ["fi"], to=F),
            oh.make_node("Mod", ["i", "two"], ["parity"]),
            oh.make_node("Equal", ["parity", "zero"], ["even"]),
            oh.make_node("If", ["even"], ["s_out"], then_branch=then_g, else_branch=else_g),
            oh.make_node("Identity", ["s_out"], ["s_scan"]),
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        carried=[("s", F)],
        scans=[vi("s_scan", F, [])],
    )
    model = make_model(
        [oh.make_node("Loop", ["M", "", "s0"], ["s", "trace"], body=body)],
        [vi("M", I64, []), vi("s0", F, [])], [vi("s", F), vi("trace", F)],
    )
    got = check(model, {"M": np.array(6, np.int64), "s0": np.array(0.0, np.float32)})
    np.testing.assert_array_equal(got[1], [0, -1, 1, 0, 4, 3])


# ---------------------------------------------------------------- Scan

def scan_model(in_dirs, in_axes, out_dirs, out_axes, opset=17):
    """Scan with one state (running sum) and two scan inputs; the body reads `bias` from outside.

    x: scanned along in_axes[0]; y: along in_axes[1]. Outputs: final sum,
    per-step sum (out_axes[0]) and per-step x*y (out_axes[1]).
    """
    body = oh.make_graph(
        [
            oh.make_node("Mul", ["x_t", "y_t"], ["xy"]),
            oh.make_node("Add", ["sum_in", "xy"], ["partial"]),
            oh.make_node("Add", ["partial", "bias"], ["sum_out"]),
            oh.make_node("Identity", ["sum_out"], ["sum_t"]),
            oh.make_node("Identity", ["xy"], ["xy_t"]),
        ],
        "scan_body",
        [vi("sum_in", F, [2]), vi("x_t", F, [2]), vi("y_t", F, [2])],
        [vi("sum_out", F, [2]), vi("sum_t", F, [2]), vi("xy_t", F, [2])],
    )
    node = oh.make_node(
        "Scan", ["s0", "x", "y"], ["s", "sums", "xys"], body=body, num_scan_inputs=2, name="scanner",
        scan_input_directions=in_dirs, scan_input_axes=in_axes,
        scan_output_directions=out_dirs, scan_output_axes=out_axes,
    )
    return make_model(
        [node],
        [vi("s0", F, [2]), vi("x", F, None), vi("y", F, None)],
        [vi("s", F), vi("sums", F), vi("xys", F)],
        [oh.make_tensor("bias", F, [2], [0.25, -0.5])],
        opset=opset,
    )


def scan_feeds(rng, length, in_axes):
    def scanned(axis):
        shape = [2, 2]
        shape.insert(axis % 2, length)  # the step axis, the other is the (2,) element
        return rng.normal(size=shape[:2]).astype(np.float32)

    return {"s0": rng.normal(size=2).astype(np.float32), "x": scanned(in_axes[0]), "y": scanned(in_axes[1])}


@pytest.mark.parametrize("opset", [9, 11, 16, 21])
def test_scan_forward_defaults(rng, opset):
    model = scan_model([0, 0], [0, 0], [0, 0], [0, 0], opset)
    check(model, scan_feeds(rng, 5, [0, 0]))


@settings(max_examples=30, deadline=None)
@given(
    in_dirs=st.lists(st.integers(0, 1), min_size=2, max_size=2),
    in_axes=st.lists(st.sampled_from([0, 1, -1]), min_size=2, max_size=2),
    out_dirs=st.lists(st.integers(0, 1), min_size=2, max_size=2),
    out_axes=st.lists(st.sampled_from([0, 1, -1, -2]), min_size=2, max_size=2),
    length=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_scan_directions_and_axes_property(in_dirs, in_axes, out_dirs, out_axes, length, seed):
    model = scan_model(in_dirs, in_axes, out_dirs, out_axes, opset=17)
    check(model, scan_feeds(np.random.default_rng(seed), length, in_axes))


def test_scan_of_zero_length_passes_states_through(rng):
    # onnxruntime fails on an empty scan; we return the initial state and empty stacks.
    model = scan_model([0, 0], [0, 0], [0, 0], [1, 0])
    feeds = {"s0": np.array([1.0, 2.0], np.float32), "x": np.zeros((0, 2), np.float32),
             "y": np.zeros((0, 2), np.float32)}
    s, sums, xys = lstminfer.load(model).run(None, feeds)
    np.testing.assert_array_equal(s, feeds["s0"])
    assert sums.shape == (2, 0) and xys.shape == (0, 2)


def test_scan_inputs_of_different_lengths_fail_naming_the_node(rng):
    model = scan_model([0, 0], [0, 0], [0, 0], [0, 0])
    feeds = {"s0": np.zeros(2, np.float32), "x": np.zeros((3, 2), np.float32), "y": np.zeros((4, 2), np.float32)}
    with pytest.raises(ExecutionError, match=r"scanner.*sequence length: 3 .* 4"):
        lstminfer.load(model).run(None, feeds)


# ---------------------------------------------------------------- sequence ops

def test_sequence_construct_insert_erase_at_length(rng):
    pos = vi("pos", I64, [])
    model = make_model(
        [
            const("neg1", -1, I64),
            oh.make_node("SequenceConstruct", ["a", "b"], ["s1"]),
            oh.make_node("SequenceInsert", ["s1", "c", "pos"], ["s2"]),
            oh.make_node("SequenceInsert", ["s2", "a"], ["s3"]),  # append
            oh.make_node("SequenceErase", ["s3", "neg1"], ["s4"]),
            oh.make_node("SequenceErase", ["s4"], ["s5"]),  # erase last
            oh.make_node("SequenceAt", ["s3", "pos"], ["at"]),
            oh.make_node("SequenceLength", ["s5"], ["n"]),
        ],
        [vi("a", F, [None, 2]), vi("b", F, [None, 2]), vi("c", F, [None, 2]), pos],
        [seq_vi("s3"), seq_vi("s5"), vi("at", F), vi("n", I64)],
    )
    a, b, c = (rng.normal(size=(k, 2)).astype(np.float32) for k in (1, 2, 3))
    for p in (0, 1, 2, -1, -2):
        check(model, {"a": a, "b": b, "c": c, "pos": np.array(p, np.int64)})


def split_concat_model(with_split, keepdims, axis, new_axis, split_shape=None):
    inputs = [vi("x", F, [None, None, 3])]
    split_inputs = ["x"]
    if with_split:
        inputs.append(vi("split", I64, split_shape))
        split_inputs.append("split")
    return make_model(
        [
            oh.make_node("SplitToSequence", split_inputs, ["parts"], axis=axis, keepdims=keepdims),
            oh.make_node("ConcatFromSequence", ["parts"], ["joined"], axis=axis, new_axis=new_axis),
        ],
        inputs, [seq_vi("parts"), vi("joined", F)],
    )


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_split_to_sequence_without_split_then_concat(rng, axis, keepdims):
    model = split_concat_model(False, keepdims, axis, new_axis=1 - keepdims)
    check(model, {"x": rng.normal(size=(4, 2, 3)).astype(np.float32)})


@pytest.mark.parametrize("split", [[1, 3], [0, 4], [2, 2], [4]])
def test_split_to_sequence_with_lengths(rng, split):
    model = split_concat_model(True, 1, 0, 0, split_shape=[None])
    check(model, {"x": rng.normal(size=(4, 2, 3)).astype(np.float32), "split": np.array(split, np.int64)})


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_split_to_sequence_with_chunk_size(rng, size):
    model = split_concat_model(True, 1, 1, 0, split_shape=[])
    check(model, {"x": rng.normal(size=(2, 5, 3)).astype(np.float32), "split": np.array(size, np.int64)})


def test_concat_from_sequence_new_axis_at_end(rng):
    model = make_model(
        [
            oh.make_node("SplitToSequence", ["x"], ["parts"], axis=0, keepdims=0),
            oh.make_node("ConcatFromSequence", ["parts"], ["joined"], axis=-1, new_axis=1),
        ],
        [vi("x", F, [None, 3])], [vi("joined", F)],
    )
    got = check(model, {"x": rng.normal(size=(4, 3)).astype(np.float32)})
    assert got[0].shape == (3, 4)


def test_sequence_position_out_of_range_names_the_node(rng):
    model = make_model(
        [
            oh.make_node("SequenceConstruct", ["a", "a"], ["s"]),
            oh.make_node("SequenceAt", ["s", "pos"], ["at"], name="pick"),
        ],
        [vi("a", F, [2]), vi("pos", I64, [])], [vi("at", F)],
    )
    session = lstminfer.load(model)
    with pytest.raises(ExecutionError, match=r"pick.*position 2 is out of range \[-2, 1\]"):
        session.run(None, {"a": np.zeros(2, np.float32), "pos": np.array(2, np.int64)})


# ---------------------------------------------------------------- bad models fail at load

def _load_error(model):
    # Skip the checker: these models are broken on purpose.
    with pytest.raises(InvalidModelError) as info:
        lstminfer.load(model.SerializeToString())
    return str(info.value)


def test_loop_body_with_wrong_output_count_fails_at_load():
    model = counting_loop_model()
    body = model.graph.node[0].attribute[0].g
    del body.output[-1]  # one scan output fewer than the node's outputs
    message = _load_error(model)
    assert "the_loop" in message and "Loop" in message
    assert "output count: expected 2, got 3" in message


def test_loop_body_with_wrong_input_count_fails_at_load():
    model = counting_loop_model()
    body = model.graph.node[0].attribute[0].g
    body.input.append(vi("extra", F, [3]))
    message = _load_error(model)
    assert "the_loop" in message and "loop-carried inputs: expected 2, got 1" in message


def test_if_branch_with_wrong_output_count_fails_at_load():
    model = if_model()
    else_g = next(a.g for a in model.graph.node[0].attribute if a.name == "else_branch")
    else_g.output.append(vi("x", F))
    message = _load_error(model)
    assert "branch" in message and "else_branch output count: expected 1, got 2" in message


def test_scan_with_bad_attributes_fails_at_load():
    model = scan_model([0, 0], [0, 0], [0, 0], [0, 0])
    for attr in model.graph.node[0].attribute:
        if attr.name == "scan_input_directions":
            attr.ints[:] = [0, 2]
    message = _load_error(model)
    assert "scanner" in message and "scan_input_directions" in message and "[0, 2]" in message

    model = scan_model([0, 0], [0, 0], [0, 0], [0, 0])
    body = next(a.g for a in model.graph.node[0].attribute if a.name == "body")
    body.input.append(vi("extra", F, [2]))
    message = _load_error(model)
    assert "scanner" in message and "body input count: expected 3, got 4" in message


def test_loop_scan_output_changing_shape_fails_naming_the_node():
    """A scan output may not change shape between iterations (its carried value may)."""
    body = loop_body(
        [
            const("axes", [0], I64),
            oh.make_node("Cast", ["i"], ["fi"], to=F),
            oh.make_node("Unsqueeze", ["fi", "axes"], ["row"]),
            oh.make_node("Concat", ["rows_in", "row"], ["rows_out"], axis=0),
            oh.make_node("Identity", ["rows_out"], ["rows_scan"]),
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        carried=[("rows", F)],
        scans=[vi("rows_scan", F, [None])],
    )
    model = make_model(
        [oh.make_node("Loop", ["M", "", "rows0"], ["rows", "trace"], body=body, name="grower")],
        [vi("M", I64, []), vi("rows0", F, [None])], [vi("rows", F), vi("trace", F)],
    )
    with pytest.raises(ExecutionError, match=r"grower.*scan output 0 changed shape"):
        lstminfer.load(model).run(None, {"M": np.array(3, np.int64), "rows0": np.zeros(1, np.float32)})


# ---------------------------------------------------------------- kernels called directly

def kernel_for(op_type, inputs=("x",), opset=17, **attrs):
    from lstminfer.graph import Node
    from lstminfer.ops import BuildContext, lookup

    node = Node(op_type, tuple(inputs), ("y",), attrs, name=f"my_{op_type}")
    return lookup(node, opset).factory(node, BuildContext(opsets={"": opset}))


def test_sequence_kernels_never_change_their_input_list():
    a, b = np.zeros(2, np.float32), np.ones(2, np.float32)
    seq = [a, b]
    (inserted,) = kernel_for("SequenceInsert", ("s", "t"))(seq, a)
    (erased,) = kernel_for("SequenceErase", ("s",))(seq)
    assert seq == [a, b] and len(inserted) == 3 and len(erased) == 1


def test_split_to_sequence_ignores_keepdims_once_split_is_given():
    # The spec: keepdims applies only without 'split'. (onnxruntime squeezes for a
    # scalar split of 1 and fails for larger ones; we follow the spec.)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    (parts,) = kernel_for("SplitToSequence", ("x", "split"), keepdims=0)(x, np.array(1, np.int64))
    assert [p.shape for p in parts] == [(1, 2)] * 3
    (parts,) = kernel_for("SplitToSequence", ("x",), keepdims=0)(x)
    assert [p.shape for p in parts] == [(2,)] * 3 and all(isinstance(p, np.ndarray) for p in parts)


def test_sequence_type_mismatch_names_the_node():
    with pytest.raises(ExecutionError, match=r"my_SequenceInsert.*tensor\(int64\).*tensor\(float\)"):
        kernel_for("SequenceInsert", ("s", "t"))([np.zeros(1, np.float32)], np.zeros(1, np.int64))
    with pytest.raises(ExecutionError, match=r"my_SequenceConstruct.*float, int32"):
        kernel_for("SequenceConstruct", ("a", "b"))(np.zeros(1, np.float32), np.zeros(1, np.int32))


def test_optional_kernels():
    value = np.ones(3, np.float32)
    assert kernel_for("Optional", ("x",))(value)[0] is value
    assert kernel_for("OptionalHasElement", ("x",))(value)[0].item() is True
    assert kernel_for("OptionalHasElement", ("x",), opset=18)(None)[0].item() is False
    assert kernel_for("OptionalGetElement", ("x",))(value)[0] is value
    with pytest.raises(ExecutionError, match=r"my_OptionalGetElement.*empty"):
        kernel_for("OptionalGetElement", ("x",))(None)


def test_scan_before_opset_8_is_refused_at_load():
    from lstminfer.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"opset 7 of 'Scan' is not supported"):
        kernel_for("Scan", ("s", "x"), opset=7, num_scan_inputs=1)


def test_scan8_batch_axis_and_sequence_lens_match_onnxruntime():
    """Scan-8: a leading batch axis, per-row sequence_lens, a reverse scan input."""
    body = oh.make_graph(
        [oh.make_node("Add", ["s_in", "x"], ["s_out"]), oh.make_node("Identity", ["s_out"], ["y"])],
        "body",
        [oh.make_tensor_value_info("s_in", TP.FLOAT, [2]), oh.make_tensor_value_info("x", TP.FLOAT, [2])],
        [oh.make_tensor_value_info("s_out", TP.FLOAT, [2]), oh.make_tensor_value_info("y", TP.FLOAT, [2])],
    )
    node = oh.make_node("Scan", ["lens", "s0", "xs"], ["s_final", "ys"], body=body, num_scan_inputs=1,
                        directions=[1])
    graph = oh.make_graph(
        [node], "scan8",
        [oh.make_tensor_value_info("lens", TP.INT64, [3]), oh.make_tensor_value_info("s0", TP.FLOAT, [3, 2]),
         oh.make_tensor_value_info("xs", TP.FLOAT, [3, 4, 2])],
        [oh.make_tensor_value_info("s_final", TP.FLOAT, [3, 2]), oh.make_tensor_value_info("ys", TP.FLOAT, [3, 4, 2])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 8)])
    model.ir_version = 3
    rng = np.random.default_rng(3)
    feeds = {"lens": np.array([4, 2, 1], np.int64), "s0": rng.standard_normal((3, 2)).astype(np.float32),
             "xs": rng.standard_normal((3, 4, 2)).astype(np.float32)}
    got = lstminfer.load(model).run(None, feeds)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-6)
    for b, n in enumerate(feeds["lens"]):  # within each row's length; past it we give zeros
        np.testing.assert_allclose(got[1][b, :n], expected[1][b, :n], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[1][1, 2:], 0)
