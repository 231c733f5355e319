"""TLS, mTLS and bearer-token auth on and off; reflection clients without the proto files."""

from __future__ import annotations

import grpc
import pytest
from server_helpers import ServerThread, self_signed_cert

from server.client import ProfileEmbeddingClient
from server.config import ServerConfig

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("certs")
    server_cert, server_key = self_signed_cert(tmp, "localhost")
    client_cert, client_key = self_signed_cert(tmp, "client")
    return {"cert": server_cert, "key": server_key, "ccert": client_cert, "ckey": client_key}


def _code(fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def test_token_auth_rejects_missing_and_wrong_tokens_but_health_stays_open(tiny_model, tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# rotated tokens\nold-token-9876543210\n{TOKEN}\n")
    srv = ServerThread(
        ServerConfig(port=0, metrics_port=None, auth_token_file=token_file), tiny_model
    )
    try:
        with ProfileEmbeddingClient(srv.target) as anon:
            assert anon.health() == "SERVING"
            assert _code(anon.info) == grpc.StatusCode.UNAUTHENTICATED
            assert _code(lambda: list(anon.predict_stream([{"id": "a"}]))) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
        with ProfileEmbeddingClient(srv.target, token="wrong-token-000000000") as bad:
            assert _code(lambda: bad.predict([{"id": "a"}])) == grpc.StatusCode.UNAUTHENTICATED
        for token in (TOKEN, "old-token-9876543210"):
            with ProfileEmbeddingClient(srv.target, token=token) as good:
                assert good.predict([{"id": "a"}])[0]["id"] == "a"
                rows = list(good.predict_stream([{"id": "s1"}, {"id": "s2"}]))
                assert {r["id"] for r in rows} == {"s1", "s2"}
    finally:
        srv.stop()


def test_tls_server_accepts_tls_clients_and_refuses_plaintext(tiny_model, certs):
    config = ServerConfig(port=0, metrics_port=None, tls_cert=certs["cert"], tls_key=certs["key"])
    srv = ServerThread(config, tiny_model)
    target = f"localhost:{srv.running.port}"
    try:
        with ProfileEmbeddingClient(target, root_certificates=certs["cert"]) as c:
            assert c.info()["dim"] == tiny_model.encoder.dim
        with ProfileEmbeddingClient(target, timeout=3) as plain:
            assert _code(plain.info) == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def test_mtls_requires_a_client_certificate_signed_by_the_ca(tiny_model, certs):
    config = ServerConfig(
        port=0,
        metrics_port=None,
        tls_cert=certs["cert"],
        tls_key=certs["key"],
        tls_client_ca=certs["ccert"],
    )
    srv = ServerThread(config, tiny_model)
    target = f"localhost:{srv.running.port}"
    try:
        with ProfileEmbeddingClient(target, root_certificates=certs["cert"], timeout=3) as c:
            assert _code(c.info) == grpc.StatusCode.UNAVAILABLE
        with ProfileEmbeddingClient(
            target,
            root_certificates=certs["cert"],
            client_cert=certs["ccert"],
            client_key=certs["ckey"],
        ) as c:
            assert c.predict([{"id": "m"}])[0]["id"] == "m"
    finally:
        srv.stop()


def test_bad_security_settings_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="together"):
        ServerConfig(tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="mTLS"):
        ServerConfig(tls_client_ca=tmp_path / "ca.pem")
    from embedder.errors import ArtifactError
    from server.auth import read_tokens

    (tmp_path / "empty").write_text("\n# nothing\n")
    with pytest.raises(ArtifactError, match="no token"):
        read_tokens(tmp_path / "empty")
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ArtifactError, match="16"):
        read_tokens(tmp_path / "short")
    with pytest.raises(ArtifactError, match="cannot read"):
        read_tokens(tmp_path / "missing")


def test_reflection_client_calls_predict_without_proto_files(tiny_model):
    from grpc_requests import Client

    srv = ServerThread(ServerConfig(port=0, metrics_port=None), tiny_model)
    try:
        client = Client.get_by_endpoint(srv.target)
        services = set(client.service_names)
        assert {"profile_embedding.v1.ProfileEmbeddingService", "grpc.health.v1.Health"} <= services
        result = client.request(
            "profile_embedding.v1.ProfileEmbeddingService",
            "Predict",
            {"profiles": [{"id": "r1", "biography": "based in paris"}], "top_k": 2},
        )
        assert result["results"][0]["id"] == "r1"
        heads = {p["head"] for p in result["results"][0]["predictions"]}
        assert heads == {"geolocation", "category"}
    finally:
        srv.stop()
