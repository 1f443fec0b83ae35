"""The ONNX project's own backend node tests, run end to end through lstminfer.

``onnx.backend.test.case.node.collect_testcases()`` builds every case from
code (model + input/expected-output data sets). We run each case whose ops
are ALL registered in lstminfer (so a newly registered op is picked up
automatically) through ``lstminfer.onnx_backend`` (an ``onnx.backend.base.Backend``:
``prepare(model).run(feeds)``, i.e. ``lstminfer.load(model).run``) and compare
every output's value (the case's rtol/atol), dtype and shape.

Opsets: the loader runs opsets MIN_OPSET..MAX_OPSET. Many cases are stamped
with a newer opset (24-28) whose only change for their ops is new element
types (int4, float8...), or an older one (the opset-1 ``Not``). Such a case is
run re-stamped to the nearest supported opset, but only when every op it uses
has an identical schema (doc text, attributes, inputs, outputs: everything but
the type lists) at both opsets, so the case's semantics are unchanged. Cases
whose ops changed meaning (e.g. ``Mod``-28, ``BitShift``-28, ``Cast``-24) are
not run.

Cases we deliberately do not support go into ``EXCLUDED``: each must fail
loudly with ``UnsupportedModelError`` (at load, or at the first run when the
deciding value is a run-time input). Failures in ops owned by other modules
go into ``KNOWN_FAILING_OTHERS`` (strict xfail: a fix makes the test fail
until the entry is removed).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
import onnx.defs
import pytest

import lstminfer
import lstminfer.onnx_backend as onnx_backend
from lstminfer.errors import UnsupportedModelError
from lstminfer.ops import supported_ops
from lstminfer.ops.registry import MAX_OPSET
from lstminfer.onnx_import import MIN_OPSET

from kernel_cases import with_initializers

# Deliberately unsupported: must raise UnsupportedModelError.
_BF16 = "bfloat16 element type is not supported"
EXCLUDED: dict[str, str] = {
    "test_batchnorm_example_training_mode": "BatchNormalization training_mode=1 (inference only)",
    "test_batchnorm_epsilon_training_mode": "BatchNormalization training_mode=1 (inference only)",
    "test_training_dropout": "Dropout training_mode=True with ratio > 0 (inference only)",
    "test_training_dropout_mask": "Dropout training_mode=True with ratio > 0 (inference only)",
    "test_training_dropout_default": "Dropout training_mode=True with ratio > 0 (inference only)",
    "test_training_dropout_default_mask": "Dropout training_mode=True with ratio > 0 (inference only)",
    "test_attention_4d_causal_bf16_expanded": _BF16,
    "test_attention_4d_attn_mask_causal_bf16_expanded": _BF16,
    "test_attention_3d_causal_bf16_expanded": _BF16,
    "test_celu_bfloat16": _BF16,
    "test_compress_bfloat16": _BF16,
    "test_einsum_batch_matmul_bfloat16": _BF16,
    "test_einsum_sum_bfloat16": _BF16,
    "test_einsum_transpose_bfloat16": _BF16,
    "test_onehot_with_bfloat16_values": _BF16,
    "test_reversesequence_bfloat16": _BF16,
    **{f"test_dequantizelinear_{t}": "float8/int4/int2/float4 element types are not supported"
       for t in ("e4m3fn", "e4m3fn_float16", "e4m3fn_zero_point", "e5m2", "uint4", "int4", "uint2", "int2",
                 "float4e2m1")},
}

# Cases failing in ops/modules owned by others (reported to their owners).
KNOWN_FAILING_OTHERS: dict[str, str] = {}

# Per-case tolerance overrides, with evidence.
TOLERANCE: dict[str, tuple[float, float, str]] = {
    "test_attention_4d_causal_fp16_expanded": (
        2e-3, 1e-3,
        "float16 rounding: 2 of 192 outputs differ by 1 ulp (4.9e-4); onnxruntime 1.32 "
        "differs from the expected data identically",
    ),
}


# ---------------------------------------------------------------- case selection


def _ops_used(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """(domain, op_type) of every node: main graph, subgraphs, model-local functions."""
    found: set[tuple[str, str]] = set()
    local = {(f.domain, f.name) for f in model.functions}

    def walk(nodes):
        for n in nodes:
            key = ("" if n.domain == "ai.onnx" else n.domain, n.op_type)
            if key not in local:
                found.add(key)
            for attr in n.attribute:
                if attr.HasField("g"):
                    walk(attr.g.node)
                for g in attr.graphs:
                    walk(g.node)

    walk(model.graph.node)
    for f in model.functions:
        walk(f.node)
    return found


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _schema_signature(op_type: str, opset: int):
    """Everything that defines an op's meaning at ``opset``, except its type lists."""
    s = onnx.defs.get_schema(op_type, opset)
    attrs = sorted((a.name, a.type, a.required, a.default_value.SerializeToString())
                   for a in s.attributes.values())
    return (s.doc, attrs, [(p.name, p.option) for p in s.inputs],
            [(p.name, p.option) for p in s.outputs], s.min_input, s.max_input,
            s.min_output, s.max_output)


def _same_meaning(op_type: str, opset_a: int, opset_b: int) -> bool:
    try:
        return _schema_signature(op_type, opset_a) == _schema_signature(op_type, opset_b)
    except onnx.defs.SchemaError:
        return False


def _restamped(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for imports in [copy.opset_import] + [f.opset_import for f in copy.functions]:
        for imp in imports:
            if imp.domain in ("", "ai.onnx"):
                imp.version = opset
    return copy


def _runnable_model(case) -> onnx.ModelProto | None:
    """The case's model at a supported opset, or None when its semantics would change."""
    opset = _default_opset(case.model)
    if MIN_OPSET <= opset <= MAX_OPSET:
        return case.model
    target = min(max(opset, MIN_OPSET), MAX_OPSET)
    ops = [op for domain, op in _ops_used(case.model) if domain == ""]
    if all(_same_meaning(op, opset, target) for op in ops):
        return _restamped(case.model, target)
    return None


@functools.lru_cache(maxsize=1)
def _selected_cases() -> list[tuple[object, onnx.ModelProto]]:
    from onnx.backend.test.case.node import collect_testcases

    registered = set(supported_ops())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators warn about float overflow
        cases = collect_testcases()
    selected = []
    for case in cases:
        ops = _ops_used(case.model)
        if not all((f"{d}:{op}" if d else op) in registered for d, op in ops):
            continue
        model = _runnable_model(case)
        if model is not None:
            selected.append((case, model))
    return selected


def _params():
    params = []
    for case, model in _selected_cases():
        marks = []
        if case.name in KNOWN_FAILING_OTHERS:
            marks.append(pytest.mark.xfail(reason=KNOWN_FAILING_OTHERS[case.name], strict=True))
        opset = _default_opset(model)
        suffix = "" if opset == _default_opset(case.model) else f"@opset{opset}"
        params.append(pytest.param(case, model, id=case.name + suffix, marks=marks))
    return params


# ---------------------------------------------------------------- running


def _feeds(model: onnx.ModelProto, inputs) -> dict:
    names = [vi.name for vi in model.graph.input]
    return dict(zip(names, inputs))


def _assert_same(got, expected, rtol: float, atol: float, where: str) -> None:
    if isinstance(expected, list):
        assert isinstance(got, list), f"{where}: expected a sequence, got {type(got).__name__}"
        assert len(got) == len(expected), f"{where}: sequence length {len(got)} != {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            _assert_same(g, e, rtol, atol, f"{where}[{i}]")
        return
    if expected is None:
        assert got is None, f"{where}: expected an empty optional, got {got!r}"
        return
    expected = np.asarray(expected)
    assert isinstance(got, np.ndarray), f"{where}: expected an ndarray, got {type(got).__name__}"
    assert got.dtype == expected.dtype, f"{where}: dtype {got.dtype} != expected {expected.dtype}"
    assert got.shape == expected.shape, f"{where}: shape {got.shape} != expected {expected.shape}"
    if expected.dtype == object:
        assert got.tolist() == expected.tolist(), f"{where}: strings differ"
    else:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=where)


@pytest.mark.parametrize("case, model", _params())
def test_node_case(case, model):
    if case.name in EXCLUDED:
        with pytest.raises(UnsupportedModelError):
            loaded = lstminfer.load(model)
            for inputs, _ in case.data_sets:  # the deciding value may be a run-time input
                loaded.run(None, _feeds(model, inputs))
        return
    rtol, atol = case.rtol, case.atol
    if case.name in TOLERANCE:
        rtol, atol, _ = TOLERANCE[case.name]
    prepared = onnx_backend.prepare(model)  # the onnx.backend.base.Backend interface
    for k, (inputs, expected) in enumerate(case.data_sets):
        got = prepared.run(_feeds(model, inputs))
        assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            _assert_same(g, e, rtol, atol, f"data set {k}, output {i}")


RECURRENT = {"LSTM", "GRU", "RNN"}
_WEIGHT_POSITIONS = (1, 2, 3, 7)  # W, R, B and (LSTM) P among a recurrent node's inputs


def _recurrent_params():
    """(case, model, backend) for every selected case whose graph is one recurrent node."""
    import lstminfer

    params = []
    for case, model in _selected_cases():
        nodes = model.graph.node
        if case.name in EXCLUDED or len(nodes) != 1 or nodes[0].op_type not in RECURRENT:
            continue
        for backend in lstminfer.available_backends():
            params.append(pytest.param(case, model, backend, id=f"{case.name}-{backend}"))
    return params


@pytest.mark.parametrize("case, model, backend", _recurrent_params())
def test_recurrent_case_under_every_backend(case, model, backend):
    """The recurrent cases again, their weights as initializers (so the fast kernels take them), per backend."""
    node = model.graph.node[0]
    weights = {name for k, name in enumerate(node.input) if k in _WEIGHT_POSITIONS and name}
    rtol, atol = (TOLERANCE[case.name][:2] if case.name in TOLERANCE else (case.rtol, case.atol))
    for k, (inputs, expected) in enumerate(case.data_sets):
        feeds = _feeds(model, inputs)
        constant = with_initializers(model, {name: feeds.pop(name) for name in weights if name in feeds})
        loaded = lstminfer.load(constant, backend=backend)
        if np.asarray(inputs[0]).dtype == np.float32:  # float64 cases run on the reference by design
            assert f"via {backend}" in loaded.describe(), loaded.describe()
        got = loaded.run(None, feeds)
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            _assert_same(g, e, rtol, atol, f"[{backend}] data set {k}, output {i}")


def test_recurrent_cases_exist_for_every_op():
    covered = {model.graph.node[0].op_type for case, model, _ in (p.values for p in _recurrent_params())}
    assert covered == RECURRENT


def test_lists_name_selected_cases_only():
    """Every EXCLUDED / KNOWN_FAILING_OTHERS / TOLERANCE entry is a case that actually runs."""
    selected = {case.name for case, _ in _selected_cases()}
    for table in (EXCLUDED, KNOWN_FAILING_OTHERS, TOLERANCE):
        stale = sorted(set(table) - selected)
        assert not stale, f"entries naming no selected case (remove them): {stale}"


def test_selection_covers_glue_ops():
    """The suite really exercises the glue ops (guards against a selection bug)."""
    covered = {op for _, model in _selected_cases() for d, op in _ops_used(model) if d == ""}
    for op in ("Add", "MatMul", "Gemm", "Softmax", "Reshape", "Slice", "Gather", "Concat",
               "Transpose", "Squeeze", "Unsqueeze", "ReduceMean", "Cast", "Where", "LSTM"):
        assert op in covered, f"no conformance case runs {op}"
    assert len(_selected_cases()) > 800


def test_restamping_rejects_changed_semantics():
    """Mod-28 (float fmod=0 allowed) and BitShift-28 (signed) changed meaning: never re-stamped."""
    assert not _same_meaning("Mod", 28, MAX_OPSET)
    assert not _same_meaning("BitShift", 28, MAX_OPSET)
    assert _same_meaning("Reshape", 25, MAX_OPSET)
