"""Whole ONNX models, as a user would have them, and the runners timed on them.

Used by ``test_bench_whole_model.py``. Every model is a complete export (not one
recurrent node): the three bundled models, two PyTorch models exported at
benchmark time (TorchScript exporter, fixed seed) and two tf2onnx Keras
fixtures from ``tests/data/keras``:

==================  ========================================================================
name                what it is
==================  ========================================================================
adding_lstm         bundled (``lstminfer.models``): x [B,T,2], h0/c0 [1,B,32] -> y, h_n, c_n
forecast_lstm       bundled: x [B,T,1], h0/c0 [1,B,32] -> y, h_n, c_n
forecast_gru        bundled: x [B,T,1], h0 [1,B,32] -> y, h_n
torch_lstm2_h256    PyTorch 2-layer nn.LSTM(40, 256, batch_first) + Linear(256, 40) on every
                    step; x [B,T,40], h0/c0 [2,B,256] -> y, h_n, c_n (TorchScript, opset 17)
torch_classifier    PyTorch Embedding(1000, 64) + LSTM(64, 128, batch_first) + Linear(128, 5)
                    on every step; int64 tokens [B,T], h0/c0 [1,B,128] -> logits [B,T,5],
                    h_n, c_n (TorchScript, opset 17)
keras_gru           tf2onnx ``gru_reset_after_seq.onnx``: x [B,T,5] -> y [B,T,8]; the GRU is a
                    Loop over time, no state inputs: only the seq and batch rows
keras_lstm_states   tf2onnx ``lstm_with_states.onnx`` (Keras LSTM with return_state) with
                    state *inputs* h0/c0 [B,8] added (see ``keras_with_state_inputs``)
==================  ========================================================================

Rows (``ROWS``: T, B), each timed for lstminfer and onnxruntime with one thread, and with two
(lstminfer ``threads=2``, onnxruntime ``intra_op_num_threads=2``):

* ``stream``: one step, T=1, B=1. lstminfer: ``Stream.step(x1)``; onnxruntime:
  ``run(None, feeds)`` with the state outputs fed back as the state inputs.
* ``run``: the same feedback loop for both, ``lstminfer.load(path)`` standing in for
  the ``InferenceSession`` (``Model.run``, the drop-in path).
* ``named``: that loop as onnxruntime's tutorials write it, every name asked of the session on
  every call (``get_inputs()``, ``get_outputs()``, ``run([names], {name: value})``).
* ``seq``: one sequence, T=200, B=1, zero initial states; ``run(None, feeds)``.
* ``batch``: T=100, B=32, zero initial states; ``run(None, feeds)``.
* ``pool``: 64 streams, one frame each. lstminfer: one ``StreamPool.step({sid: x1})``;
  onnxruntime: one run at batch 64, T=1, with the state fed back.

``check(model, row)`` compares lstminfer with onnxruntime on the row's inputs
(``ATOL`` + ``RTOL`` * |onnxruntime|); the benchmark asserts it once per model and row,
outside the timing.
"""
from __future__ import annotations

import contextlib
import functools
import io
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KERAS_DIR = ROOT / "tests" / "data" / "keras"

ROWS = {"stream": (1, 1), "run": (1, 1), "named": (1, 1), "seq": (200, 1), "batch": (100, 32),
        "pool": (1, 64)}  # (T, B)
STATE_ROWS = ("stream", "run", "named", "pool")  # need state fed back: only models with state inputs
ATOL = RTOL = 1e-5  # |lstminfer - onnxruntime| <= ATOL + RTOL * |onnxruntime|, as tests/test_bundled_models.py:
# adding_lstm's cell state reaches ~47, where float32's spacing is 3.8e-6 and an atol of 1e-5 is ~3 ulp
CHECK_STEPS = 3  # stepped rows: steps compared (the state fed back between them)
OPSET = 17
SEED = 0  # torch.manual_seed of the exported PyTorch models
PEERS = ("ort-1t", "ort-2t", "lstminfer", "lstminfer-2t")  # -2t: two intra-op threads / threads=2
BASELINE = "ort-1t"


@dataclass(frozen=True)
class WholeModel:
    name: str
    build: Callable[[Path], str]  # cache dir -> path of the .onnx file
    stateful: bool = True  # has state inputs (h0[, c0]) paired with outputs[1:]
    vocab: int | None = None  # token-id input (int64 in [0, vocab)) instead of float features

    @property
    def rows(self) -> tuple[str, ...]:
        return tuple(r for r in ROWS if self.stateful or r not in STATE_ROWS)


# ------------------------------------------------------------- builders --

def _bundled(name: str) -> Callable[[Path], str]:
    def build(_cache: Path) -> str:
        import lstminfer.models

        return lstminfer.models.path(name)

    return build


def _tests_on_path() -> None:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def _torch_export(module, args: tuple, input_names, output_names, axes, path: Path) -> str:
    import torch

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes={n: dict(a) for n, a in axes.items()})
    return str(path)


def build_torch_lstm2(cache: Path) -> str:
    """2-layer nn.LSTM(40, 256, batch_first) + Linear(256, 40) head, state in and out.

    The recurrent part is ``tests/torch_models.RecurrentSpec`` (the repo's seeded
    PyTorch zoo, its axes and input names); the head is added around it here.
    """
    import torch
    from torch import nn

    _tests_on_path()
    from torch_models import RecurrentSpec

    spec = RecurrentSpec("LSTM", num_layers=2, batch_first=True, state_io=True,
                         input_size=40, hidden_size=256, seed=SEED)

    class WithHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = spec.build()  # torch.manual_seed(SEED) first, then the LSTM
            self.head = nn.Linear(spec.hidden_size, spec.input_size)

        def forward(self, x, h0, c0):
            y, h_n, c_n = self.body(x, h0, c0)
            return self.head(y), h_n, c_n

    module = WithHead().eval()
    feeds = spec.make_inputs(np.random.default_rng(0), 3, 7)
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    return _torch_export(module, args, spec.input_names, spec.output_names, spec.axes(),
                         cache / "torch_lstm2_h256.onnx")


CLASSIFIER_VOCAB = 1000


def build_torch_classifier(cache: Path) -> str:
    """Embedding(1000, 64) + LSTM(64, 128, batch_first) + Linear(128, 5) on every step.

    Per-step logits (not only the last step's, as ``torch_models.ClassifierSpec`` has),
    so that it streams; explicit state in and out.
    """
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(CLASSIFIER_VOCAB, 64)
            self.lstm = nn.LSTM(64, 128, batch_first=True)
            self.head = nn.Linear(128, 5)

        def forward(self, tokens, h0, c0):
            y, (h_n, c_n) = self.lstm(self.embedding(tokens), (h0, c0))
            return self.head(y), h_n, c_n

    torch.manual_seed(SEED)
    module = Classifier().eval()
    args = (torch.zeros((3, 7), dtype=torch.int64), torch.zeros((1, 3, 128)), torch.zeros((1, 3, 128)))
    axes = {"tokens": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"},
            "h0": {1: "batch"}, "c0": {1: "batch"}, "h_n": {1: "batch"}, "c_n": {1: "batch"}}
    return _torch_export(module, args, ("tokens", "h0", "c0"), ("logits", "h_n", "c_n"), axes,
                         cache / "torch_classifier.onnx")


def _keras_fixture(name: str) -> Callable[[Path], str]:
    return lambda _cache: str(KERAS_DIR / f"{name}.onnx")


def keras_with_state_inputs(cache: Path) -> str:
    """``lstm_with_states.onnx`` with the LSTM's initial state as model inputs h0, c0 [B, 8].

    No tf2onnx fixture has state *inputs*: ``lstm_with_states`` returns (sequence, h, c)
    but starts from zeros built inside the graph (Shape/Slice/Concat/Expand -> Unsqueeze ->
    LSTM initial_h and initial_c), so onnxruntime cannot be handed a state back.
    Here the zeros are replaced by two inputs in Keras' state layout [batch, units],
    unsqueezed into the LSTM node as tf2onnx does for ``LSTM(...)(x, initial_state=[h, c])``;
    the dead zeros chain is removed. Outputs unchanged: sequence, h [B, 8], c [B, 8].
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(KERAS_DIR / "lstm_with_states.onnx"))
    graph = model.graph
    lstm = next(n for n in graph.node if n.op_type == "LSTM")
    producer = {o: n for n in graph.node for o in n.output}
    unsqueeze = producer[lstm.input[5]]
    assert unsqueeze.op_type == "Unsqueeze" and lstm.input[6] == lstm.input[5], "fixture changed"
    units = lstm.attribute[[a.name for a in lstm.attribute].index("hidden_size")].i
    axes = unsqueeze.input[1]
    new_nodes = [helper.make_node("Unsqueeze", [s, axes], [f"{s}_unsqueezed"], name=f"{s}_unsqueeze")
                 for s in ("h0", "c0")]
    lstm.input[5], lstm.input[6] = "h0_unsqueezed", "c0_unsqueezed"
    index = list(graph.node).index(lstm)
    for k, node in enumerate(new_nodes):
        graph.node.insert(index + k, node)
    for s in ("h0", "c0"):
        graph.input.append(helper.make_tensor_value_info(s, TensorProto.FLOAT, ["batch", units]))
    # Drop what no longer reaches an output (the zeros chain), then unused initializers.
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    onnx.checker.check_model(model, full_check=True)
    path = cache / "keras_lstm_with_state_inputs.onnx"
    onnx.save(model, str(path))
    return str(path)


MODELS = {m.name: m for m in (
    WholeModel("adding_lstm", _bundled("adding_lstm")),
    WholeModel("forecast_lstm", _bundled("forecast_lstm")),
    WholeModel("forecast_gru", _bundled("forecast_gru")),
    WholeModel("torch_lstm2_h256", build_torch_lstm2),
    WholeModel("torch_classifier", build_torch_classifier, vocab=CLASSIFIER_VOCAB),
    # tf2onnx Keras GRU: no state inputs (and a Loop, not a GRU op), so no stepped rows.
    WholeModel("keras_gru", _keras_fixture("gru_reset_after_seq"), stateful=False),
    # The Keras model with state for the stepped rows (see keras_with_state_inputs).
    WholeModel("keras_lstm_states", keras_with_state_inputs),
)}


@functools.lru_cache(maxsize=None)
def model_path(name: str, cache_dir: str | None = None) -> str:
    """The model's .onnx file, built once per process into ``cache_dir`` (default: a temp dir)."""
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="lstminfer-whole-"))
    cache.mkdir(parents=True, exist_ok=True)
    return MODELS[name].build(cache)


# --------------------------------------------------------------- inputs --

@dataclass(frozen=True)
class Signature:
    data: str  # the data input: [batch, time, F] float32 or [batch, time] int64 tokens
    data_shape: tuple  # its dims, symbolic ones as None
    data_dtype: type
    states: tuple[tuple[str, tuple], ...]  # (name, dims with None for batch), paired with outputs[1:]


@functools.lru_cache(maxsize=None)
def signature(path: str) -> Signature:
    session = ort_session(path)
    inputs = session.get_inputs()
    dims = lambda arg: tuple(d if isinstance(d, int) else None for d in arg.shape)  # noqa: E731
    data = inputs[0]
    dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64}[data.type]
    shape = dims(data)
    assert shape[0] is None and shape[1] is None, f"{path}: {data.name} is not [batch, time, ...]"
    states = tuple((i.name, dims(i)) for i in inputs[1:])
    for name, d in states:
        assert d.count(None) == 1, f"{path}: state {name} has no single batch axis"
    return Signature(data.name, shape, dtype, states)


def data_input(model: WholeModel, sig: Signature, rng: np.random.Generator, T: int, B: int) -> np.ndarray:
    if model.vocab is not None:
        return rng.integers(0, model.vocab, size=(B, T), dtype=np.int64)
    return rng.standard_normal((B, T) + tuple(sig.data_shape[2:]), dtype=np.float32)


def zero_states(sig: Signature, B: int) -> dict[str, np.ndarray]:
    return {name: np.zeros(tuple(B if d is None else d for d in dims), np.float32) for name, dims in sig.states}


def row_feeds(model: WholeModel, path: str, row: str, seed: int = 1) -> dict[str, np.ndarray]:
    """The row's feeds: data (seeded) and zero initial states."""
    T, B = ROWS[row]
    sig = signature(path)
    feeds = {sig.data: data_input(model, sig, np.random.default_rng(seed), T, B)}
    feeds.update(zero_states(sig, B))
    return feeds


# -------------------------------------------------------------- runners --

def ort_session(path: str, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def load_lstminfer(path: str, threads: int = 1):
    import lstminfer

    return lstminfer.load(path, threads=threads)


def feedback_loop(session, feeds: dict[str, np.ndarray], state_names: list[str]):
    """One ``run`` per call with the state outputs (outputs[1:]) fed back as the state inputs:
    the same code for an onnxruntime session and an lstminfer model."""
    feeds = dict(feeds)

    def step():
        out = session.run(None, feeds)
        for name, value in zip(state_names, out[1:]):
            feeds[name] = value
        return out

    return step


def named_feedback_loop(session, feeds: dict[str, np.ndarray]):
    """``feedback_loop`` with every name asked of the session on every call, as onnxruntime's
    tutorials write it: inputs[1:] take outputs[1:]."""
    feeds = dict(feeds)

    def step():
        inputs = session.get_inputs()
        out = session.run([o.name for o in session.get_outputs()], {i.name: feeds[i.name] for i in inputs})
        for arg, value in zip(inputs[1:], out[1:]):
            feeds[arg.name] = value
        return out

    return step


def make_runner(peer: str, model: WholeModel, row: str, cache_dir: str | None = None):
    """A zero-argument callable doing one timed unit of work of ``row`` for ``peer``."""
    path = model_path(model.name, cache_dir)
    feeds = row_feeds(model, path, row)
    states = [name for name, _ in signature(path).states]
    data = signature(path).data
    if peer in ("ort-1t", "ort-2t"):
        session = ort_session(path, threads=2 if peer == "ort-2t" else 1)
    elif peer in ("lstminfer", "lstminfer-2t"):
        session = load_lstminfer(path, threads=2 if peer == "lstminfer-2t" else 1)
        if row == "stream":
            stream = session.stream()
            x1 = feeds[data]
            return lambda: stream.step(x1)
        if row == "pool":
            x = feeds[data]
            pool = session.stream_pool(ROWS["pool"][1])
            frames = {pool.open(): x[i:i + 1] for i in range(x.shape[0])}
            return lambda: pool.step(frames)
    else:
        raise ValueError(f"unknown peer {peer!r}")
    if row == "named":
        return named_feedback_loop(session, feeds)
    if row in STATE_ROWS:
        return feedback_loop(session, feeds, states)
    return lambda: session.run(None, feeds)


def check(model: WholeModel, row: str, cache_dir: str | None = None) -> float:
    """Max |lstminfer - onnxruntime| over the row's outputs (``CHECK_STEPS`` steps for the stepped
    rows, the state fed back); raises AssertionError where it exceeds ``ATOL + RTOL * |onnxruntime|``."""
    path = model_path(model.name, cache_dir)
    feeds = row_feeds(model, path, row)
    states = [name for name, _ in signature(path).states]
    data = signature(path).data
    session, ours = ort_session(path), load_lstminfer(path)
    worst = 0.0

    def compare(what: str, got, want) -> None:
        nonlocal worst
        got = np.asarray(got)
        assert got.shape == want.shape, f"{model.name} {row} {what}: shape {got.shape} != onnxruntime {want.shape}"
        assert got.dtype == want.dtype, f"{model.name} {row} {what}: dtype {got.dtype} != onnxruntime {want.dtype}"
        if not want.size:
            return
        err = np.abs(got.astype(np.float64) - want)
        bound = ATOL + RTOL * np.abs(want.astype(np.float64))
        k = int(np.argmax(err - bound))
        assert err.flat[k] <= bound.flat[k], (
            f"{model.name} {row} {what}: |lstminfer - onnxruntime| = {err.flat[k]:.3g} > {bound.flat[k]:.3g} "
            f"(atol {ATOL} + rtol {RTOL} * |{want.flat[k]:.4g}|)")
        worst = max(worst, float(err.max()))

    if row not in STATE_ROWS:
        want = session.run(None, feeds)
        got = ours.run(None, feeds)
        assert len(got) == len(want), f"{model.name} {row}: {len(got)} outputs, onnxruntime {len(want)}"
        for k, (g, w) in enumerate(zip(got, want)):
            compare(f"output {k}", g, w)
        return worst

    ort_step = feedback_loop(session, feeds, states)
    if row in ("run", "named"):
        our_step = feedback_loop(ours, feeds, states) if row == "run" else named_feedback_loop(ours, feeds)
        for t in range(CHECK_STEPS):
            want, got = ort_step(), our_step()
            assert len(got) == len(want), f"{model.name} {row}: {len(got)} outputs, onnxruntime {len(want)}"
            for k, (g, w) in enumerate(zip(got, want)):
                compare(f"step {t} output {k}", g, w)
    elif row == "stream":
        stream = ours.stream()
        for t in range(CHECK_STEPS):
            want = ort_step()[0]
            compare(f"step {t} y", stream.step(feeds[data]), want)
    elif row == "pool":
        x = feeds[data]
        pool = ours.stream_pool(ROWS["pool"][1])
        sids = [pool.open() for _ in range(x.shape[0])]
        frames = {sid: x[i:i + 1] for i, sid in enumerate(sids)}
        for t in range(CHECK_STEPS):
            want = ort_step()[0]
            out = pool.step(frames)
            for i, sid in enumerate(sids):
                compare(f"step {t} stream {i} y", out[sid], want[i:i + 1])
    return worst
