"""`lstminfer serve`: the edge service (KServe v2 HTTP, WebSocket streams, sequence batching)."""
