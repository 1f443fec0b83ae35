"""A zoo of small PyTorch recurrent models and their ONNX export (torch==2.13).

Used by ``test_pytorch_models.py`` and benchmarks: each spec is a frozen,
hashable description that builds a seeded ``torch.nn.Module``, makes random
feeds for any (batch, time) and exports to ONNX bytes (cached per session).

Exporters: the TorchScript exporter (``dynamo=False``) at opsets 14 and 17,
and the dynamo exporter (``dynamo=True``, onnxscript optimizer on) at 18.

ONNX ops each exporter emits (``onnx_op_types``, union over the models in
``test_pytorch_models.py``; "glue" = Concat, Slice, Squeeze, Transpose, Reshape)::

    model               torchscript 14 and 17 (same ops)     dynamo 18
    ------------------  -----------------------------------  ---------------------------------
    nn.LSTM / nn.GRU    LSTM|GRU + glue; zero initial        LSTM|GRU + Concat, Slice,
                        states add Shape, Gather, Unsqueeze, Transpose, Reshape, Shape, Mul;
                        Constant, ConstantOfShape            zero initial states add Expand
    nn.RNN tanh / relu  RNN + the same as above              no RNN op: unrolled over the
                                                             fixed T into MatMul, Add,
                                                             Tanh|Relu, Slice, Squeeze,
                                                             Unsqueeze, Concat, Transpose
                                                             (+ Shape, Expand for zero states)
    classifier          Gather, LSTM, Gemm, Softmax + glue,  Gather, LSTM, Gemm, Softmax,
      (Embedding+LSTM     Shape, Unsqueeze, Constant,        Concat, Slice, Transpose,
      +Linear+Softmax)    ConstantOfShape                    Reshape, Shape, Mul, Expand

No exporter emits Loop, Scan, If or any other subgraph for these models;
``test_exported_ops_are_the_documented_ones`` checks that and which
recurrent op (or, for dynamo nn.RNN, MatMul + activation) each one uses.

Limitations of torch 2.13 that shape the tests:

* dynamo: ``torch.export`` specializes the time axis of nn.LSTM/GRU/RNN.
  ``Dim.DYNAMIC`` (and ``dynamic_axes``) on it fails with "tracing inferred
  a static shape of 7 for dimension inputs['x'].shape[0]"; a named
  ``Dim("time")`` is specialized silently, sometimes leaving the graph input
  symbolic while a Reshape keeps the constant 7, so any other T fails in
  onnxruntime too.  Dynamo exports therefore mark only the batch axis
  dynamic, and the time length is fixed at export (``example_time``).
  Batch_first models are the exception: ``Dim.DYNAMIC`` on their time axis
  (axis 1) holds (``export(..., dynamic_time=True)``), which streaming needs;
  after some other nn.LSTM exports in one process it fails the same way, so
  such an export is redone in a fresh process.
* dynamo: ``fc(h_n[-1])`` does not export with a dynamic time axis.
* dynamo: nn.RNN has no ONNX RNN translation; it is unrolled per time step.
* dynamo: the first nn.GRU export in a process specializes the batch axis
  too (input shape [7, 3, 5] although ``Dim("batch")`` was given); the same
  export repeated keeps it dynamic, so ``export`` checks and retries once.
* dynamo: exporting nn.GRU with a T=1000 example takes minutes (tracing
  walks every step), so T>=1000 is tested on TorchScript exports only.
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

# (exporter, opset) pairs the tests cover.
EXPORTERS = (("torchscript", 14), ("torchscript", 17), ("dynamo", 18))

KINDS = {
    "LSTM": (nn.LSTM, {}),
    "GRU": (nn.GRU, {}),
    "RNN_TANH": (nn.RNN, {"nonlinearity": "tanh"}),
    "RNN_RELU": (nn.RNN, {"nonlinearity": "relu"}),
}

BATCH, TIME = "batch", "time"


@dataclass(frozen=True)
class RecurrentSpec:
    """One nn.LSTM/GRU/RNN layer stack.

    ``state_io`` False: ``x -> y``.  True, the streaming form:
    ``(x, h0[, c0]) -> (y, h_n[, c_n])``.
    """

    kind: str
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    state_io: bool = False
    input_size: int = 5
    hidden_size: int = 8
    seed: int = 0

    @property
    def name(self) -> str:
        parts = [self.kind.lower(), f"L{self.num_layers}", f"I{self.input_size}H{self.hidden_size}"]
        parts += ["bi"] if self.bidirectional else []
        parts += ["batch_first"] if self.batch_first else []
        parts += [] if self.bias else ["nobias"]
        parts += ["state_io"] if self.state_io else []
        return "-".join(parts)

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h0", "c0") if self.kind == "LSTM" else ("h0",)

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("x",) + (self.state_names if self.state_io else ())

    @property
    def output_names(self) -> tuple[str, ...]:
        if not self.state_io:
            return ("y",)
        return ("y", "h_n", "c_n") if self.kind == "LSTM" else ("y", "h_n")

    def axes(self) -> dict[str, dict[int, str]]:
        """Batch/time axes of every input and output, by name."""
        seq = {0: BATCH, 1: TIME} if self.batch_first else {0: TIME, 1: BATCH}
        state = {1: BATCH}  # h/c are (layers*dirs, batch, hidden) even when batch_first
        out = {"x": seq, "y": seq}
        for s in self.state_names:
            out[s] = state
        out["h_n"] = out["c_n"] = state
        return {k: v for k, v in out.items() if k in self.input_names + self.output_names}

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        cls, extra = KINDS[self.kind]
        rnn = cls(self.input_size, self.hidden_size, num_layers=self.num_layers, bias=self.bias,
                  batch_first=self.batch_first, bidirectional=self.bidirectional, **extra)
        return _RecurrentModule(rnn, self.kind == "LSTM", self.state_io).eval()

    def make_inputs(self, rng: np.random.Generator, batch: int, time: int) -> dict[str, np.ndarray]:
        shape = (batch, time, self.input_size) if self.batch_first else (time, batch, self.input_size)
        feeds = {"x": rng.standard_normal(shape, dtype=np.float32)}
        if self.state_io:
            dirs = 2 if self.bidirectional else 1
            for s in self.state_names:
                feeds[s] = rng.standard_normal((self.num_layers * dirs, batch, self.hidden_size),
                                               dtype=np.float32)
        return feeds


class _RecurrentModule(nn.Module):
    def __init__(self, rnn: nn.Module, is_lstm: bool, state_io: bool):
        super().__init__()
        self.rnn, self.is_lstm, self.state_io = rnn, is_lstm, state_io

    # Named parameters (not *state): torch.export matches dynamic_shapes to them by name.
    def forward(self, x, h0=None, c0=None):
        if not self.state_io:
            return self.rnn(x)[0]
        if self.is_lstm:
            y, (h_n, c_n) = self.rnn(x, (h0, c0))
            return y, h_n, c_n
        y, h_n = self.rnn(x, h0)
        return y, h_n


@dataclass(frozen=True)
class ClassifierSpec:
    """Embedding + LSTM + Linear + Softmax: int64 tokens (batch, time) -> probs (batch, classes)."""

    vocab: int = 30
    embed: int = 12
    hidden_size: int = 16
    num_layers: int = 2
    bidirectional: bool = False
    classes: int = 5
    seed: int = 0

    @property
    def name(self) -> str:
        bi = "-bi" if self.bidirectional else ""
        return f"classifier-V{self.vocab}E{self.embed}H{self.hidden_size}L{self.num_layers}{bi}"

    input_names = ("tokens",)
    output_names = ("probs",)

    def axes(self) -> dict[str, dict[int, str]]:
        return {"tokens": {0: BATCH, 1: TIME}, "probs": {0: BATCH}}

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return _Classifier(self).eval()

    def make_inputs(self, rng: np.random.Generator, batch: int, time: int) -> dict[str, np.ndarray]:
        return {"tokens": rng.integers(0, self.vocab, size=(batch, time), dtype=np.int64)}


class _Classifier(nn.Module):
    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        self.embedding = nn.Embedding(spec.vocab, spec.embed)
        self.lstm = nn.LSTM(spec.embed, spec.hidden_size, num_layers=spec.num_layers,
                            batch_first=True, bidirectional=spec.bidirectional)
        dirs = 2 if spec.bidirectional else 1
        self.head = nn.Linear(dirs * spec.hidden_size, spec.classes)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, tokens):
        y, _ = self.lstm(self.embedding(tokens))
        return self.softmax(self.head(y[:, -1]))


@dataclass(frozen=True)
class LastStepSpec:
    """The usual classifier/regressor: nn.LSTM/GRU then Linear on the last step, ``x -> out``.

    ``pick`` "y": ``fc(y[:, -1])`` (batch_first) or ``fc(y[-1])``; "h_n": ``fc(h_n[-1])``.
    """

    kind: str = "LSTM"
    pick: str = "y"
    batch_first: bool = True
    num_layers: int = 2
    input_size: int = 5
    hidden_size: int = 8
    classes: int = 3
    seed: int = 0

    @property
    def name(self) -> str:
        return f"last-{self.kind.lower()}-{self.pick}-L{self.num_layers}" + ("-batch_first" if self.batch_first else "")

    input_names = ("x",)
    output_names = ("out",)

    def axes(self) -> dict[str, dict[int, str]]:
        return {"x": {0: BATCH, 1: TIME} if self.batch_first else {0: TIME, 1: BATCH}, "out": {0: BATCH}}

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return _LastStep(self).eval()

    def make_inputs(self, rng: np.random.Generator, batch: int, time: int) -> dict[str, np.ndarray]:
        shape = (batch, time, self.input_size) if self.batch_first else (time, batch, self.input_size)
        return {"x": rng.standard_normal(shape, dtype=np.float32)}


class _LastStep(nn.Module):
    def __init__(self, spec: LastStepSpec):
        super().__init__()
        cls, extra = KINDS[spec.kind]
        self.rnn = cls(spec.input_size, spec.hidden_size, num_layers=spec.num_layers, batch_first=spec.batch_first,
                       **extra)
        self.fc = nn.Linear(spec.hidden_size, spec.classes)
        self.pick, self.batch_first = spec.pick, spec.batch_first

    def forward(self, x):
        y, state = self.rnn(x)
        if self.pick == "h_n":
            return self.fc((state[0] if isinstance(state, tuple) else state)[-1])
        return self.fc(y[:, -1] if self.batch_first else y[-1])


@dataclass(frozen=True)
class UpsampledSpec:
    """LSTM, then ``F.interpolate`` over features (ONNX ``Resize``, an op lstminfer lacks), then Linear."""

    seed: int = 0
    name = "upsampled-lstm"
    input_names = ("x",)
    output_names = ("out",)

    def axes(self) -> dict[str, dict[int, str]]:
        return {"x": {0: BATCH, 1: TIME}, "out": {0: BATCH, 1: TIME}}

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return _Upsampled().eval()

    def make_inputs(self, rng: np.random.Generator, batch: int, time: int) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal((batch, time, 5), dtype=np.float32)}


class _Upsampled(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.LSTM(5, 8, batch_first=True), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(nn.functional.interpolate(self.rnn(x)[0], scale_factor=2.0, mode="nearest"))


def torch_outputs(spec, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What the PyTorch module itself computes for ``feeds`` (in output order)."""
    module = _module(spec)
    with torch.no_grad():
        out = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
    out = out if isinstance(out, tuple) else (out,)
    return [t.numpy() for t in out]


@functools.lru_cache(maxsize=None)
def _module(spec) -> nn.Module:
    return spec.build()


def export(spec, exporter: str, opset: int, example_batch: int = 3, example_time: int = 7,
           dynamic_time: bool = False) -> bytes:
    """The spec's module exported to ONNX bytes, cached per arguments.

    torchscript: batch and time axes dynamic (``dynamic_axes``).
    dynamo: batch axis dynamic (``dynamic_shapes``); time fixed to
    ``example_time`` because torch.export specializes it (see module doc).
    ``example_batch`` must be >= 2: torch.export specializes sizes 0 and 1.
    ``dynamic_time`` (dynamo): the time axis dynamic too (``Dim.DYNAMIC``), which torch.export
    keeps for batch_first models (time on axis 1) and refuses for time-first ones.
    """
    # Positional call: lru_cache keys f(a, t=7) and f(a) differently.
    return _export_cached(spec, exporter, opset, example_batch, example_time, dynamic_time)


@functools.lru_cache(maxsize=None)
def _export_cached(spec, exporter: str, opset: int, example_batch: int, example_time: int,
                   dynamic_time: bool = False) -> bytes:
    module = _module(spec)
    feeds = spec.make_inputs(np.random.default_rng(0), example_batch, example_time)
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    axes = spec.axes()
    quiet = contextlib.redirect_stdout(io.StringIO())  # dynamo prints progress lines
    with quiet, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            buf = io.BytesIO()
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset,
                              input_names=list(spec.input_names), output_names=list(spec.output_names),
                              dynamic_axes={n: dict(a) for n, a in axes.items()})
            return buf.getvalue()
        if exporter == "dynamo":
            # The first nn.GRU export in a process comes back with the batch axis
            # specialized (see module doc); the same call again keeps it dynamic.
            for _attempt in range(2):
                try:
                    proto = _dynamo_export(module, args, spec, opset, dynamic_time)
                except Exception:  # torch.onnx's TorchExportError
                    if not dynamic_time:
                        raise
                    # After some other nn.LSTM exports in the same process torch.export infers a
                    # static time length ("tracing inferred a static shape of 7"); a fresh one does not.
                    return _export_in_child(spec, opset, example_batch, example_time)
                if _batch_axes_symbolic(proto, axes):
                    return proto.SerializeToString()
            raise RuntimeError(f"dynamo export of {spec.name} kept a static batch axis twice")
    raise ValueError(f"unknown exporter {exporter!r}; expected 'torchscript' or 'dynamo'")


def _export_in_child(spec, opset: int, example_batch: int, example_time: int) -> bytes:
    """``export(spec, "dynamo", ..., dynamic_time=True)`` in a fresh Python process."""
    import os
    import pickle
    import subprocess
    import sys
    code = ("import pickle, sys; import torch_models as zoo; spec, args = pickle.load(sys.stdin.buffer); "
            "sys.stdout.buffer.write(zoo.export(spec, 'dynamo', *args, dynamic_time=True))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((spec, (opset, example_batch, example_time))),
                          capture_output=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"dynamo export of {spec.name} with a dynamic time axis failed:\n"
                           f"{done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout


def _dynamo_export(module: nn.Module, args: tuple, spec, opset: int, dynamic_time: bool = False) -> onnx.ModelProto:
    batch = torch.export.Dim("batch")
    roles = {BATCH: batch, TIME: torch.export.Dim.DYNAMIC} if dynamic_time else {BATCH: batch}
    shapes = {n: {ax: roles[role] for ax, role in spec.axes()[n].items() if role in roles}
              for n in spec.input_names}
    program = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                input_names=list(spec.input_names),
                                output_names=list(spec.output_names),
                                dynamic_shapes=shapes, verbose=False)
    return program.model_proto


def _batch_axes_symbolic(proto: onnx.ModelProto, axes: dict[str, dict[int, str]]) -> bool:
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        for ax, role in axes.get(value.name, {}).items():
            if role == BATCH and not dims[ax].dim_param:
                return False
    return True


def onnx_op_types(model_bytes: bytes) -> Counter:
    """How many nodes of each op type the model has, nested subgraphs included."""
    counts: Counter = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(onnx.load_from_string(model_bytes).graph)
    return counts
