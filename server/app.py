"""Build and run the gRPC server: service, health, reflection, TLS, auth, metrics, SIGTERM.

Start-up order: the port opens first with health ``NOT_SERVING`` (RPCs answer UNAVAILABLE),
the model, cache and index load in a thread, then health turns ``SERVING``. A load failure (a
head, cache or index of another ``embedding_version``) stops the server and is raised, so
``profile-embed serve`` prints it and exits 1. On SIGTERM or SIGINT: health ``NOT_SERVING``, new
calls refused, in-flight calls get ``grace_s`` to finish, the batcher drains, the cache closes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from embedder.errors import ArtifactError
from embedder.profile import Profile
from server._proto.profile_embedding.v1 import profile_embedding_pb2 as pb2
from server.auth import BearerTokenInterceptor, read_tokens
from server.config import ServerConfig
from server.errors import RequestLimits
from server.intake import Intake, IntakeInterceptor
from server.metrics import ServerMetrics
from server.runtime import Runtime
from server.service import SERVICE_NAME, ProfileEmbeddingServicer, add_to_server

logger = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
#: Profiles of the warm-up pass before SERVING (never cached): the encoder's first-pass costs
#: are paid, and the queue-delay bound starts from a measured speed. Simulated profiles, because
#: the speed is learnt per *estimated* token: repeated Latin filler has ~0.6 real tokens per
#: estimated one where mixed-language profiles have ~1, and a warm-up on filler let the first
#: callers in at 3x their real cost (``bench/adversarial.py``'s overload). They ship as package
#: data (the simulator's stream ``server-warm-up``, seed 0; a test keeps them equal) so that a
#: start does not load the simulator's gazetteer and word lists: 0.7 s, and ~90 MB of packages a
#: serving image would otherwise need.
WARM_UP_PROFILES = 32
WARM_UP_STREAM = "server-warm-up"
WARM_UP_FILE = Path(__file__).resolve().parent / "data" / "warm_up_profiles.jsonl"


def warm_up_profiles() -> list[Profile]:
    """The warm-up pass's profiles, read from ``WARM_UP_FILE``."""
    with open(WARM_UP_FILE, encoding="utf-8") as f:
        return [
            Profile.from_dict(json.loads(line), source=str(WARM_UP_FILE), line=i)[0]
            for i, line in enumerate(f, 1)
        ]


def warm_up_texts(assemble: Callable[[list[Any]], list[str]]) -> list[str]:
    """The warm-up pass's encoder inputs: ``warm_up_profiles`` assembled by the encoder."""
    return list(assemble(warm_up_profiles()))


@dataclass
class RunningServer:
    """A started server and its parts (tests and ``serve`` use the same object).

    Attributes:
        server: the grpc.aio server.
        port: the bound gRPC port.
        metrics: the metrics (``metrics.port`` is the bound HTTP port, None when off).
        health: the health servicer.
        servicer: the profile-embedding servicer (``servicer.runtime`` once loaded).
        config: the settings it runs with.
    """

    server: grpc.aio.Server
    port: int
    metrics: ServerMetrics
    health: Any
    servicer: ProfileEmbeddingServicer
    config: ServerConfig

    @property
    def target(self) -> str:
        """``host:port`` for clients."""
        return f"{self.config.host}:{self.port}"

    async def load(self) -> None:
        """Load the artifacts in a thread, start the batcher and turn health SERVING.

        Raises:
            EmbedderError: when an artifact is missing, broken or of another version.
        """
        loop = asyncio.get_running_loop()
        runtime = await loop.run_in_executor(None, Runtime.load, self.config, self.metrics)
        await self.attach(runtime)

    async def attach(self, runtime: Runtime) -> None:
        """Serve with an already loaded runtime: start its batcher and turn health SERVING."""
        loop = asyncio.get_running_loop()
        runtime.batcher.max_queue_delay_s = self.config.max_queue_delay_ms / 1000.0
        await runtime.batcher.lower_priority(self.config.encoder_nice)
        texts = await loop.run_in_executor(None, warm_up_texts, runtime.encoder.assemble)
        seconds = await runtime.batcher.calibrate(texts, runtime.encoder.encode_texts)
        logger.info("warm-up pass: %d profiles in %.0f ms", len(texts), 1000 * seconds)
        runtime.start()
        self.servicer.runtime = runtime
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self.metrics.ready.set(1)
        logger.info(
            "health SERVING: serving %s on %s (model %s)",
            runtime.embedding_version,
            self.target,
            self.config.model,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, let in-flight ones finish, drain, close."""
        grace = self.config.grace_s if grace is None else grace
        self.metrics.ready.set(0)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        runtime = self.servicer.runtime
        if runtime is not None:
            await runtime.close()
        self.metrics.close()
        logger.info("stopped")


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ArtifactError(f"cannot read {what} {path}: {err.strerror}") from err


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials (mTLS when ``tls_client_ca`` is set), or None for plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    key = _read(config.tls_key, "--tls-key")
    cert = _read(config.tls_cert, "--tls-cert")
    ca = _read(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _serve_metrics(config: ServerConfig, metrics: ServerMetrics, tokens: tuple[bytes, ...]) -> None:
    tls = config.metrics_tls
    metrics.serve(
        config.metrics_host,
        config.metrics_port or 0,
        certfile=str(config.tls_cert) if tls else None,
        keyfile=str(config.tls_key) if tls else None,
        client_cafile=str(config.tls_client_ca) if tls and config.tls_client_ca else None,
        tokens=tokens if config.metrics_auth else (),
    )


def _method_paths() -> list[str]:
    """The full path of every method this server registers (the metrics' known ``rpc`` labels)."""
    services = (
        pb2.DESCRIPTOR.services_by_name["ProfileEmbeddingService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    )
    return [f"/{svc.full_name}/{m.name}" for svc in services for m in svc.methods]


async def start_server(config: ServerConfig, *, load: bool = True) -> RunningServer:
    """Create, bind and start the server; with ``load`` also load the models (else call ``load()``).

    Raises:
        ArtifactError: unreadable TLS or token files, or the port cannot be bound.
        EmbedderError: a load failure (the server is stopped first).
    """
    metrics = ServerMetrics(_method_paths())
    servicer = ProfileEmbeddingServicer(RequestLimits.from_config(config), metrics)
    intake = Intake(
        config.max_concurrent_calls,
        config.max_inflight_bytes,
        config.max_message_bytes,
        on_evict=metrics.idle_reads_evicted.inc,
    )
    metrics.bind_intake(lambda: intake.calls, lambda: intake.committed)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    tokens: tuple[bytes, ...] = ()
    if config.auth_token_file is not None:
        tokens = read_tokens(config.auth_token_file)
        # First: a call without a valid token is refused before anything of its body is read.
        deny = BearerTokenInterceptor(
            tokens, on_reject=lambda method: metrics.refused(method, "UNAUTHENTICATED")
        )
        interceptors.append(deny)
    interceptors.append(IntakeInterceptor(intake, servicer.shed, metrics.refused))
    credentials = server_credentials(config)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # Without BDP probing a call's HTTP/2 window stays at 64 KiB until its body is read,
            # so bodies the intake has not admitted stay with the client (server.intake).
            ("grpc.http2.bdp_probe", 0),
        ],
    )
    add_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        if credentials is None:
            port = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, credentials)
    except RuntimeError as err:
        raise ArtifactError(f"cannot listen on {config.address}: {err}") from err
    await server.start()
    running = RunningServer(server, port, metrics, health_servicer, servicer, config)
    if config.metrics_port is not None:
        try:
            _serve_metrics(config, metrics, tokens)
        except OSError as err:
            await server.stop(0)
            raise ArtifactError(
                f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: "
                f"{err.strerror or err}"
            ) from err
    logger.info(
        "listening on %s:%d (%s%s), metrics port %s",
        config.host,
        port,
        "TLS" if credentials else "plaintext",
        ", token auth" if tokens else "",
        metrics.port,
    )
    if load:
        try:
            await running.load()
        except BaseException:
            await running.stop(0)
            raise
    return running


async def serve_until_signal(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; return the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_server(config, load=False)
    loader = asyncio.ensure_future(running.load())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if loader.done() and loader.exception() is not None:
        stopper.cancel()
        await running.stop(0)
        raise loader.exception()  # type: ignore[misc]
    if loader.done():
        freeze_heap()
    await stopper
    logger.info("signal received: draining (grace %.1f s)", config.grace_s)
    loader.cancel()
    await running.stop()
    return 0


def freeze_heap() -> None:
    """Exclude what exists after loading (the model: ~460k objects) from garbage collection.

    A full collection otherwise walks the whole model, 280 ms on a 2-core machine during which
    no call is answered (it was the tail of RESOURCE_EXHAUSTED latency under overload).
    """
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    logger.info(
        "gc: %d objects frozen after loading (%.0f ms)",
        gc.get_freeze_count(),
        1000 * (time.perf_counter() - start),
    )


def serve(config: ServerConfig) -> int:
    """Blocking entry point of ``profile-embed serve`` (fixes the malloc thresholds first)."""
    from server.allocator import fix_malloc_thresholds

    fix_malloc_thresholds()
    return asyncio.run(serve_until_signal(config))
