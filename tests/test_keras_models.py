"""Keras recurrent models exported by tf2onnx (tests/data/keras, see its README).

Each fixture runs in lstminfer and onnxruntime on fresh random inputs of
several batch sizes and lengths; outputs must agree within 1e-5. Models with
masking also get zero-padded rows (Masking / Embedding(mask_zero=True)).
"""
import collections
import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import lstminfer

KERAS_DIR = Path(__file__).parent / "data" / "keras"
FIXTURES = sorted(p.stem for p in KERAS_DIR.glob("*.onnx"))
MASKED = {"masking_lstm", "embedding_mask_zero_gru"}
VOCAB = 20  # the exporter's Embedding input_dim
TOLERANCE = 1e-5


def op_counts(graph: onnx.GraphProto, counts=None) -> collections.Counter:
    """Op types in ``graph`` and every nested subgraph."""
    counts = collections.Counter() if counts is None else counts
    for node in graph.node:
        counts[node.op_type] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                op_counts(attr.g, counts)
            for sub in attr.graphs:
                op_counts(sub, counts)
    return counts


@functools.lru_cache(maxsize=None)
def sessions(name, backend="auto"):
    path = KERAS_DIR / f"{name}.onnx"
    return lstminfer.load(str(path), backend=backend), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def random_feed(session, batch, steps, rng, masked):
    """One feed for the model's single input: float features or int32 token ids."""
    (inp,) = session.get_inputs()
    if inp.type == "tensor(int32)":
        value = rng.integers(1, VOCAB, size=(batch, steps)).astype(np.int32)
    else:
        value = rng.normal(size=(batch, steps, inp.shape[2])).astype(np.float32)
    if masked:
        # Rows of random true lengths (0 included), zero-padded after; plus one
        # all-zero step in the middle of the first row.
        for row, length in enumerate(rng.integers(0, steps + 1, size=batch)):
            value[row, length:] = 0
        value[0, steps // 2] = 0
    return {inp.name: value}


def test_fixtures_are_present_and_small():
    assert len(FIXTURES) >= 15
    for name in FIXTURES:
        assert (KERAS_DIR / f"{name}.onnx").stat().st_size < 200_000, name


def test_fixtures_cover_recurrent_ops_and_loops():
    """The point of these fixtures: both the ONNX RNN ops and Loop-unrolled cells."""
    uses = {name: op_counts(onnx.load(str(KERAS_DIR / f"{name}.onnx")).graph) for name in FIXTURES}
    assert uses["lstm_seq"]["LSTM"] == 1 and uses["stacked_lstm"]["LSTM"] == 2
    assert any(counts["Loop"] for counts in uses.values())
    assert uses["bidirectional_gru"]["Loop"] == 2


@pytest.mark.parametrize("backend", lstminfer.available_backends())
@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("batch, steps", [(1, 1), (1, 7), (8, 1), (8, 7), (1, 50), (8, 50)])
def test_keras_fixture_matches_onnxruntime(name, batch, steps, backend, rng):
    ours, reference = sessions(name, backend)
    feed = random_feed(reference, batch, steps, rng, masked=name in MASKED)
    expected = reference.run(None, feed)
    got = ours.run(None, feed)
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == e.dtype and g.shape == e.shape, (index, g.dtype, g.shape, e.dtype, e.shape)
        diff = float(np.max(np.abs(g - e))) if e.size else 0.0
        assert diff <= TOLERANCE, f"{name} output {index}: max |lstminfer - onnxruntime| = {diff:.3g}"


@pytest.mark.parametrize("name", sorted(MASKED))
def test_masked_padding_does_not_change_real_steps(name, rng):
    """Appending padding to a sequence must not change a masked model's result.

    A check of the fixture's semantics, independent of onnxruntime: it holds
    for lstminfer only if the masking logic in the exported graph runs right.
    """
    ours, reference = sessions(name)
    feed = random_feed(reference, 3, 6, rng, masked=False)
    (key, value), = feed.items()
    padded = np.concatenate([value, np.zeros_like(value)[:, :4]], axis=1)
    short = ours.run(None, {key: value})[0]
    long = ours.run(None, {key: padded})[0]
    if short.ndim == 3:  # return_sequences: compare the real steps only
        long = long[:, : value.shape[1]]
    np.testing.assert_allclose(long, short, rtol=0, atol=TOLERANCE)
