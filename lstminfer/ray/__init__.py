"""lstminfer on Ray Serve (``pip install 'lstminfer[ray]'``): ``lstminfer serve --ray --replicas N``.

The same HTTP API and WebSocket stream as ``lstminfer serve``, over N replicas that each own a
``StreamPool`` and its batcher; a sequence's requests reach the replica that owns it, and a stream
moves with its state when the replicas change. ``app`` is the application builder for
``serve run lstminfer.ray:app model=PATH replicas=N``; importing this package imports no Ray.
"""
from __future__ import annotations


def app(args: dict):
    """``serve run lstminfer.ray:app key=value ...``: see ``lstminfer.ray.application.app``."""
    from .application import app as builder

    return builder(args)


__all__ = ["app"]
