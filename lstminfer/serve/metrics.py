"""``GET /metrics`` of ``lstminfer serve``: Prometheus text from plain counters, built at scrape time.

The names dashboards rely on (issue #17):

- ``lstminfer_open_streams{model}`` (gauge) and ``lstminfer_expired_streams_total`` (counter, all
  models): read from each ``SequenceManager.stats`` when scraped.
- ``lstminfer_requests_total{kind}`` and ``lstminfer_errors_total{kind}``: HTTP requests by *endpoint*
  kind, and those among them answered with a status >= 400, so errors/requests is an error ratio per
  kind. Kinds: ``infer`` (``/infer``, stateless or sequence: both are one v2 infer call), ``state``
  (``/sequences/{id}/...``), ``metadata`` (health, server and model metadata, ready, config),
  ``metrics``, ``stream`` (a WebSocket upgrade), ``frame`` (a chunk sent over a WebSocket; an error is
  a frame answered with ``{"error": ...}`` or one that ended the stream) and ``other`` (no such
  endpoint or method).
  The *kind of error* is in the log line each error already gets.
- ``lstminfer_bytes_received_total`` / ``lstminfer_bytes_sent_total``: HTTP bodies (the request's
  Content-Length, the response's body); a WebSocket adds its frames with ``count_frame``.
- ``lstminfer_batch_size`` (streams per pool step), ``lstminfer_queue_delay_seconds`` (a chunk's
  arrival to the start of its step) and ``lstminfer_step_seconds`` (histograms, all models).

Why not prometheus_client's Counter/Histogram on the hot path: each ``inc``/``observe`` takes a
lock (~1 us), per request and per queued chunk. Here a request adds to plain ints, and a pool step
bumps its manager's own bucket lists (the batcher records a step on the event loop, after it), so
every write happens on the loop's thread, without a lock; a ``prometheus_client`` collector turns
them into metrics on scrape. Each server has its own ``CollectorRegistry``, so several servers can
live in one process.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any, Awaitable, Callable, Iterable

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from .sequences import SequenceManager, ServeStats

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
SECONDS_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
KINDS = ("infer", "state", "metadata", "metrics", "stream", "frame", "other")
_MANY = 32  # above this many samples numpy's searchsorted beats a Python bisect per sample

Middleware = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


class BucketCounts:
    """A histogram's buckets (``le`` upper bounds, +Inf last) and sum; written from one thread, no lock."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]):
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: list[float]) -> None:
        if len(values) <= _MANY:
            for value in values:
                self.observe(value)
            return
        array = np.asarray(values, dtype=np.float64)
        found = np.bincount(np.searchsorted(self.bounds, array, side="left"), minlength=len(self.counts))
        counts = self.counts
        for i, n in enumerate(found.tolist()):
            counts[i] += n
        self.sum += float(array.sum())


class BatchHistograms:
    """One manager's step histograms, fed by ``stats.on_batch`` after each of its pool steps."""

    def __init__(self) -> None:
        self.batch_size = BucketCounts(BATCH_SIZE_BUCKETS)
        self.queue_delay = BucketCounts(SECONDS_BUCKETS)
        self.step_seconds = BucketCounts(SECONDS_BUCKETS)

    def on_batch(self, size: int, step_seconds: float, queue_delays: list[float]) -> None:
        self.batch_size.observe(size)
        self.step_seconds.observe(step_seconds)
        self.queue_delay.observe_many(queue_delays)


class _Tally:
    __slots__ = ("requests", "errors")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0


def endpoint_kind(path: str | None) -> str:
    """The ``kind`` label of a route's path template (None: no route matched)."""
    if path is None:
        return "other"
    if path.endswith("/infer"):
        return "infer"
    if "/sequences/" in path:
        return "state"
    if path == "/metrics":
        return "metrics"
    if path.endswith("/stream") or "/ws" in path:
        return "stream"
    return "metadata" if path.startswith("/v2") else "other"


class ServeMetrics:
    """The counters of one server and the collector that exports them with the managers' stats."""

    def __init__(self, managers: dict[str, SequenceManager]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.bytes_received = 0
        self.bytes_sent = 0
        self._tallies = {kind: _Tally() for kind in KINDS}
        self._kind_of_resource: dict[Any, _Tally] = {None: self._tallies["other"]}
        self._frames = self._tallies["frame"]
        self._stats: dict[str, ServeStats] = {}
        self._histograms: list[BatchHistograms] = []
        for name, manager in managers.items():
            self.watch(name, manager.stats)
        self.registry.register(self)

    def watch(self, model: str, stats: ServeStats) -> None:
        """Export ``stats`` under ``model`` and feed the histograms from its ``on_batch``."""
        histograms = BatchHistograms()
        stats.on_batch = histograms.on_batch
        self._stats[model] = stats
        self._histograms.append(histograms)

    def count_frame(self, received: int, sent: int) -> None:
        """One WebSocket frame answered: its bytes and the reply's."""
        self._frames.requests += 1
        self.bytes_received += received
        self.bytes_sent += sent

    def count_frames(self, count: int, received: int, sent: int) -> None:
        """``count`` WebSocket frames answered (an express step's): their bytes and the replies'."""
        self._frames.requests += count
        self.bytes_received += received
        self.bytes_sent += sent

    def count_frame_error(self, received: int) -> None:
        """One WebSocket frame answered with an error (or that ended its stream)."""
        self._frames.requests += 1
        self._frames.errors += 1
        self.bytes_received += received

    def counting(self, guard: Middleware) -> Middleware:
        """``guard`` (the server's middleware) that also counts each request, its errors and its bytes."""
        tallies = self._kind_of_resource

        @web.middleware
        async def counted(request: web.Request, handler) -> web.StreamResponse:
            response = await guard(request, handler)
            resource = request.match_info.route.resource
            tally = tallies.get(resource)
            if tally is None:  # first request to this route
                tally = tallies[resource] = self._tallies[endpoint_kind(resource.canonical)]
            tally.requests += 1
            if response.status >= 400:
                tally.errors += 1
            self.bytes_received += request.content_length or 0
            try:  # a Response's body is bytes: len() is 5x cheaper than its content_length property
                self.bytes_sent += len(response.body)
            except (AttributeError, TypeError):  # streamed, a payload or no body
                self.bytes_sent += response.content_length or 0
            return response

        return counted

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def collect(self):
        """The prometheus_client collector protocol: every metric, from the counters as they are now."""
        open_streams = GaugeMetricFamily("lstminfer_open_streams", "Open sequences (streams) of a model",
                                         labels=["model"])
        for model, stats in self._stats.items():
            open_streams.add_metric([model], stats.open_streams)
        yield open_streams
        yield CounterMetricFamily("lstminfer_expired_streams", "Sequences ended by the idle timeout",
                                  value=sum(stats.expired_total for stats in self._stats.values()))
        requests = CounterMetricFamily("lstminfer_requests", "HTTP requests by endpoint kind", labels=["kind"])
        errors = CounterMetricFamily("lstminfer_errors", "HTTP requests answered with a status >= 400, by endpoint "
                                                         "kind", labels=["kind"])
        for kind, tally in self._tallies.items():
            requests.add_metric([kind], tally.requests)
            errors.add_metric([kind], tally.errors)
        yield requests
        yield errors
        yield CounterMetricFamily("lstminfer_bytes_received", "Bytes received (request bodies, WebSocket frames)",
                                  value=self.bytes_received)
        yield CounterMetricFamily("lstminfer_bytes_sent", "Bytes sent (response bodies, WebSocket frames)",
                                  value=self.bytes_sent)
        for name, doc, pick in (
                ("lstminfer_batch_size", "Streams per pool step", lambda h: h.batch_size),
                ("lstminfer_queue_delay_seconds", "A chunk's wait from arrival to the start of its pool step",
                 lambda h: h.queue_delay),
                ("lstminfer_step_seconds", "Duration of one pool step", lambda h: h.step_seconds)):
            yield _histogram(name, doc, [pick(h) for h in self._histograms])


def _histogram(name: str, doc: str, parts: list[BucketCounts]) -> HistogramMetricFamily:
    """The sum of ``parts`` (every model's buckets) as one histogram, cumulative as Prometheus wants."""
    bounds = parts[0].bounds if parts else ()
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for part in parts:
        total += part.sum
        for i, n in enumerate(part.counts):
            counts[i] += n
    buckets, running = [], 0
    for bound, n in zip((*(floatToGoString(b) for b in bounds), "+Inf"), counts):
        running += n
        buckets.append((bound, running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)
