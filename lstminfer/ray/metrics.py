"""``GET /metrics`` of the Ray application: the names ``lstminfer serve`` exports, summed over the replicas.

Requests, errors and bytes are counted where HTTP ends (each ingress replica, which sends its counters
to the directory about once a second; a scrape adds the others' to its own); open streams, expiries and the
step histograms come from each ``StreamOwner`` replica's snapshot (sent with its long poll to the
directory, about once a second), added up at scrape time.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..serve.metrics import (BATCH_SIZE_BUCKETS, KINDS, SECONDS_BUCKETS, BucketCounts, _histogram,
                             endpoint_kind)

__all__ = ["RayMetrics", "CONTENT_TYPE_LATEST", "endpoint_kind"]

_HISTOGRAMS = (("lstminfer_batch_size", "Streams per pool step", "batch_size", BATCH_SIZE_BUCKETS),
               ("lstminfer_queue_delay_seconds", "A chunk's wait from arrival to the start of its pool step",
                "queue_delay", SECONDS_BUCKETS),
               ("lstminfer_step_seconds", "Duration of one pool step", "step_seconds", SECONDS_BUCKETS))


class RayMetrics:
    """The ingress's counters and, per scrape, the replicas' snapshots (``render(snapshots)``)."""

    def __init__(self, models: list[str]):
        self.models = list(models)
        self.requests = dict.fromkeys(KINDS, 0)
        self.errors = dict.fromkeys(KINDS, 0)
        self.bytes_received = 0
        self.bytes_sent = 0
        self._snapshots: dict[str, dict] = {}
        self._others: list[dict] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def count(self, kind: str, status: int, received: int, sent: int) -> None:
        self.requests[kind] += 1
        if status >= 400:
            self.errors[kind] += 1
        self.bytes_received += received
        self.bytes_sent += sent

    def counts(self) -> dict:
        """This ingress's counters, as other ingress replicas' scrapes add them."""
        return {"requests": dict(self.requests), "errors": dict(self.errors), "bytes_received": self.bytes_received,
                "bytes_sent": self.bytes_sent}

    def render(self, snapshots: dict[str, dict], others: list[dict] = ()) -> bytes:
        """The page from the owners' ``snapshots``, this ingress's counters and ``others``' (other ingresses)."""
        self._snapshots = snapshots
        self._others = list(others)
        return generate_latest(self.registry)

    def collect(self):
        per_model = [snap for replica in self._snapshots.values() for snap in replica["models"].items()]
        open_streams = GaugeMetricFamily("lstminfer_open_streams", "Open sequences (streams) of a model",
                                         labels=["model"])
        for model in self.models:
            open_streams.add_metric([model], sum(s["open_streams"] for name, s in per_model if name == model))
        yield open_streams
        yield CounterMetricFamily("lstminfer_expired_streams", "Sequences ended by the idle timeout",
                                  value=sum(s["expired_total"] for _, s in per_model))
        requests = CounterMetricFamily("lstminfer_requests", "HTTP requests by endpoint kind", labels=["kind"])
        errors = CounterMetricFamily("lstminfer_errors", "HTTP requests answered with a status >= 400, by endpoint "
                                                         "kind", labels=["kind"])
        ingresses = [self.counts(), *self._others]
        for kind in KINDS:
            requests.add_metric([kind], sum(c["requests"].get(kind, 0) for c in ingresses))
            errors.add_metric([kind], sum(c["errors"].get(kind, 0) for c in ingresses))
        yield requests
        yield errors
        yield CounterMetricFamily("lstminfer_bytes_received", "Bytes received (request bodies, WebSocket frames)",
                                  value=sum(c["bytes_received"] for c in ingresses))
        yield CounterMetricFamily("lstminfer_bytes_sent", "Bytes sent (response bodies, WebSocket frames)",
                                  value=sum(c["bytes_sent"] for c in ingresses))
        for name, doc, field, bounds in _HISTOGRAMS:
            parts = []
            for _, snap in per_model:
                counts, total = snap[field]
                part = BucketCounts(bounds)
                part.counts, part.sum = list(counts), total
                parts.append(part)
            yield _histogram(name, doc, parts or [BucketCounts(bounds)])
        yield CounterMetricFamily("lstminfer_moved_streams", "Streams moved into a replica with their state "
                                  "(Ray replicas only)", value=sum(replica["moves"] for replica in self._snapshots.values()))
