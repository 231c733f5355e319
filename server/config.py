"""Runtime settings of the gRPC server: one frozen dataclass built by flags, env vars and tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedder.devices import check_device_spec
from embedder.numerics import check_numerics_option

#: Instagram's limits, for messages; longer text is accepted and cut by the encoder's token budget.
INSTAGRAM_BIO_CHARS = 150
INSTAGRAM_CAPTION_CHARS = 2200


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything ``profile-embed serve`` can be told; each field is one flag (``--max-wait-ms``).

    Attributes:
        model: the model folder (``model.json``, ``encoder/``, ``heads/``).
        numerics: encoder numerics (``embedder.numerics.NUMERICS_OPTIONS``); None or ``auto``:
            the fastest numerics this CPU runs among those the model's accuracy check allows
            (``heads.model.load_encoder``), the same rule as ``profile-embed batch`` and ``embed``.
        device: where the encoder runs: ``auto`` (a GPU when torch sees one), ``cpu``, ``cuda``
            or ``cuda:N``; on a GPU only the fp32 and bf16 numerics run
            (``embedder.devices``).
        host: interface to bind; ``0.0.0.0`` or ``[::]`` to accept remote callers.
        port: gRPC port; 0 picks a free one.
        metrics_port: Prometheus port (not the gRPC one); 0 picks a free one, None: no metrics.
        metrics_host: interface of the metrics endpoint; loopback unless told otherwise, whatever
            ``host`` is (a scraper on another machine needs it set, ideally with the two below).
        metrics_tls: serve metrics over HTTPS with ``tls_cert``/``tls_key`` (and require a client
            certificate signed by ``tls_client_ca`` when that is set).
        metrics_auth: require ``Authorization: Bearer <token>`` from ``auth_token_file``.
        max_batch_tokens: padded-token budget of one forward pass (profiles x longest input).
        max_batch_profiles: most profiles in one forward pass.
        max_wait_ms: how long the first queued profile waits for others to join its batch.
        max_queue: most profiles waiting for the encoder; beyond it calls get RESOURCE_EXHAUSTED.
        max_queue_delay_ms: most estimated wait in the encoder queue (queued tokens x the measured
            seconds per token); a call that would wait longer gets RESOURCE_EXHAUSTED at once,
            and when the queue already holds that much, before its body is read. 0: no bound.
        workers: forward passes that may run at once (each in its own thread).
        encoder_nice: niceness (0-19) of the encoder's threads and of the intra-op threads
            they start: the event loop (admission, RESOURCE_EXHAUSTED answers, I/O) then runs
            before forward passes when both want a core, and passes use what it leaves. The
            encoder also yields to every other process: on a machine shared with its clients
            or other jobs, 10 cut RESOURCE_EXHAUSTED p99 under a flood but starved the passes
            (docs/BENCHMARKS.md, Robustness). 0 (default): same priority as the rest.
        threads: intra-op threads of each forward pass (torch or ONNX Runtime); None: the
            physical cores this process may use divided by ``workers`` (at least 1), so the
            passes never ask for more cores than there are.
        pass_overhead_tokens: fixed cost of one forward pass in token equivalents; a collected
            batch runs as the length-sorted passes minimising padded tokens plus this cost per
            pass (``ProfileEncoder.encode_texts``), instead of one pass padded to its longest.
        cache: SQLite embedding cache file (created if missing); None turns the cache off.
        memory_cache: vectors kept in memory by profile content (skips assembly on a hit); 0 = off.
        index: similarity index folder (loaded if present, written on UpsertIndex); None: no index.
        tls_cert: PEM certificate chain; with ``tls_key`` turns TLS on.
        tls_key: PEM private key of ``tls_cert``.
        tls_client_ca: PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
        auth_token_file: file with accepted bearer tokens, one per line; None: no token auth.
        max_profiles_per_request: most profiles in one Embed/Predict/UpsertIndex/... call.
        max_field_chars: hard cap on characters per text field (bigger is rejected, not truncated).
        max_captions: hard cap on captions per profile (the first 5 are used, the rest dropped).
        max_message_bytes: largest gRPC message received or sent. 16 MiB holds a full request
            of 2,048 profiles at 8 KiB each (bio, names and three full 2,200-character captions
            in a Latin script); the encoder reads at most 5 captions cut to its token budget, so
            bigger profiles go in smaller requests or over PredictStream.
        max_concurrent_calls: calls in progress at once (health checks excepted); beyond:
            RESOURCE_EXHAUSTED before the body is read.
        max_inflight_bytes: request-body bytes being read or held by calls in progress; a read
            needs room for a message of ``max_message_bytes`` (server.intake).
        max_search_k: most neighbours one SearchSimilar may ask for.
        grace_s: on SIGTERM, how long in-flight calls get to finish.
    """

    model: Path | None = None
    numerics: str | None = None
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = 9464
    metrics_host: str = "127.0.0.1"
    metrics_tls: bool = False
    metrics_auth: bool = False
    max_batch_tokens: int = 16384
    max_batch_profiles: int = 256
    max_wait_ms: float = 5.0
    max_queue: int = 8192
    max_queue_delay_ms: float = 1000.0
    workers: int = 1
    encoder_nice: int = 0
    threads: int | None = None
    pass_overhead_tokens: int = 64
    cache: Path | None = None
    memory_cache: int = 50_000
    index: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_token_file: Path | None = None
    max_profiles_per_request: int = 2048
    max_field_chars: int = 100_000
    max_captions: int = 100
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_calls: int = 128
    max_inflight_bytes: int = 128 * 1024 * 1024
    max_search_k: int = 1000
    grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.numerics is not None:
            check_numerics_option(self.numerics)
        check_device_spec(self.device, field="device")
        _check_port("port", self.port)
        if self.metrics_port is not None:
            _check_port("metrics_port", self.metrics_port)
            if self.metrics_port == self.port and self.port != 0:
                raise ValueError(f"metrics_port must differ from port, both are {self.port}")
        _check_positive("max_batch_tokens", self.max_batch_tokens)
        _check_positive("max_batch_profiles", self.max_batch_profiles)
        _check_positive("workers", self.workers)
        if not 0 <= self.encoder_nice <= 19:
            raise ValueError(f"encoder_nice must be in 0..19, got {self.encoder_nice}")
        if self.threads is not None:
            _check_positive("threads", self.threads)
        if self.pass_overhead_tokens < 0:
            raise ValueError(f"pass_overhead_tokens must be >= 0, got {self.pass_overhead_tokens}")
        _check_positive("max_profiles_per_request", self.max_profiles_per_request)
        _check_positive("max_search_k", self.max_search_k)
        if self.memory_cache < 0:
            raise ValueError(f"memory_cache must be >= 0, got {self.memory_cache}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be in 0..1000, got {self.max_wait_ms}")
        if self.max_queue < self.max_profiles_per_request:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be >= max_profiles_per_request "
                f"({self.max_profiles_per_request}), or one full request could never be queued"
            )
        if self.max_field_chars < INSTAGRAM_CAPTION_CHARS:
            raise ValueError(
                f"max_field_chars must be >= {INSTAGRAM_CAPTION_CHARS} (Instagram's caption "
                f"limit), "
                f"got {self.max_field_chars}"
            )
        if self.max_captions < 1:
            raise ValueError(f"max_captions must be >= 1, got {self.max_captions}")
        if not 1024 * 1024 <= self.max_message_bytes <= 2**31 - 1:
            raise ValueError(
                f"max_message_bytes must be in 1 MiB..2 GiB, got {self.max_message_bytes}"
            )
        _check_positive("max_concurrent_calls", self.max_concurrent_calls)
        if self.max_inflight_bytes < self.max_message_bytes:
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be >= max_message_bytes "
                f"({self.max_message_bytes}), or a message of the largest size could never be read"
            )
        if not 0 <= self.max_queue_delay_ms <= 600_000:
            raise ValueError(
                f"max_queue_delay_ms must be in 0..600000 (0 = no bound), got "
                f"{self.max_queue_delay_ms}"
            )
        if self.metrics_tls and self.tls_cert is None:
            raise ValueError("metrics_tls needs tls_cert and tls_key")
        if self.metrics_auth and self.auth_token_file is None:
            raise ValueError("metrics_auth needs auth_token_file (the accepted tokens)")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")

    @property
    def threads_per_worker(self) -> int:
        """``threads``, else the usable physical cores shared out among ``workers``."""
        if self.threads is not None:
            return self.threads
        from embedder.numerics import default_threads

        return max(1, default_threads() // self.workers)

    @property
    def tls(self) -> bool:
        """True when the server listens with TLS."""
        return self.tls_cert is not None

    @property
    def address(self) -> str:
        """``host:port`` as gRPC expects it."""
        return f"{self.host}:{self.port}"


def _check_port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{name} must be in 0..65535, got {value}")


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
