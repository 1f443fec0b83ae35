"""The Ray Serve application: ``build(...)`` wires the three deployments; ``app(args)`` is its builder for ``serve run``.

    serve run lstminfer.ray:app model=PATH replicas=2 checkpoint_every=50

Deployments: ``StreamDirectory`` (one replica: who holds which sequence), ``StreamOwner`` (``replicas``
replicas, each with its stream pools; requests routed by the consistent-hash router on the sequence,
no fallback replica: a sequence's chunks never go anywhere else while the replicas stay the same)
and ``Ingress`` (the HTTP/WebSocket API). Every deployment asks for 0 CPUs: the kernels' threads are
what uses the cores, and a 2-core machine must still fit two owners, the proxy and the controller.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..errors import InvalidArgumentError
from ..serve.app import ServeOptions

APP_NAME = "lstminfer"
CONSISTENT_HASH_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
OWNER_MAX_ONGOING = 4096  # chunks in flight per replica: the batcher, not Serve, decides what waits
INGRESS_MAX_ONGOING = 100_000  # every open WebSocket is one ongoing request of the ingress
DIRECTORY_MAX_ONGOING = 100_000  # long polls and claims waiting on a hand-over


def build(model_specs: list[str], options: ServeOptions | None = None, *, replicas: int = 2,
          checkpoint_every: int = 0, max_replicas: int | None = None, target_ongoing: float = 64.0,
          ingress_replicas: int = 1, checkpoint_dir: str | None = None):
    """The application (``serve.run`` it). ``max_replicas``: autoscale the owners between ``replicas`` and
    it on their chunks in flight (``target_ongoing`` per replica); streams move as the replicas change.
    ``checkpoint_dir``: the checkpoints also written there (a directory every node can reach), so they
    outlive a restart of the stream directory too."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from .directory import StreamDirectory
    from .ingress import Ingress
    from .owner import StreamOwner

    if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
        raise InvalidArgumentError(f"replicas must be >= 1 and max_replicas >= replicas, got {replicas} and "
                                   f"{max_replicas}")
    if checkpoint_every < 0:
        raise InvalidArgumentError(f"checkpoint_every must be >= 0 (0: no checkpoints), got {checkpoint_every}")
    fields = asdict(options or ServeOptions())
    no_cpu = {"num_cpus": 0}
    quiet = {"enable_access_log": False}  # a log line per chunk (and per long poll) costs more than the step
    directory = serve.deployment(StreamDirectory, name="StreamDirectory", num_replicas=1,
                                 max_ongoing_requests=DIRECTORY_MAX_ONGOING, ray_actor_options=no_cpu,
                                 logging_config=quiet).bind(checkpoint_dir)
    scaling: dict[str, Any] = {"num_replicas": replicas}
    if max_replicas is not None and max_replicas > replicas:
        scaling = {"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                          "target_ongoing_requests": target_ongoing}}
    owner = serve.deployment(
        StreamOwner, name="StreamOwner", max_ongoing_requests=OWNER_MAX_ONGOING, ray_actor_options=no_cpu,
        logging_config=quiet,
        graceful_shutdown_timeout_s=30, request_router_config=RequestRouterConfig(
            request_router_class=CONSISTENT_HASH_ROUTER,
            request_router_kwargs={"num_virtual_nodes": 100, "num_fallback_replicas": 0}),
        **scaling).bind(list(model_specs), fields, directory, checkpoint_every)
    return serve.deployment(Ingress, name="Ingress", num_replicas=ingress_replicas,
                            max_ongoing_requests=INGRESS_MAX_ONGOING, ray_actor_options=no_cpu,
                            logging_config=quiet).bind(list(model_specs), fields, owner, directory)


def app(args: dict[str, str]):
    """The builder ``serve run lstminfer.ray:app`` calls with its ``key=value`` arguments: ``model`` (PATH or
    NAME=PATH, several separated by commas; none: the bundled model), ``replicas``, ``max_replicas``,
    ``checkpoint_every``, ``checkpoint_dir``, ``max_streams``, ``max_delay_us``, ``idle_timeout``, ``threads``,
    ``backend``."""
    args = dict(args)
    known = {"model", "replicas", "max_replicas", "checkpoint_every", "checkpoint_dir", "max_streams", "max_delay_us",
             "idle_timeout", "threads", "backend", "quantize", "token"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidArgumentError(f"unknown argument(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    specs = [s for s in args.get("model", "").split(",") if s]
    options = ServeOptions(
        max_streams=int(args.get("max_streams", 4096)), max_delay_us=int(args.get("max_delay_us", 500)),
        idle_timeout=float(args.get("idle_timeout", 300.0)), threads=int(args.get("threads", 1)),
        backend=args.get("backend", "auto"), quantize=args.get("quantize"), token=args.get("token"))
    max_replicas = args.get("max_replicas")
    return build(specs, options, replicas=int(args.get("replicas", 2)),
                 checkpoint_every=int(args.get("checkpoint_every", 0)), checkpoint_dir=args.get("checkpoint_dir"),
                 max_replicas=int(max_replicas) if max_replicas else None)


def scale_owners(replicas: int, app_name: str = APP_NAME) -> None:
    """Set the number of ``StreamOwner`` replicas of a running application (deployed with
    ``external_scaler_enabled=True``, as ``lstminfer serve --ray`` does): the streams whose owner changes
    move with their state. Returns once the controller has the new target, not when replicas are up."""
    import ray
    from ray.serve._private.common import DeploymentID
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    if replicas < 1:
        raise InvalidArgumentError(f"replicas must be >= 1, got {replicas}")
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    ray.get(controller.update_deployment_replicas.remote(DeploymentID(name="StreamOwner", app_name=app_name), replicas))
