"""Prometheus metrics of the gRPC server, served on their own port.

Each server gets its own ``CollectorRegistry`` so several servers (tests) can live in one process.
``profile_embed_head_predictions_total{head, argmax, outcome}`` counts predictions by the argmax
class and the outcome: ``assigned`` or the abstention reason (``heads.base.ABSTAIN_REASONS``).
Abstention rate per class = ``outcome!="assigned"`` over all outcomes, by ``head`` and ``argmax``;
a rising rate for one class, or a rising ``outcome="out_of_distribution"`` share, is the cheapest
shift signal. Label values are bounded: the head's labels x (1 + len(ABSTAIN_REASONS)) outcomes.
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from heads.base import ABSTAIN_REASONS

logger = logging.getLogger(__name__)

#: ``outcome`` label values of ``profile_embed_head_predictions_total``.
ASSIGNED = "assigned"
OUTCOMES: tuple[str, ...] = (ASSIGNED, *ABSTAIN_REASONS)

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 5, 10, 30
)  # fmt: skip
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


#: Seconds a metrics connection may take for its TLS handshake, and may sit idle.
HANDSHAKE_TIMEOUT_S = 10.0
#: The ``rpc`` label of a refused call to a method the server does not have.
UNKNOWN_RPC = "unknown"


class ServerMetrics:
    """Every metric the server records, on one registry.

    Attributes:
        registry: the registry the HTTP endpoint serves.
    """

    def __init__(self, methods: Iterable[str] = ()) -> None:
        # The full paths of the methods the server has: a refused call to any other path is
        # counted as rpc="unknown", so made-up method names cannot grow the label set.
        self.methods = frozenset(methods)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "profile_embed_requests",
            "RPCs handled, by method and status code",
            ["rpc", "code"],
            registry=r,
        )
        # By status code too: a fast refusal and a served call are different latencies, and
        # a dashboard (or bench/adversarial.py) must be able to read the served ones alone.
        self.latency = Histogram(
            "profile_embed_request_seconds",
            "RPC latency by method and status code (calls that reached a handler)",
            ["rpc", "code"],
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
        self.queue_delay = Gauge(
            "profile_embed_queue_delay_estimate_seconds",
            "Estimated wait of a profile queued now: the work ahead at the speed admission "
            "plans with (new calls are shed above --max-queue-delay-ms)",
            registry=r,
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
            "Head predictions by head, argmax class and outcome (assigned | "
            + " | ".join(ABSTAIN_REASONS)
            + ")",
            ["head", "argmax", "outcome"],
            registry=r,
        )
        self.calls_in_progress = Gauge(
            "profile_embed_calls_in_progress", "Calls admitted and not yet finished", registry=r
        )
        self.inflight_bytes = Gauge(
            "profile_embed_inflight_request_bytes",
            "Request-body bytes held, plus the worst case of every read in progress",
            registry=r,
        )
        self.idle_reads_evicted = Counter(
            "profile_embed_idle_reads_evicted",
            "Reads whose message had not arrived within the idle limit, ended to give their "
            "room in the request byte budget to a waiting read (also counted as "
            "RESOURCE_EXHAUSTED under profile_embed_requests_total)",
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

    def bind_queue(self, depth: Callable[[], float], delay: Callable[[], float]) -> None:
        """Read the queue's depth and estimated delay at scrape time."""
        self.queue_depth.set_function(depth)
        self.queue_delay.set_function(delay)

    def bind_intake(self, calls: Callable[[], float], inflight: Callable[[], float]) -> None:
        """Read calls in progress and in-flight request bytes at scrape time."""
        self.calls_in_progress.set_function(calls)
        self.inflight_bytes.set_function(inflight)

    def refused(self, method: str, code: str) -> None:
        """Count a call refused before its handler ran (auth, intake), by method and code."""
        rpc = method.rsplit("/", 1)[-1] if method in self.methods else UNKNOWN_RPC
        self.requests.labels(rpc, code).inc()

    def observe_batch(self, n: int, padded_tokens: int, seconds: float) -> None:
        """Record one forward pass (the batcher's ``on_batch`` callback)."""
        self.batch_size.observe(n)
        self.batch_tokens.observe(padded_tokens)
        self.batch_seconds.observe(seconds)

    def observe_request(self, rpc: str, code: str, seconds: float) -> None:
        """Record one finished call: its count and its latency, both by method and status code."""
        self.requests.labels(rpc, code).inc()
        self.latency.labels(rpc, code).observe(seconds)

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

    def declare_head(self, head: str, labels: Iterable[str]) -> None:
        """Create a head's prediction series at 0 (label x outcome) so rates exist at once."""
        for label in labels:
            for outcome in OUTCOMES:
                self.head_predictions.labels(head, label, outcome)

    def observe_predictions(
        self, head: str, argmax: Sequence[str], reasons: Sequence[str | None]
    ) -> None:
        """Record one head's predictions by argmax class and outcome.

        Args:
            head: the head's name.
            argmax: each prediction's argmax label.
            reasons: each prediction's ``reason`` (None = assigned).

        Raises:
            ValueError: a reason outside ``ABSTAIN_REASONS`` (the label set stays bounded).
        """
        counts: dict[tuple[str, str], int] = {}
        for label, reason in zip(argmax, reasons, strict=True):
            outcome = ASSIGNED if reason is None else reason
            if outcome not in OUTCOMES:
                raise ValueError(
                    f"prediction reason {reason!r} is not one of {list(ABSTAIN_REASONS)} (or None)"
                )
            key = (label, outcome)
            counts[key] = counts.get(key, 0) + 1
        for (label, outcome), n in counts.items():
            self.head_predictions.labels(head, label, outcome).inc(n)

    def serve(
        self,
        host: str,
        port: int,
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
        client_cafile: str | None = None,
        tokens: Iterable[bytes] = (),
    ) -> int:
        """Start the HTTP(S) endpoint (a daemon thread); return the bound port.

        Args:
            host: interface to bind.
            port: port (0: any free one).
            certfile: PEM certificate chain; with ``keyfile`` the endpoint speaks HTTPS only.
            keyfile: its private key.
            client_cafile: with TLS, require client certificates signed by this CA.
            tokens: when given, every scrape needs ``Authorization: Bearer <one of them>``.
        """
        app = make_wsgi_app(self.registry)
        accepted = tuple(tokens)
        if accepted:
            app = _bearer_only(app, accepted)
        server_cls: type[_ThreadingServer] = (
            _ThreadingServerV6 if ":" in host.strip("[]") else _ThreadingServer
        )
        if certfile is not None:
            server_cls = type(f"_TLS{server_cls.__name__}", (_HandshakeInThread, server_cls), {})
        server = make_server(host.strip("[]"), port, app, server_cls, handler_class=_QuietHandler)
        if certfile is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            if client_cafile is not None:
                ctx.load_verify_locations(client_cafile)
                ctx.verify_mode = ssl.CERT_REQUIRED
            # The handshake runs in the connection's own thread (_HandshakeInThread), not in
            # accept(): there one silent client would hold up every scrape.
            server.socket = ctx.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
        self._http = server
        self.port = int(server.server_address[1])
        logger.info(
            "metrics on %s://%s:%d/metrics%s",
            "https" if certfile else "http",
            host,
            self.port,
            " (bearer token)" if accepted else "",
        )
        return self.port

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServerV6(_ThreadingServer):
    address_family = socket.AF_INET6


class _HandshakeInThread:
    """TLS handshake in the connection's thread, bounded by ``HANDSHAKE_TIMEOUT_S``.

    A failed or timed-out handshake (a plain-HTTP client, a bad certificate, a silent peer)
    ends that connection quietly; the server keeps accepting.
    """

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(HANDSHAKE_TIMEOUT_S)
            request.do_handshake()
        except (OSError, ValueError):  # ssl.SSLError and socket timeouts are OSErrors
            return
        super().finish_request(request, client_address)  # type: ignore[misc]


class _QuietHandler(WSGIRequestHandler):
    # A connection that sends nothing frees its thread after this long.
    timeout = HANDSHAKE_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (one line per scrape would flood the log)."""


def _bearer_only(app: Any, tokens: tuple[bytes, ...]) -> Any:
    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").encode().partition(b" ")
        ok = scheme.lower() == b"bearer" and any(
            [hmac.compare_digest(token.strip(), t) for t in tokens]
        )
        if not ok:
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"missing or invalid bearer token\n"]
        return app(environ, start_response)

    return guarded
