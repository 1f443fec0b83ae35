"""The models and the peers every benchmark compares, built the same way for all.

A *peer* is something that runs one recurrent layer: onnxruntime (1 thread:
the baseline; default threads; IOBinding), PyTorch (1 thread), lstminfer's
reference and its Numba kernel (through ``lstminfer.load`` when the backend
is wired, else the kernel called directly). ``make_runner(peer, case)``
returns a zero-argument callable doing one timed unit of work:

* ``stream``: one step (T=1, B=1) with the state fed back from the previous
  call, as a streaming application would;
* ``seq``/``batch``: one whole sequence from a zero state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GATES = {"LSTM": 4, "GRU": 3}
CONFIGS = {"stream": (1, 1), "seq": (256, 1), "batch": (128, 64)}  # (T, B)
HIDDEN_SIZES = (64, 128, 256, 512)
OPSET = 14


@dataclass(frozen=True)
class Case:
    op: str
    hidden: int
    config: str

    @property
    def T(self) -> int:
        return CONFIGS[self.config][0]

    @property
    def B(self) -> int:
        return CONFIGS[self.config][1]

    @property
    def flops(self) -> int:
        """2 * G * H * (I + H) * T * B with I = H: the multiply-adds of both products."""
        H = self.hidden
        return 2 * GATES[self.op] * H * (H + H) * self.T * self.B

    @property
    def name(self) -> str:
        return f"{self.op}-H{self.hidden}-{self.config}"


def weights(op: str, hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    G, H = GATES[op], hidden
    rng = np.random.default_rng(seed)
    scale = np.float32(1 / np.sqrt(H))
    return {
        "W": (rng.uniform(-1, 1, (1, G * H, H)).astype(np.float32) * scale),
        "R": (rng.uniform(-1, 1, (1, G * H, H)).astype(np.float32) * scale),
        "B": (rng.uniform(-1, 1, (1, 2 * G * H)).astype(np.float32) * scale),
    }


def onnx_model(op: str, hidden: int):
    """One LSTM/GRU node, weights as initializers, X/h0(/c0) as inputs, all outputs."""
    from onnx import TensorProto, helper, numpy_helper

    H = hidden
    w = weights(op, hidden)
    state_inputs = ["h0", "c0"] if op == "LSTM" else ["h0"]
    node = helper.make_node(op, ["X", "W", "R", "B", "", *state_inputs],
                            ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"], hidden_size=H)
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", H])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "B", H]) for n in state_inputs]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.output]
    graph = helper.make_graph([node], f"{op.lower()}_h{H}", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def feeds(case: Case, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"X": rng.standard_normal((case.T, case.B, case.hidden)).astype(np.float32),
           "h0": np.zeros((1, case.B, case.hidden), np.float32)}
    if case.op == "LSTM":
        out["c0"] = np.zeros((1, case.B, case.hidden), np.float32)
    return out


# ------------------------------------------------------------------ peers --

def _stateful(run_once, case: Case, start: dict[str, np.ndarray]):
    """Wrap ``run_once(feeds) -> (Y, Y_h[, Y_c])`` so streaming feeds its state back."""
    current = dict(start)
    state_names = ["h0", "c0"] if case.op == "LSTM" else ["h0"]
    if case.config != "stream":
        return lambda: run_once(current)

    def step():
        outputs = run_once(current)
        for name, value in zip(state_names, outputs[1:]):
            current[name] = value
        return outputs

    return step


def _ort_session(case: Case, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_model(case.op, case.hidden).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def ort_runner(case: Case, threads: int | None):
    session = _ort_session(case, threads)
    return _stateful(lambda f: session.run(None, f), case, feeds(case))


def ort_iobinding_runner(case: Case):
    session = _ort_session(case, 1)
    names = [o.name for o in session.get_outputs()]

    def run_once(f):
        binding = session.io_binding()
        for name, value in f.items():
            binding.bind_cpu_input(name, value)
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    return _stateful(run_once, case, feeds(case))


def torch_runner(case: Case):
    import torch

    torch.set_num_threads(1)
    H = case.hidden
    layer = (torch.nn.LSTM if case.op == "LSTM" else torch.nn.GRU)(H, H).eval()
    f = feeds(case)
    x = torch.from_numpy(f["X"])
    state = [torch.from_numpy(f["h0"])] + ([torch.from_numpy(f["c0"])] if case.op == "LSTM" else [])

    def run():
        with torch.inference_mode():
            y, new = layer(x, tuple(state) if case.op == "LSTM" else state[0])
        if case.config == "stream":
            state[:] = list(new) if case.op == "LSTM" else [new]
        return y

    return run


def lstminfer_runner(case: Case, backend: str, threads: int = 1):
    """Through ``lstminfer.load`` (the real path), with ``threads`` passed as a load option."""
    import lstminfer

    options = {"threads": threads} if threads != 1 else {}
    model = lstminfer.load(onnx_model(case.op, case.hidden), backend=backend, **options)
    return _stateful(lambda f: model.run(None, f), case, feeds(case))


PEERS = ("ort-1t", "ort-default", "ort-iobinding", "torch-1t", "lstminfer-reference",
         "lstminfer-cython", "lstminfer-cython-2t", "lstminfer-numba", "lstminfer-numba-2t")


def make_runner(peer: str, case: Case):
    if peer == "ort-1t":
        return ort_runner(case, 1)
    if peer == "ort-default":
        return ort_runner(case, None)
    if peer == "ort-iobinding":
        return ort_iobinding_runner(case)
    if peer == "torch-1t":
        return torch_runner(case)
    if peer.startswith("lstminfer-"):
        backend = peer.split("-")[1]
        return lstminfer_runner(case, backend, 2 if peer.endswith("-2t") else 1)
    raise ValueError(f"unknown peer {peer}")


def measure(benchmark, run, case: Case, peer: str) -> None:
    """Time ``run`` for ``case`` with pytest-benchmark, tagged so that report.py can group peers.

    The first call stays outside the timing (compile/warm caches, like a served model); long
    cases get a fixed number of rounds.
    """
    run()
    benchmark.group = case.name
    benchmark.extra_info.update(op=case.op, hidden=case.hidden, config=case.config, peer=peer,
                                T=case.T, B=case.B, flops=case.flops)
    if case.config == "batch" or (case.config == "seq" and case.hidden >= 256):
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    else:
        time_short_calls(benchmark, run)


def time_short_calls(benchmark, run, round_seconds: float = 3e-3, rounds: int = 60) -> None:
    """Microsecond-scale calls: each round times a batch of calls lasting ~``round_seconds``
    (the timer's own cost and scheduler jitter amortized, the same for every peer), and the
    report takes the median round, per call."""
    import time

    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    iterations = max(1, min(2000, int(round_seconds / max(once, 1e-7))))
    benchmark.pedantic(run, rounds=rounds, iterations=iterations, warmup_rounds=2)
