"""Prometheus metrics of the gRPC server, served on their own port.

Each server gets its own ``CollectorRegistry`` so several servers (tests) can live in one process.
Abstention rate per class = ``profile_embed_head_predictions_total{outcome="abstained"}`` over all
outcomes, by ``head`` and ``argmax``; a rising rate for one class is the cheapest drift signal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class ServerMetrics:
    """Every metric the server records, on one registry.

    Attributes:
        registry: the registry the HTTP endpoint serves.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "profile_embed_requests",
            "RPCs handled, by method and status code",
            ["rpc", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "profile_embed_request_seconds",
            "RPC latency by method",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.profiles = Counter(
            "profile_embed_profiles", "Profiles received, by method", ["rpc"], registry=r
        )
        self.batch_size = Histogram(
            "profile_embed_batch_profiles",
            "Profiles per encoder forward pass",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "profile_embed_batch_padded_tokens",
            "Padded tokens per encoder forward pass",
            buckets=tuple(64 * 2**i for i in range(12)),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "profile_embed_batch_seconds",
            "Encoder forward pass duration",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "profile_embed_queue_depth", "Profiles waiting for the encoder", registry=r
        )
        self.cache_hits = Counter(
            "profile_embed_cache_hits", "Embeddings served from the cache", registry=r
        )
        self.cache_misses = Counter(
            "profile_embed_cache_misses", "Embeddings computed by the encoder", registry=r
        )
        self.cache_hit_ratio = Gauge(
            "profile_embed_cache_hit_ratio", "Cache hits / lookups since start", registry=r
        )
        self.head_predictions = Counter(
            "profile_embed_head_predictions",
            "Head predictions by head, argmax class and outcome (assigned | abstained)",
            ["head", "argmax", "outcome"],
            registry=r,
        )
        self.ready = Gauge(
            "profile_embed_ready", "1 when models are loaded and serving", registry=r
        )
        self._lock = threading.Lock()
        self._hits = 0
        self._lookups = 0
        self._http: Any = None
        self.port: int | None = None

    def bind_queue_depth(self, fn: Callable[[], float]) -> None:
        """Read the queue depth from ``fn`` at scrape time."""
        self.queue_depth.set_function(fn)

    def observe_batch(self, n: int, padded_tokens: int, seconds: float) -> None:
        """Record one forward pass (the batcher's ``on_batch`` callback)."""
        self.batch_size.observe(n)
        self.batch_tokens.observe(padded_tokens)
        self.batch_seconds.observe(seconds)

    def observe_cache(self, hits: int, misses: int) -> None:
        """Record cache lookups of one request."""
        if hits:
            self.cache_hits.inc(hits)
        if misses:
            self.cache_misses.inc(misses)
        with self._lock:
            self._hits += hits
            self._lookups += hits + misses
            if self._lookups:
                self.cache_hit_ratio.set(self._hits / self._lookups)

    def observe_predictions(
        self, head: str, argmax: Sequence[str], abstained: Sequence[bool]
    ) -> None:
        """Record one head's predictions (per class, assigned or abstained)."""
        counts: dict[tuple[str, str], int] = {}
        for label, abst in zip(argmax, abstained, strict=True):
            key = (label, "abstained" if abst else "assigned")
            counts[key] = counts.get(key, 0) + 1
        for (label, outcome), n in counts.items():
            self.head_predictions.labels(head, label, outcome).inc(n)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (a daemon thread); return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        self.port = int(server.server_address[1])
        logger.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
