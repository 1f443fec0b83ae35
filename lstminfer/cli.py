"""The ``lstminfer`` command line: info, run, compile, quantize, bench, demo, serve.

Exit codes (``exit_codes``): 0 done, 1 a failed run or check, 2 a usage error.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .backends import known_backends
from .errors import InvalidArgumentError
from .listing import brief


def _cmd_info(args) -> int:
    from .summary import info

    text, model = info(args.model, backend=args.backend, quantize=args.quantize)  # model None: cannot run
    print(text)
    if args.plan and model is not None:
        print(model.describe())
    return 0


def _parse_inputs(specs: list[str], input_names: list[str]) -> dict[str, np.ndarray]:
    """``NAME=FILE.npy`` per input; a bare ``FILE.npy`` for a model with one input."""
    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            if len(input_names) != 1:
                raise InvalidArgumentError(
                    f"--input '{spec}' names no input, and the model has {len(input_names)} inputs "
                    f"({brief(input_names)}): give each as NAME=FILE.npy")
            name, path = input_names[0], spec
        if not name or not path:
            raise InvalidArgumentError(f"--input expects NAME=FILE.npy (or FILE.npy for a one-input model), "
                                       f"got '{spec}'")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"input '{name}': no such file '{path}'") from None
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"cannot read input '{name}' from '{path}': {e}") from None
    return feeds


def _cmd_run(args) -> int:
    import lstminfer

    model = lstminfer.load(_model_path(args.model), backend=args.backend)
    feeds = _parse_inputs(args.input or [], model.input_names)
    outputs = model.run(args.output or None, feeds)
    names = args.output or model.output_names
    if args.o:
        np.savez(args.o, **dict(zip(names, outputs)))
        print(f"wrote {len(outputs)} output(s) to {args.o}")
    for name, value in zip(names, outputs):
        arr = np.asarray(value)
        preview = np.array2string(arr.reshape(-1)[:8], precision=5, separator=", ")
        print(f"{name}: {arr.dtype} {list(arr.shape)} {preview}{' ...' if arr.size > 8 else ''}")
    return 0


def _cmd_compile(args) -> int:
    import time

    from .backends import resolve_backend
    from .kernels import numba_backend

    backend = resolve_backend(args.backend)
    if backend != "numba":
        how = "its kernels were compiled ahead of time, at install" if backend == "cython" else \
            "it runs NumPy, nothing is compiled"
        print(f"backend '{backend}' (active) needs no compiling: {how}. The Numba backend compiles at first use; "
              "warm its cache with `lstminfer compile --backend numba [MODEL ...]`.")
        return 0
    start = time.perf_counter()
    done: list[tuple[str, str]] = []
    if not args.models:
        done = numba_backend.compile_kernels()
        print(f"all Numba kernels ({', '.join(numba_backend.OPS)}):")
        print("\n".join(f"  {name}: {how}" for name, how in done))
    import lstminfer
    from .summary import op_counts

    seen: set[str] = set()
    for requested in args.models:
        path = _model_path(requested)
        model = lstminfer.load(path, backend="reference")  # which recurrent ops; compiles nothing
        ops = [op for op in numba_backend.OPS if op in op_counts(model._imported.graph)]
        print(f"{path}: recurrent ops {', '.join(ops) or 'none (nothing to compile)'}")
        for op in ops:
            if op in seen:
                print(f"  {op}: done above")
                continue
            seen.add(op)
            kernels = numba_backend.compile_kernels([op])
            done += kernels
            print("\n".join(f"  {name}: {how}" for name, how in kernels))
    compiled = sum(how.startswith("compiled") for _, how in done)
    info = numba_backend.cache_info()
    print(f"{compiled} kernel(s) compiled, {len(done) - compiled} already cached or loaded, "
          f"in {time.perf_counter() - start:.1f} s; cache: "
          f"{'enabled' if info['enabled'] else 'DISABLED (directory not writable)'}"
          f"{', NUMBA_CACHE_DIR=' + str(info['NUMBA_CACHE_DIR']) if info['NUMBA_CACHE_DIR'] else ''}")
    return 0


def _cmd_quantize(args) -> int:
    from .quantize_export import accuracy_report, format_report, quantize

    if args.report and not args.model:
        if args.o or args.data:
            raise InvalidArgumentError("--report without IN scores the bundled models; -o and --data need IN")
        print(format_report(accuracy_report(sequences=args.sequences, backend=args.backend)))
        return 0
    if not args.model:
        raise InvalidArgumentError("expected IN -o OUT (or --report for the bundled models)")
    if args.data and not args.report:
        raise InvalidArgumentError("--data is read by --report; add --report")
    if not args.o and not args.report:
        raise InvalidArgumentError("expected IN -o OUT: where to write the quantized model")
    source = _model_path(args.model)
    if args.o:
        print(quantize(source, args.o, args.mode, dense=not args.keep_dense).text())
        return _quantize_report(args, source, args.o) if args.report else 0
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:  # --report alone: the quantized copy is not kept
        out = os.path.join(scratch, f"quantized.{args.mode}.onnx")
        print(quantize(source, out, args.mode, dense=not args.keep_dense).text().replace(out, "(not kept)"))
        return _quantize_report(args, source, out)


def _quantize_report(args, source: str, quantized: str) -> int:
    from .quantize_report import compare_quantized

    print(compare_quantized(source, quantized, args.mode, data=args.data, backend=args.backend).text())
    return 0


def _cmd_bench(args) -> int:
    import json

    import lstminfer
    from .bench import bench

    for option in ("threads", "pool", "seq_len"):
        if getattr(args, option) < 1:
            raise InvalidArgumentError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.duration <= 0:
        raise InvalidArgumentError(f"--duration must be > 0 seconds, got {args.duration}")
    path = _model_path(args.model)
    model = lstminfer.load(path, backend=args.backend, threads=args.threads)
    result = bench(model, path, threads=args.threads, pool=args.pool, seq_len=args.seq_len, duration=args.duration)
    print(json.dumps(result.as_json(), indent=2) if args.json else result.table())
    return 0


def _model_path(requested: str) -> str:
    """A file path as given, or a bundled model's path for its name (adding_lstm, ...)."""
    from . import models

    if not os.path.exists(requested) and requested in models.available():
        return models.path(requested)
    return requested


def _backend_option(parser: argparse.ArgumentParser, what: str = "backend") -> None:
    parser.add_argument("--backend", default="auto", choices=known_backends(),
                        help=f"{what} (default: auto: LSTMINFER_BACKEND, else the first available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstminfer", description="Fast CPU inference for ONNX recurrent models (LSTM, GRU, RNN).",
        epilog="exit codes: 0 done, 1 a failed run or check, 2 a usage error",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="describe a model: inputs, outputs, ops, recurrent layers")
    info.add_argument("model", help="path to an .onnx file (or a bundled model's name)")
    _backend_option(info, "backend to plan with")
    info.add_argument("--plan", action="store_true",
                      help="also print the execution plan and its compiled program (every free dim 1)")
    info.add_argument("--quantize", choices=("int8", "bf16"), help="plan with weights quantized at load")
    info.set_defaults(func=_cmd_info)

    run = sub.add_parser("run", help="run a model on inputs stored as .npy files")
    run.add_argument("model", help="path to an .onnx file (or a bundled model's name)")
    run.add_argument("--input", "-i", action="append", metavar="NAME=FILE.npy",
                     help="one per model input; a bare FILE.npy for a model with one input")
    run.add_argument("--output", action="append", metavar="NAME", help="output to compute (default: all)")
    run.add_argument("-o", metavar="OUT.npz", help="save the outputs to an .npz file")
    _backend_option(run)
    run.set_defaults(func=_cmd_run)

    compile_ = sub.add_parser(
        "compile", help="compile the Numba kernels of these models (default: all) into the on-disk cache "
                        "ahead of time (deployment images); says what was compiled and what was cached")
    compile_.add_argument("models", nargs="*", metavar="MODEL", help=".onnx files or bundled model names")
    _backend_option(compile_, "backend to compile for; only numba compiles")
    compile_.set_defaults(func=_cmd_compile)

    quant = sub.add_parser(
        "quantize", help="save a copy with int8 (DequantizeLinear) or bf16 weights that onnxruntime also runs; "
                         "--report: its error against the float model (no IN: the bundled models' accuracy)")
    quant.add_argument("model", nargs="?", metavar="IN", help="path to an .onnx file")
    quant.add_argument("-o", metavar="OUT.onnx", help="where to write the quantized model")
    quant.add_argument("--mode", choices=("int8", "bf16"), default="int8", help="weight precision (default: int8)")
    quant.add_argument("--keep-dense", action="store_true", help="leave MatMul/Gemm/Gather weights float32")
    quant.add_argument("--report", action="store_true",
                       help="compare the quantized outputs with the float ones: max/mean abs error per output, "
                            "accuracy or RMSE with labels in --data; without IN: the bundled models' task metric")
    quant.add_argument("--data", metavar="INPUTS.npz",
                       help="--report's inputs: one array per model input, optionally 'labels' (integer classes "
                            "of the class-score output, or float targets); default: generated inputs")
    quant.add_argument("--sequences", type=int, default=2000, help="task sequences per bundled model for --report")
    _backend_option(quant, "backend for --report")
    quant.set_defaults(func=_cmd_quantize)

    bench = sub.add_parser(
        "bench", help="time a model against onnxruntime: one-frame stream step, run at T=1 with state fed back, "
                      "a sequence, a pool of streams")
    bench.add_argument("model", help="path to an .onnx file (or a bundled model's name)")
    bench.add_argument("--threads", type=int, default=1,
                       help="cores per call, lstminfer's threads and onnxruntime's intra_op_num_threads (default: 1)")
    bench.add_argument("--pool", type=int, default=16, help="streams in the pool case (default: 16)")
    bench.add_argument("--seq-len", type=int, default=100, help="time steps of the sequence case (default: 100)")
    bench.add_argument("--duration", type=float, default=0.25,
                       help="seconds of calls per figure (default: 0.25; eight figures in all)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    _backend_option(bench)
    bench.set_defaults(func=_cmd_bench)

    from .demo import add_demo_parser

    add_demo_parser(sub)
    from .serve.command import add_serve_parser

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import LstminferError
    from .exit_codes import for_error

    try:
        return args.func(args)
    except (LstminferError, OSError) as e:
        print(f"lstminfer {args.command}: error: {e}", file=sys.stderr)
        return for_error(e)


if __name__ == "__main__":
    sys.exit(main())
