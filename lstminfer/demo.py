"""``lstminfer demo``: the bundled model end to end, in a few seconds.

With no argument: load the default bundled model (the adding-problem LSTM),
score it on fresh task data, stream one sequence step by step and check the
streamed outputs equal the whole-sequence ones, print per-step latency and,
when onnxruntime is installed, its latency and max abs difference.
``--model NAME_OR_PATH`` does the same for another bundled model or for any
model exported by ``tools/train.py`` (the task is read from its metadata).
Any other model runs on generated inputs against onnxruntime (max abs diff,
both latencies) and, if it streams, stepped in chunks against the whole
sequence. Exit 1 if a check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .listing import brief
from .model_check import median_ms

# Outputs agree when |a - b| <= ATOL + RTOL * |b| elementwise (float32 rounding; the LSTM
# cell state can grow to ~10-20, where 1e-5 absolute is below float32 resolution).
ATOL = RTOL = 1e-5


@dataclass
class DemoModel:
    path: str
    label: str
    metadata: dict           # the NAME.json next to the model, or {}
    task_name: str | None
    seq_len: int | None
    states: dict[str, str]   # state input -> state output fed back into it


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on the ``lstminfer`` command's subparsers."""
    parser = subparsers.add_parser(
        "demo", help="run a bundled model end to end (task metric, streaming, latency), or check any model "
                     "against onnxruntime and for streaming",
        description=__doc__.split("\n\n")[1].replace("``", ""),
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_demo)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from . import models
    from .backends import known_backends

    parser.add_argument("--model", metavar="NAME_OR_PATH",
                        help=f"bundled model ({', '.join(models.available()) or 'none'}) or an .onnx file "
                             f"(default: {models.DEFAULT})")
    parser.add_argument("--backend", default="auto", choices=known_backends(),
                        help="lstminfer backend (default: auto)")
    parser.add_argument("--batch", type=int, default=1000, help="sequences scored (default: 1000)")
    parser.add_argument("--seq-len", type=int,
                        help="sequence length (default: the one it was trained on; 16 for generated inputs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated task data (default: 0)")


def main(argv: list[str] | None = None) -> int:
    """Run the demo on its own: ``python -c "from lstminfer.demo import main; main()"``."""
    parser = argparse.ArgumentParser(prog="lstminfer demo", description=__doc__.split("\n\n")[1].replace("``", ""))
    _add_arguments(parser)
    args = parser.parse_args(argv)
    from .errors import LstminferError
    from .exit_codes import for_error

    try:
        return run_demo(args)
    except (LstminferError, OSError) as e:
        print(f"lstminfer demo: error: {e}", file=sys.stderr)
        return for_error(e)


def run_demo(args: argparse.Namespace) -> int:
    import lstminfer

    if args.batch < 1 or (args.seq_len is not None and args.seq_len < 1):
        raise lstminfer.InvalidArgumentError("--batch and --seq-len must be >= 1")
    start = time.perf_counter()
    demo = _resolve(args.model)
    model = lstminfer.load(demo.path, backend=args.backend)
    load_ms = 1e3 * (time.perf_counter() - start)
    print(f"lstminfer demo: {demo.label}")
    print(f"  loaded in {load_ms:.0f} ms, backend {model.backend}")
    if not _task_is_runnable(demo, model):
        return _any_model_checks(demo, model, args, start)
    return _task_demo(demo, model, args, start)


# -- which model, which task --------------------------------------------------
def _resolve(requested: str | None) -> DemoModel:
    from . import models

    if requested is None or (requested in models.available() and not Path(requested).exists()):
        name = requested or models.DEFAULT
        path, metadata, label = models.path(name), models.metadata(name), f"{name} (bundled)"
    else:
        path = requested
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"no model file '{path}' (bundled models: {brief(models.available()) or 'none'})"
            )
        sidecar = Path(path).with_suffix(".json")
        metadata = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        label = path
    return DemoModel(path, label, metadata, metadata.get("task"), metadata.get("seq_len"), {})


def _task_is_runnable(demo: DemoModel, model) -> bool:
    """Fill in the task from the ONNX metadata (written by tools/train.py) and check the wiring."""
    from . import tasks

    props = model.get_modelmeta().custom_metadata_map
    demo.task_name = demo.task_name or props.get("lstminfer.task")
    if demo.seq_len is None and props.get("lstminfer.seq_len", "").isdigit():
        demo.seq_len = int(props["lstminfer.seq_len"])
    try:
        demo.states = json.loads(props.get("lstminfer.state", "{}"))
    except json.JSONDecodeError:
        demo.states = {}
    if demo.task_name not in tasks.TASKS:
        return False
    wanted_inputs = {"x", *demo.states}
    wanted_outputs = {"y", *demo.states.values()}
    return set(model.input_names) == wanted_inputs and wanted_outputs <= set(model.output_names)


# -- the task demo ------------------------------------------------------------
def _task_demo(demo: DemoModel, model, args, start: float) -> int:
    from . import tasks

    task = tasks.get(demo.task_name)
    seq_len = args.seq_len or demo.seq_len or task.default_seq_len
    _print_provenance(demo, task)
    rng = np.random.default_rng(args.seed)
    x, target = task.sample(args.batch, seq_len, rng)
    failures = []

    t0 = time.perf_counter()
    predicted = model.predict(x=x, **_zero_states(model, demo, len(x)))
    predict_ms = 1e3 * (time.perf_counter() - t0)
    scores = task.score(task.answer(predicted["y"]), target, x)
    print(f"  metric on {args.batch} fresh sequences: {task.summary(scores, seq_len)}")
    failures += _compare_with_training(demo, task, scores, seq_len)
    print(f"  predict on the batch [{args.batch}, {seq_len}, {task.input_size}]: {predict_ms:.1f} ms")

    one = x[:1]
    stream_steps, stream_diff, ok = _stream_with_stream(model, demo, one)
    print(f"  streaming 1 sequence through model.stream(), {seq_len} steps one at a time: "
          f"streamed == whole-sequence: {'yes' if ok else 'NO'}, max abs diff {stream_diff:.1e}")
    if not ok:
        failures.append(f"streamed outputs differ from whole-sequence ones by {stream_diff:.3g}")
    run_steps, run_diff, run_ok = _stream_check(model.run, model, demo, one)
    if not run_ok:
        failures.append(f"state fed back through run() differs from the whole sequence by {run_diff:.3g}")
    whole_ms = median_ms(lambda: model.run(None, _feeds(model, demo, one)))
    print(f"  latency lstminfer ({model.backend}): {_fmt_us(stream_steps)}/step with Stream.step, "
          f"{_fmt_us(run_steps)}/step with run() and state fed back (median), whole sequence {whole_ms:.2f} ms")

    failures += _onnxruntime_comparison(demo, model, one, x, predicted)
    return _verdict(failures, start)


def _print_provenance(demo: DemoModel, task) -> None:
    meta = demo.metadata
    cell = meta.get("cell", "").upper()
    size = f", hidden {meta['hidden_size']}" if "hidden_size" in meta else ""
    print(f"  task: {task.title}; model: {cell or 'recurrent'}{size}")
    training = meta.get("training", {})
    if meta.get("command"):
        where = f" on {training['device']}" if training.get("device") else ""
        steps = f", {training['steps']} steps, {training['seconds']:.0f} s" if "steps" in training else ""
        print(f"  trained with `{meta['command']}`{where}{steps}")


def _compare_with_training(demo: DemoModel, task, scores: dict, seq_len: int) -> list[str]:
    metric = demo.metadata.get("metric", {})
    if "value" not in metric or "margin" not in metric or seq_len != demo.metadata.get("seq_len"):
        return []
    value, margin, got = metric["value"], metric["margin"], scores[task.metric]
    ok = abs(got - value) <= margin
    print(f"  {task.metric} when trained: {value:.4g} (documented margin +/- {margin:g}); "
          f"now {got:.4g}: {'ok' if ok else 'OUT OF MARGIN'}")
    return [] if ok else [f"{task.metric} {got:.4g} is not within {margin:g} of the trained {value:.4g}"]


def _zero_states(model, demo: DemoModel, batch: int) -> dict[str, np.ndarray]:
    states = {}
    for arg in model.get_inputs():
        if arg.name in demo.states:
            shape = [batch if not isinstance(d, int) else d for d in arg.shape]
            states[arg.name] = np.zeros(shape, np.float32)
    return states


def _feeds(model, demo: DemoModel, x: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": x, **_zero_states(model, demo, len(x))}


def _stream_check(run, model, demo: DemoModel, x: np.ndarray) -> tuple[list[float], float, bool]:
    """Per-step seconds, max abs diff streamed vs whole (y and final states), and whether they agree."""
    names = ["y", *demo.states.values()]
    whole = dict(zip(names, run(names, _feeds(model, demo, x))))
    feeds = _feeds(model, demo, x)
    pieces, seconds = [], []
    for t in range(x.shape[1]):
        feeds["x"] = x[:, t:t + 1]
        t0 = time.perf_counter()
        out = dict(zip(names, run(names, feeds)))
        seconds.append(time.perf_counter() - t0)
        pieces.append(out["y"])
        for state_in, state_out in demo.states.items():
            feeds[state_in] = out[state_out]
    streamed = {"y": np.concatenate(pieces, axis=1), **{n: out[n] for n in demo.states.values()}}
    diff, ok = _agreement([streamed[n] for n in names], [whole[n] for n in names])
    return seconds, diff, ok


def _stream_with_stream(model, demo: DemoModel, x: np.ndarray) -> tuple[list[float], float, bool]:
    """Per-step seconds of ``Stream.step`` and its agreement with the whole-sequence ``y``."""
    whole = model.run(["y"], _feeds(model, demo, x))[0]
    stream = model.stream()
    pieces, seconds = [], []
    for t in range(x.shape[1]):
        chunk = x[:, t:t + 1]
        t0 = time.perf_counter()
        pieces.append(stream.step(chunk))
        seconds.append(time.perf_counter() - t0)
    diff, ok = _agreement([np.concatenate(pieces, axis=1)], [whole])
    return seconds, diff, ok


def _agreement(got: list[np.ndarray], want: list[np.ndarray]) -> tuple[float, bool]:
    """Max abs difference over all pairs, and whether every pair is close (see ATOL, RTOL)."""
    diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(got, want))
    ok = all(a.shape == b.shape and np.allclose(a, b, rtol=RTOL, atol=ATOL) for a, b in zip(got, want))
    return diff, ok


def _onnxruntime_comparison(demo: DemoModel, model, one: np.ndarray, x: np.ndarray, predicted: dict) -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        print("  onnxruntime: not installed (pip install onnxruntime to compare latency and outputs)")
        return []
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # like-for-like with lstminfer's single-threaded step
    session = ort.InferenceSession(demo.path, options, providers=["CPUExecutionProvider"])
    steps, _, _ = _stream_check(session.run, model, demo, one)
    whole_ms = median_ms(lambda: session.run(None, _feeds(model, demo, one)))
    theirs = session.run(None, _feeds(model, demo, x))
    names = [o.name for o in session.get_outputs()]
    diff, ok = _agreement([predicted[n] for n in names], theirs)
    print(f"  latency onnxruntime {ort.__version__} (1 thread): {_fmt_us(steps)}/step streaming (median), "
          f"whole sequence {whole_ms:.2f} ms")
    from .model_check import tolerance_text, tolerance_used

    used = tolerance_used([predicted[n] for n in names], theirs)
    print(f"  onnxruntime vs lstminfer on the batch: max abs diff {diff:.1e}: "
          f"{tolerance_text(used if ok else max(used, 1.0 + 1e-9))}")
    return [] if ok else [f"lstminfer and onnxruntime differ by {diff:.3g}"]


# -- any other model: checks on generated inputs --------------------------------------
def _any_model_checks(demo: DemoModel, model, args, start: float) -> int:
    from .model_check import check_model

    print("  task unknown (no lstminfer.task metadata): checking on generated inputs "
          "(`lstminfer info` describes the model)")
    check = check_model(model, demo.path, time_steps=args.seq_len or 16, seed=args.seed)
    return _verdict(check.failures, start)


def _verdict(failures: list[str], start: float) -> int:
    total = time.perf_counter() - start
    if failures:
        print(f"FAILED ({total:.1f} s): " + "; ".join(failures))
        return 1
    print(f"all checks passed ({total:.1f} s)")
    return 0


def _fmt_us(seconds: list[float]) -> str:
    return f"{1e6 * float(np.median(seconds)):.0f} us"
