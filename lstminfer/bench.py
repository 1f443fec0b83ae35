"""``lstminfer bench MODEL``: the model's per-call latency in four cases, against onnxruntime.

1. one frame through ``Model.stream()`` (onnxruntime: ``run`` at T=1 with the state fed back,
   its way of streaming);
2. ``Model.run`` at T=1 with the state outputs fed back as state inputs (h_n -> h0);
3. one sequence of ``--seq-len`` steps, batch 1;
4. a ``StreamPool`` of ``--pool`` streams stepped one frame each (onnxruntime: one run of
   batch ``--pool`` at T=1 with the state fed back).

Inputs are generated from the model's input types (``sample_inputs``). Each figure is the median
of as many calls as fit in ``--duration`` seconds (after one warm-up call), so the whole bench
takes a few seconds. A case the model cannot do (not streamable, no state inputs) says why.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from .errors import NotStreamableError
from .model_check import onnxruntime_session, state_feedback
from .sample_inputs import sample_feeds

MAX_CALLS = 100_000
_NO_FEEDBACK = "onnxruntime: no state inputs to feed back"


@dataclass
class BenchRow:
    case: str  # "stream_step" | "run_t1" | "sequence" | "pool"
    label: str
    lstminfer_us: float | None
    onnxruntime_us: float | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """onnxruntime time / lstminfer time (above 1: lstminfer is faster)."""
        if self.lstminfer_us and self.onnxruntime_us:
            return self.onnxruntime_us / self.lstminfer_us
        return None


@dataclass
class BenchResult:
    model: str
    backend: str
    threads: int
    onnxruntime: str | None  # its version, or why it does not run here
    rows: list[BenchRow]
    remarks: list[str]  # what the rows' notes refer to (why the model does not stream)

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "threads": self.threads,
                "onnxruntime": self.onnxruntime,
                "rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows], "remarks": self.remarks}

    def table(self) -> str:
        head = f"lstminfer bench {self.model} (backend {self.backend}, threads {self.threads}; " \
               f"onnxruntime {self.onnxruntime or '-'})"
        lines = [head, f"{'case':<36} {'lstminfer':>12} {'onnxruntime':>12} {'ratio':>7}"]
        for r in self.rows:
            ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
            lines.append(f"{r.label:<36} {_us(r.lstminfer_us):>12} {_us(r.onnxruntime_us):>12} {ratio:>7}"
                         + (f"  ({r.note})" if r.note else ""))
        lines.append("ratio: onnxruntime time / lstminfer time, medians (above 1: lstminfer is faster)")
        lines += self.remarks
        return "\n".join(lines)


def bench(model, path: str, *, threads: int = 1, pool: int = 16, seq_len: int = 100,
          duration: float = 0.25) -> BenchResult:
    """Time the four cases of the module doc on ``model`` (loaded from ``path`` with ``threads``)."""
    session, version = onnxruntime_session(path, threads)
    feedback = state_feedback(model)
    remarks: list[str] = []
    try:
        model.stream()
        streamable, why = True, ""
    except NotStreamableError as e:
        streamable, why = False, "not streamable"
        remarks = [f"not streamable: {e}"]
    rows = [
        _stream_row(model, session, feedback, streamable, why, duration),
        _run_row(model, feedback, duration, session, batch=1, case="run_t1",
                 label="run, T=1, state fed back"),
        _sequence_row(model, session, seq_len, duration),
        _pool_row(model, session, feedback, streamable, why, pool, duration),
    ]
    if session is None:
        remarks.append(version)
    return BenchResult(path, model.backend, threads, version if session is not None else None, rows, remarks)


def _stream_row(model, session, feedback, streamable, why, duration) -> BenchRow:
    label = "stream step, 1 frame"
    if not streamable:
        return BenchRow("stream_step", label, None, None, why)
    stream, frame = model.stream(), _frame(model, batch=1)
    ours = _median_us(lambda: stream.step(frame), duration)
    theirs = _fed_back_us(session, sample_feeds(model, time=1, batch=1), feedback, duration)
    note = "" if session is None or feedback else _NO_FEEDBACK
    return BenchRow("stream_step", label, ours, theirs, note)


def _run_row(model, feedback, duration, session, *, batch: int, case: str, label: str) -> BenchRow:
    if not feedback:
        return BenchRow(case, label, None, None, "no state inputs paired with state outputs")
    feeds = sample_feeds(model, time=1, batch=batch)
    ours = _fed_back_us(model, dict(feeds), feedback, duration)
    theirs = _fed_back_us(session, dict(feeds), feedback, duration)
    return BenchRow(case, label, ours, theirs)


def _sequence_row(model, session, seq_len: int, duration) -> BenchRow:
    feeds = sample_feeds(model, time=seq_len, batch=1)
    ours = _median_us(lambda: model.run(None, feeds), duration)
    theirs = _median_us(lambda: session.run(None, feeds), duration) if session is not None else None
    return BenchRow("sequence", f"sequence, T={seq_len}, batch 1", ours, theirs)


def _pool_row(model, session, feedback, streamable, why, size: int, duration) -> BenchRow:
    label = f"pool of {size} streams, 1 frame each"
    if not streamable:
        return BenchRow("pool", label, None, None, why)
    stream_pool = model.stream_pool(max_streams=size)
    frame = _frame(model, batch=1)
    frames = {stream_pool.open(): frame for _ in range(size)}
    ours = _median_us(lambda: stream_pool.step(frames), duration)
    theirs = _fed_back_us(session, sample_feeds(model, time=1, batch=size), feedback, duration)
    note = "onnxruntime: one run of the batch, state fed back" if theirs is not None else \
        _NO_FEEDBACK if session is not None else ""
    return BenchRow("pool", label, ours, theirs, note)


def _frame(model, batch: int):
    """One time step of the data input(s), as ``Stream.step`` takes it."""
    program = model._stream_program()
    feeds = sample_feeds(model, time=1, batch=batch)
    data = {vi.name: feeds[vi.name] for vi in program.data_inputs}
    return next(iter(data.values())) if len(data) == 1 else data


def _fed_back_us(runner, feeds: dict, feedback: dict[str, str], duration: float) -> float | None:
    """Median µs of ``runner.run`` at T=1 with each state output fed back into its state input."""
    if runner is None or not feedback:
        return None
    names = [o.name for o in runner.get_outputs()]
    index = {state_in: names.index(state_out) for state_in, state_out in feedback.items()}

    def step():
        outputs = runner.run(None, feeds)
        for state_in, i in index.items():
            feeds[state_in] = outputs[i]

    return _median_us(step, duration)


def _median_us(fn: Callable[[], Any], duration: float) -> float:
    fn()  # warm-up: first-call compilation, caches
    times, deadline = [], time.perf_counter() + duration
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < MAX_CALLS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(times))


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} us" if value < 1e3 else f"{value / 1e3:.2f} ms"
