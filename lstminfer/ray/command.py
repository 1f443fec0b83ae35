"""``lstminfer serve --ray``: deploy the application on a local Ray cluster (or ``--address``), serve until a signal."""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from ..serve.app import ServeOptions
from .application import APP_NAME


def run_on_ray(args) -> int:
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise SystemExit(f"lstminfer serve --ray: {e}; install Ray Serve: pip install 'lstminfer[ray]'")
    from .application import build

    options = ServeOptions(
        host=args.host, port=args.port or _free_port(args.host), max_streams=args.max_streams,
        max_delay_us=args.max_delay_us, max_batch=args.max_batch, idle_timeout=args.idle_timeout, threads=args.threads,
        backend=args.backend,
        quantize=args.quantize, token=args.token or None, max_request_bytes=args.max_request_bytes)
    if args.state_dir:
        print("lstminfer serve --ray: error: --state-dir is not supported on Ray (use --checkpoint-every)",
              file=sys.stderr)
        return 2
    stop = threading.Event()
    if args.address:
        ray.init(address=args.address)
    else:  # this machine only: loopback, no dashboard
        ray.init(num_cpus=max(2, args.replicas), include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build(args.models, options, replicas=args.replicas, checkpoint_every=args.checkpoint_every,
                        checkpoint_dir=args.checkpoint_dir and os.path.abspath(args.checkpoint_dir)),
                  name=APP_NAME, route_prefix="/", external_scaler_enabled=True)
        host = options.host if ":" not in options.host else f"[{options.host}]"
        url = f"http://{host}:{options.port}"
        for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs handlers of its own
            signal.signal(sig, lambda *_: stop.set())
        print(f"lstminfer serve: listening on {url} (Ray Serve, {args.replicas} replica(s))", flush=True)
        while not stop.wait(1.0):
            pass
        print("lstminfer serve: stopping", file=sys.stderr, flush=True)
        serve.delete(APP_NAME)
        if not args.address:  # a cluster we did not start keeps its Serve instance
            serve.shutdown()
    finally:
        ray.shutdown()
    return 0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
