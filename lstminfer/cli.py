"""The ``lstminfer`` command line: info, run, compile, quantize, demo, serve."""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _cmd_info(args) -> int:
    from .summary import info

    text, model = info(args.model, backend=args.backend, quantize=args.quantize)  # model None: cannot run
    print(text)
    if args.plan and model is not None:
        print(model.describe())
    return 0


def _parse_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"lstminfer run: --input expects NAME=FILE.npy, got '{spec}'")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SystemExit(f"lstminfer run: cannot read input '{name}' from '{path}': {e}")
    return feeds


def _cmd_run(args) -> int:
    import lstminfer

    model = lstminfer.load(args.model, backend=args.backend)
    feeds = _parse_inputs(args.input or [])
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

    from . import kernels

    if not kernels.available():
        print("lstminfer compile: numba is not installed; nothing to compile", file=sys.stderr)
        return 2
    start = time.perf_counter()
    names = kernels.compile_all()
    info = kernels.cache_info()
    print(f"compiled {len(names)} Numba kernels in {time.perf_counter() - start:.1f} s: {', '.join(names)}")
    print(f"cache: {'enabled' if info['enabled'] else 'DISABLED (directory not writable)'}"
          f"{', NUMBA_CACHE_DIR=' + str(info['NUMBA_CACHE_DIR']) if info['NUMBA_CACHE_DIR'] else ''}")
    return 0


def _cmd_quantize(args) -> int:
    from .quantize_export import accuracy_report, format_report, quantize

    if args.report:
        if args.model or args.o:
            raise SystemExit("lstminfer quantize: --report scores the bundled models; give no IN or -o with it")
        print(format_report(accuracy_report(sequences=args.sequences, backend=args.backend)))
        return 0
    if not args.model or not args.o:
        raise SystemExit("lstminfer quantize: expected IN -o OUT (or --report)")
    print(quantize(args.model, args.o, args.mode, dense=not args.keep_dense).text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstminfer", description="Fast CPU inference for ONNX recurrent models (LSTM, GRU, RNN)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="describe a model: inputs, outputs, ops, recurrent layers")
    info.add_argument("model", help="path to an .onnx file")
    info.add_argument("--backend", default="auto", help="backend to plan with (default: auto)")
    info.add_argument("--plan", action="store_true",
                      help="also print the execution plan and its compiled program (every free dim 1)")
    info.add_argument("--quantize", choices=("int8", "bf16"), help="plan with weights quantized at load")
    info.set_defaults(func=_cmd_info)

    run = sub.add_parser("run", help="run a model on inputs stored as .npy files")
    run.add_argument("model", help="path to an .onnx file")
    run.add_argument("--input", "-i", action="append", metavar="NAME=FILE.npy", help="one per model input")
    run.add_argument("--output", action="append", metavar="NAME", help="output to compute (default: all)")
    run.add_argument("-o", metavar="OUT.npz", help="save the outputs to an .npz file")
    run.add_argument("--backend", default="auto", help="backend (default: auto)")
    run.set_defaults(func=_cmd_run)

    compile_ = sub.add_parser(
        "compile", help="compile the Numba kernels into the on-disk cache ahead of time (deployment images)"
    )
    compile_.set_defaults(func=_cmd_compile)

    quant = sub.add_parser(
        "quantize", help="save a copy with int8 (DequantizeLinear) or bf16 weights that onnxruntime also runs; "
                         "--report: accuracy of float32/int8/bf16 on the bundled models")
    quant.add_argument("model", nargs="?", metavar="IN", help="path to an .onnx file")
    quant.add_argument("-o", metavar="OUT.onnx", help="where to write the quantized model")
    quant.add_argument("--mode", choices=("int8", "bf16"), default="int8", help="weight precision (default: int8)")
    quant.add_argument("--keep-dense", action="store_true", help="leave MatMul/Gemm/Gather weights float32")
    quant.add_argument("--report", action="store_true",
                       help="print max/mean abs error vs float32 and the task metric of the bundled models")
    quant.add_argument("--sequences", type=int, default=2000, help="task sequences per model for --report")
    quant.add_argument("--backend", default="auto", help="backend for --report (default: auto)")
    quant.set_defaults(func=_cmd_quantize)

    from .demo import add_demo_parser

    add_demo_parser(sub)
    from .serve.command import add_serve_parser

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import LstminferError

    try:
        return args.func(args)
    except (LstminferError, FileNotFoundError) as e:
        print(f"lstminfer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
