"""The ``lstminfer serve`` command line: its flags, and the call into the server."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .access import refuse_without_token


def add_serve_parser(sub) -> None:
    serve = sub.add_parser(
        "serve", help="serve models over HTTP (Open Inference Protocol / KServe v2); needs '.[serve]'",
        description="Serve models over HTTP (the Open Inference Protocol, KServe v2). With no MODEL: the bundled "
                    "adding_lstm. Binds 127.0.0.1 unless told otherwise; any other address needs a token.")
    serve.add_argument("models", nargs="*", metavar="MODEL",
                       help="PATH (served under its file stem) or NAME=PATH; several at once")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: a free port, printed)")
    serve.add_argument("--max-streams", type=_positive, default=4096, help="open sequences at most (default: 4096)")
    serve.add_argument("--max-delay-us", type=_non_negative, default=500,
                       help="how long a chunk may wait for others to share its pool step (default: 500)")
    serve.add_argument("--max-batch", type=_positive, default=128,
                       help="chunks stepped together at most; a backlog runs as several steps (default: 128)")
    serve.add_argument("--idle-timeout", type=float, default=300.0,
                       help="seconds after which an idle sequence expires (default: 300)")
    serve.add_argument("--state-dir", help="where open sequences' states are written on shutdown and read at start")
    serve.add_argument("--threads", type=_positive, default=1, help="cores a recurrent kernel may use (default: 1)")
    from ..backends import known_backends

    serve.add_argument("--backend", default="auto", choices=known_backends(), help="backend (default: auto)")
    serve.add_argument("--quantize", choices=("int8", "bf16"), help="quantize the recurrent weights at load")
    serve.add_argument("--token", default=os.environ.get("LSTMINFER_TOKEN"),
                       help="every request must carry 'Authorization: Bearer TOKEN' (default: $LSTMINFER_TOKEN)")
    serve.add_argument("--max-request-bytes", type=_positive, default=16 * 1024 * 1024,
                       help="largest request body accepted, larger ones get 413 (default: 16 MiB)")
    ray = serve.add_argument_group("Ray Serve", "serve on Ray Serve's replicas (needs '.[ray]'): streams are routed "
                                   "to the replica that owns them and move with their state when replicas change")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve (a local Ray cluster unless --address)")
    ray.add_argument("--replicas", type=_positive, default=2, help="stream-owning replicas (default: 2)")
    ray.add_argument("--address", help="a running Ray cluster's address (default: start a local one, stopped on exit)")
    ray.add_argument("--checkpoint-every", type=_non_negative, default=0, metavar="K",
                     help="checkpoint each stream every K chunks, so it resumes if its replica dies (default: 0, off)")
    ray.add_argument("--checkpoint-dir", metavar="DIR",
                     help="also write the checkpoints to DIR (reachable from every node), so they outlive a "
                          "restart of the stream directory (default: kept in its memory only)")
    serve.set_defaults(func=run_serve_command)


def run_serve_command(args) -> int:
    refusal = refuse_without_token(args.host, args.token)
    if refusal:  # before the server's imports: a refused start is quick
        print(f"lstminfer serve: error: {refusal}", file=sys.stderr)
        return 2
    if args.ray:  # lstminfer.ray sits above serve (it reuses serve's codec): imported by name, layers stay one-way
        return importlib.import_module("lstminfer.ray.command").run_on_ray(args)
    try:
        from .app import ServeOptions, serve
    except ImportError as e:  # the server's dependencies are an extra
        raise SystemExit(f"lstminfer serve: {e}; install the server's dependencies: pip install 'lstminfer[serve]'")
    options = ServeOptions(
        host=args.host, port=args.port, max_streams=args.max_streams, max_delay_us=args.max_delay_us,
        max_batch=args.max_batch, idle_timeout=args.idle_timeout, state_dir=args.state_dir, threads=args.threads,
        backend=args.backend, quantize=args.quantize, token=args.token or None, max_request_bytes=args.max_request_bytes)
    return serve(args.models, options)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value
