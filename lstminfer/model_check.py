"""Checks of any model on generated inputs: what ``lstminfer demo --model my.onnx`` runs when the
model has no task of its own.

* lstminfer's outputs against onnxruntime's (when installed), on the same generated inputs
  (``sample_inputs``): max abs diff, tolerance ``ATOL + RTOL * |onnxruntime|``, both latencies;
* for a streamable model: the sequence stepped through ``Model.stream()`` in chunks of
  1, 2, 3, ... steps equals the whole sequence run at once.

Also the pieces ``lstminfer bench`` shares: an onnxruntime session, and which state output
feeds which state input (``state_feedback``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import LstminferError, NotStreamableError
from .listing import brief
from .sample_inputs import sample_feeds

ATOL = RTOL = 1e-5  # float32 rounding over a sequence (as the bundled demo)


@dataclass
class ModelCheck:
    """What ``check_model`` found: the lines it printed and the checks that failed."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, why: str) -> None:
        self.failures.append(why)


def check_model(model, path: str, *, time_steps: int = 16, seed: int = 0,
                report: Callable[[str], None] = print) -> ModelCheck:
    """Run the checks of the module doc on ``model`` (loaded from ``path``); each line goes to ``report``."""
    check = ModelCheck()

    def say(line: str) -> None:
        check.say(line)
        report(line)

    feeds = sample_feeds(model, time=time_steps, batch=1, seed=seed)
    say(f"  generated inputs (seed {seed}): " + brief(_feed_text(n, v) for n, v in feeds.items()))
    try:
        ours = model.run(None, feeds)
    except LstminferError as e:
        say(f"  lstminfer could not run them: {e}")
        check.fail(f"lstminfer failed on the generated inputs: {e}")
        return check
    our_ms = median_ms(lambda: model.run(None, feeds))
    say(f"  lstminfer ({model.backend}): {our_ms:.3f} ms per run (median)")
    _compare_with_onnxruntime(check, say, model, path, feeds, ours)
    _check_streaming(check, say, model, feeds, dict(zip(model.output_names, ours)))
    return check


def _feed_text(name: str, value: np.ndarray) -> str:
    """``x float32 [1, 16, 5]``; integers with their range: ``tokens int64 [1, 16] in 0..29``."""
    text = f"{name} {value.dtype} {list(value.shape)}"
    if value.dtype.kind in "iu" and value.size:
        text += f" in {value.min()}..{value.max()}"
    return text


# -- onnxruntime ------------------------------------------------------------------
def onnxruntime_session(path: str, threads: int = 1):
    """(session, version) on the CPU provider with ``threads`` intra-op threads; (None, why) without it."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime: not installed (pip install onnxruntime to compare outputs and latency)"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]), ort.__version__
    except Exception as e:  # onnxruntime refuses some models lstminfer runs (layout=1, ...)
        return None, f"onnxruntime {ort.__version__} cannot load this model: {_first_line(e)}"


def _compare_with_onnxruntime(check: ModelCheck, say, model, path: str, feeds: dict, ours: list) -> None:
    session, version = onnxruntime_session(path)
    if session is None:
        say(f"  {version}")
        return
    try:
        theirs = session.run(None, feeds)
    except Exception as e:
        say(f"  onnxruntime {version} cannot run the generated inputs: {_first_line(e)}")
        return
    their_ms = median_ms(lambda: session.run(None, feeds))
    say(f"  onnxruntime {version} (1 thread): {their_ms:.3f} ms per run (median)")
    names = [o.name for o in session.get_outputs()]
    ours_by_name = dict(zip(model.output_names, ours))
    mine = [ours_by_name[n] for n in names]
    diff, bad = agreement(mine, theirs, names)
    used = tolerance_used(mine, theirs)
    if bad:
        say(f"  onnxruntime vs lstminfer, {len(names)} output(s): max abs diff {diff:.1e}: {tolerance_text(used)} "
            f"in {brief(bad)}")
        check.fail(f"lstminfer and onnxruntime differ by {diff:.3g} ({brief(bad)})")
    else:
        say(f"  onnxruntime vs lstminfer, {len(names)} output(s): max abs diff {diff:.1e}: {tolerance_text(used)}")


def tolerance_used(got: list, want: list) -> float:
    """The largest |got - want| / (ATOL + RTOL * |want|) over float outputs: at most 1 passes."""
    worst = 0.0
    for a, b in zip(got, want):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape == b.shape and a.dtype.kind == "f" and b.dtype.kind == "f" and a.size:
            with np.errstate(invalid="ignore"):
                ratio = np.abs(a.astype(np.float64) - b) / (ATOL + RTOL * np.abs(b.astype(np.float64)))
            worst = max(worst, float(np.nanmax(ratio)) if not np.all(np.isnan(ratio)) else 0.0)
    return worst


def tolerance_text(used: float) -> str:
    """How the check reads: ``pass (every value within ...; the worst at 40% of its bound)``."""
    bound = f"{ATOL:g} + {RTOL:g} x |onnxruntime value|"
    if used <= 1:
        return f"pass (every value within {bound}; the worst at {100 * used:.0f}% of its bound)"
    return f"FAIL (values outside {bound}, up to {used:.1f}x the bound)"


def agreement(got: list, want: list, names: list[str]) -> tuple[float, list[str]]:
    """Max abs difference over all outputs, and the names of those not within tolerance."""
    diff, bad = 0.0, []
    for name, a, b in zip(names, got, want):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
            bad.append(f"{name} ({a.dtype} {list(a.shape)} vs {b.dtype} {list(b.shape)})")
            continue
        if a.dtype.kind in "fc":
            if a.size:
                diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b))))
            if not np.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True):
                bad.append(name)
        elif a.dtype.kind in "iub":
            if a.size:
                diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
            if not np.array_equal(a, b):
                bad.append(name)
        elif not np.array_equal(a, b):
            bad.append(name)
    return diff, bad


# -- streaming ------------------------------------------------------------------------
def chunk_sizes(total: int) -> list[int]:
    """1, 2, 3, ... cut to sum to ``total``: every chunk length once, single steps included."""
    sizes, n = [], 1
    while sum(sizes) < total:
        sizes.append(min(n, total - sum(sizes)))
        n += 1
    return sizes


def _check_streaming(check: ModelCheck, say, model, feeds: dict, whole: dict) -> None:
    try:
        program = model._stream_program()
    except NotStreamableError as e:
        say(f"  streaming: not streamable ({e}); no chunked check")
        return
    data = [vi.name for vi in program.data_inputs]
    timed = [n for n in data if program.time_axes.get(n) is not None]
    if not timed:
        say("  streaming: no input has a time axis; no chunked check")
        return
    steps = feeds[timed[0]].shape[program.time_axes[timed[0]]]
    sizes = chunk_sizes(steps)
    state_inputs = list(program.pairing.state_inputs)
    stream = model.stream(state={n: feeds[n] for n in state_inputs} if state_inputs else None)
    pieces: dict[str, list] = {n: [] for n in stream.output_names}
    start = 0
    try:
        for size in sizes:
            chunk = {n: _time_slice(feeds[n], program.time_axes.get(n), start, start + size) for n in data}
            out = stream.step(chunk[data[0]] if len(data) == 1 else chunk)
            out = out if isinstance(out, dict) else {stream.output_names[0]: out}
            for name, value in out.items():
                pieces[name].append(np.asarray(value))
            start += size
    except LstminferError as e:
        say(f"  streaming: stepping in chunks failed: {e}")
        check.fail(f"streaming failed: {e}")
        return
    names = list(pieces)
    streamed = [_joined(pieces[n], program.output_time_axes.get(n)) for n in names]
    diff, bad = agreement(streamed, [whole[n] for n in names], names)
    label = f"streaming {steps} steps in chunks of {', '.join(map(str, sizes))} through model.stream()"
    if bad:
        say(f"  {label}: streamed == whole-sequence: NO, max abs diff {diff:.1e} ({brief(bad)})")
        check.fail(f"streamed outputs differ from whole-sequence ones by {diff:.3g} ({brief(bad)})")
    else:
        say(f"  {label}: streamed == whole-sequence: yes, max abs diff {diff:.1e}")


def _time_slice(value: np.ndarray, axis: int | None, start: int, stop: int) -> np.ndarray:
    if axis is None:
        return value
    index = [slice(None)] * value.ndim
    index[axis] = slice(start, stop)
    return value[tuple(index)]


def _joined(pieces: list[np.ndarray], time_axis: int | None) -> np.ndarray:
    """The streamed outputs as one sequence; an output without a time axis is the last chunk's."""
    return np.concatenate(pieces, axis=time_axis) if time_axis is not None else pieces[-1]


def state_feedback(model) -> dict[str, str]:
    """State input -> the output that carries it to the next call (h0 <- h_n), paired in order
    by shape and dtype; {} when the model has no state inputs or does not stream."""
    try:
        program = model._stream_program()
    except NotStreamableError:
        return {}
    inputs, outputs = list(program.pairing.state_inputs), list(program.pairing.state_outputs)
    if not inputs or not outputs:
        return {}
    feeds = sample_feeds(model, time=1, batch=1)
    values = dict(zip(model.output_names, model.run(None, feeds)))
    pairs: dict[str, str] = {}
    for name in inputs:
        match = next((o for o in outputs if o not in pairs.values() and values[o].shape == feeds[name].shape
                      and values[o].dtype == feeds[name].dtype), None)
        if match is None:
            return {}
        pairs[name] = match
    return pairs


# -- timing -----------------------------------------------------------------------------
def median_ms(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()  # warm-up (first-call compilation and caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
