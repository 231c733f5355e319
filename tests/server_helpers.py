"""Helpers for the server tests: a tiny encoder with two quickly fitted heads, TLS certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from embedder.profile import Profile

#: (city word the tiny tokenizer knows, ISO country, category) for synthetic labelled profiles.
CITIES = (
    ("paris", "FR", "food"),
    ("lyon", "FR", "travel"),
    ("berlin", "DE", "music"),
    ("tokyo", "JP", "travel"),
    ("madrid", "ES", "food"),
    ("london", "GB", "music"),
    ("rio", "BR", "fitness"),
    ("seoul", "KR", "music"),
)


def synthetic_profiles(n: int, seed: int = 0) -> tuple[list[Profile], list[str], list[str]]:
    """Profiles whose bio names a city, with their country and category labels."""
    rng = np.random.default_rng(seed)
    profiles, countries, categories = [], [], []
    for i in range(n):
        city, country, category = CITIES[int(rng.integers(len(CITIES)))]
        extra = " ".join(rng.choice(["love", "food", "coffee", "gym", "beach"], size=2))
        profiles.append(
            Profile(
                id=f"p{seed}-{i}",
                username=f"user{i}",
                full_name="hello",
                biography=f"based in {city} {extra}",
                captions=(f"{city} {extra}", "hola"),
            )
        )
        countries.append(country)
        categories.append(category)
    return profiles, countries, categories


def build_tiny_model(base_dir: Path, *, seed: int = 0) -> SimpleNamespace:
    """An encoder from ``base_dir`` plus fitted ``geolocation`` and ``category`` heads (seconds).

    Most tests take the session's ``tiny_model`` fixture instead; this builds another one (say,
    from another base, for an embedding-version mismatch).
    """
    from embedder.encoder import ProfileEncoder

    encoder = ProfileEncoder.from_base(base_dir, num_layers=2, threads=1)
    return SimpleNamespace(encoder=encoder, heads=fit_tiny_heads(encoder, seed=seed))


def fit_tiny_heads(encoder, *, seed: int = 0) -> dict:
    """``geolocation`` and ``category`` heads fitted on 160 synthetic profiles (seconds)."""
    from embedder.labels import CATEGORIES, to_geo_label
    from heads.softmax import standard_head

    profiles, countries, categories = synthetic_profiles(240, seed=seed)
    emb = encoder.encode(profiles)
    geo = [to_geo_label(c) for c in countries]
    cats = [c if c in CATEGORIES else CATEGORIES[0] for c in categories]
    heads = {}
    for name, labels in (("geolocation", geo), ("category", cats)):
        head = standard_head(name, embedding_version=encoder.embedding_version, in_dim=encoder.dim)
        head.fit(
            emb[:160],
            labels[:160],
            val_embeddings=emb[160:],
            val_labels=labels[160:],
            epochs=40,
            missing_classes="abstain",
            target_precision=0.5,
        )
        heads[name] = head
    return heads


def self_signed_cert(tmp: Path, name: str = "localhost") -> tuple[Path, Path]:
    """Write a self-signed cert (its own CA) for 127.0.0.1/localhost; return cert, key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class ServerThread:
    """A real grpc.aio server on 127.0.0.1:0, on its own event loop in a thread.

    With ``model`` (the ``tiny_model`` fixture or :func:`build_tiny_model`) the runtime is
    attached directly; without it the server loads ``config.model`` as ``profile-embed serve``
    does.
    """

    def __init__(self, config, model=None, *, cache=None, index=None, load=True) -> None:
        import asyncio
        import threading

        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.running = self.call(self._start(model, cache, index, load))

    async def _start(self, model, cache, index, load):
        from server.app import start_server
        from server.runtime import Runtime

        running = await start_server(self.config, load=load and model is None)
        if model is not None:
            runtime = Runtime(self.config, model, cache=cache, index=index, metrics=running.metrics)
            await running.attach(runtime)
        return running

    def call(self, coro, timeout: float = 120):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def stop(self, grace: float = 0) -> None:
        try:
            self.call(self.running.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def save_encoder_only_model(base_dir: Path, folder: Path) -> Path:
    """A model folder as ``train`` writes it: a tiny encoder and an unfitted geolocation head.

    For the commands that add to a model (``train-head``, ``calibrate``).
    """
    from embedder.encoder import ProfileEncoder
    from embedder.labels import GEO_LABELS
    from embedder.profile import AssemblyConfig
    from heads.model import save_model
    from heads.registry import build_head

    enc = ProfileEncoder.from_base(base_dir, assembly=AssemblyConfig(max_tokens=32, bio_tokens=16))
    head = build_head(
        "softmax_abstain",
        name="geolocation",
        labels=GEO_LABELS,
        embedding_version=enc.embedding_version,
        in_dim=enc.dim,
    )
    return save_model(folder, enc, {"geolocation": head})
