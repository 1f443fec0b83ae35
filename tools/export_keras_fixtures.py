"""Export small Keras recurrent models to ONNX with tf2onnx (test fixtures).

Runs in a separate TensorFlow venv, never in the project's own one:

    python3.11 -m venv /work/tfvenv
    /work/tfvenv/bin/pip install tensorflow-cpu tf2onnx onnxruntime
    /work/tfvenv/bin/python tools/export_keras_fixtures.py [OUT_DIR]

Writes ``OUT_DIR/NAME.onnx`` (default ``tests/data/keras``) for every model in
``FIXTURES``. Weights are drawn from a seeded NumPy generator after building,
so the files do not depend on Keras' initializers (whose zero biases would
hide bias bugs). Each export is checked against Keras with onnxruntime before
it is written, so a bad conversion never becomes a fixture.

Re-running gives the same weights and ops, but not byte-identical files:
tf2onnx merges duplicate constants and orders Loop state variables
differently from run to run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

keras = tf.keras
layers = keras.layers

FEATURES = 5
UNITS = 8
VOCAB = 20
DEFAULT_OPSET = 17


def _float_input():
    return keras.Input((None, FEATURES), dtype="float32", name="x")


def _token_input():
    return keras.Input((None,), dtype="int32", name="tokens")


def _rnn(layer_cls, **kwargs):
    """One recurrent layer over a (batch, time, features) float input."""

    def build():
        inp = _float_input()
        return keras.Model(inp, layer_cls(UNITS, **kwargs)(inp))

    return build


def _stacked_lstm():
    inp = _float_input()
    h = layers.LSTM(UNITS, return_sequences=True)(inp)
    return keras.Model(inp, layers.LSTM(UNITS, return_sequences=True)(h))


def _bidirectional_lstm():
    inp = _float_input()
    out = layers.Bidirectional(layers.LSTM(UNITS, return_sequences=True))(inp)
    return keras.Model(inp, out)


def _bidirectional_gru():
    inp = _float_input()
    out = layers.Bidirectional(layers.GRU(UNITS, return_sequences=False), merge_mode="sum")(inp)
    return keras.Model(inp, out)


def _lstm_with_states():
    inp = _float_input()
    seq, h, c = layers.LSTM(UNITS, return_sequences=True, return_state=True)(inp)
    return keras.Model(inp, [seq, h, c])


def _masking_lstm():
    inp = _float_input()
    h = layers.Masking(mask_value=0.0)(inp)
    return keras.Model(inp, layers.LSTM(UNITS, return_sequences=False)(h))


def _embedding_mask_zero_gru():
    inp = _token_input()
    h = layers.Embedding(VOCAB, 6, mask_zero=True)(inp)
    return keras.Model(inp, layers.GRU(UNITS, return_sequences=True)(h))


def _embedding_lstm_classifier():
    inp = _token_input()
    h = layers.Embedding(VOCAB, 6)(inp)
    h = layers.LSTM(UNITS)(h)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(h))


# name -> (builder, opset)
FIXTURES = {
    "lstm_seq": (_rnn(layers.LSTM, return_sequences=True), DEFAULT_OPSET),
    "lstm_last": (_rnn(layers.LSTM, return_sequences=False), DEFAULT_OPSET),
    "lstm_seq_opset13": (_rnn(layers.LSTM, return_sequences=True), 13),
    "gru_reset_after_seq": (_rnn(layers.GRU, reset_after=True, return_sequences=True), DEFAULT_OPSET),
    "gru_reset_after_last": (_rnn(layers.GRU, reset_after=True, return_sequences=False), DEFAULT_OPSET),
    "gru_reset_before_seq": (_rnn(layers.GRU, reset_after=False, return_sequences=True), DEFAULT_OPSET),
    "gru_reset_before_last": (_rnn(layers.GRU, reset_after=False, return_sequences=False), DEFAULT_OPSET),
    "simple_rnn_seq": (_rnn(layers.SimpleRNN, return_sequences=True), DEFAULT_OPSET),
    "simple_rnn_last": (_rnn(layers.SimpleRNN, return_sequences=False), DEFAULT_OPSET),
    "stacked_lstm": (_stacked_lstm, DEFAULT_OPSET),
    "bidirectional_lstm": (_bidirectional_lstm, DEFAULT_OPSET),
    "masking_lstm": (_masking_lstm, DEFAULT_OPSET),
    "embedding_mask_zero_gru": (_embedding_mask_zero_gru, DEFAULT_OPSET),
    "embedding_lstm_classifier": (_embedding_lstm_classifier, DEFAULT_OPSET),
    "embedding_lstm_classifier_opset13": (_embedding_lstm_classifier, 13),
    "bidirectional_gru": (_bidirectional_gru, DEFAULT_OPSET),
    "lstm_with_states": (_lstm_with_states, DEFAULT_OPSET),
}


def _randomize_weights(model: keras.Model, seed: int) -> None:
    """Replace every weight with seeded values; embeddings stay integral-indexed."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        weight.assign(rng.normal(0.0, 0.5, size=shape).astype(np.float32))


def _sample_feed(model: keras.Model, rng: np.random.Generator) -> np.ndarray:
    if model.inputs[0].dtype == "int32":
        tokens = rng.integers(1, VOCAB, size=(3, 6)).astype(np.int32)
        tokens[0, 4:] = 0  # trailing padding exercises mask_zero
        return tokens
    x = rng.normal(size=(3, 6, FEATURES)).astype(np.float32)
    x[0, 4:] = 0.0  # fully masked trailing steps exercise Masking
    return x


def export(name: str, out_dir: Path, seed: int) -> Path:
    builder, opset = FIXTURES[name]
    keras.utils.set_random_seed(seed)
    model = builder()
    _randomize_weights(model, seed)
    inp = model.inputs[0]
    spec = (tf.TensorSpec((None, None), inp.dtype, name=inp.name) if len(inp.shape) == 2
            else tf.TensorSpec((None, None, FEATURES), inp.dtype, name=inp.name),)
    model_proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    model_proto.doc_string = ""  # keep the files free of converter chatter

    # Check the conversion against Keras before keeping it.
    feed = _sample_feed(model, np.random.default_rng(seed))
    expected = model(feed)
    expected = [np.asarray(e) for e in (expected if isinstance(expected, (list, tuple)) else [expected])]
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: feed})
    diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
    if diff > 1e-4:
        raise SystemExit(f"{name}: onnxruntime differs from Keras by {diff}")

    path = out_dir / f"{name}.onnx"
    path.write_bytes(model_proto.SerializeToString())
    print(f"{name}: opset {opset}, {path.stat().st_size} bytes, max |ort - keras| = {diff:.2e}")
    return path


def main(argv: list[str]) -> None:
    out_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "tests/data/keras"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, tf2onnx {tf2onnx.__version__}, "
          f"onnxruntime {ort.__version__}, numpy {np.__version__}")
    for index, name in enumerate(FIXTURES):
        export(name, out_dir, seed=1000 + index)


if __name__ == "__main__":
    main(sys.argv)
