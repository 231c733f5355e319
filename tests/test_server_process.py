"""``profile-embed serve`` as a real process: kill -9 + restart keeps the cache, SIGTERM drains
in-flight calls, and artifacts of another embedding_version are refused at startup (exit 1)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from server_helpers import build_tiny_model, synthetic_profiles
from waiting import wait_for

from server._codegen import modules
from server.client import ProfileEmbeddingClient, to_message
from server.config import ServerConfig

pb2, _ = modules()
CLI = [sys.executable, "-c", "import sys; from server.cli import main; sys.exit(main())"]
READY = re.compile(r"serving (emb-\w+) on [\d.]+:(\d+)")
METRICS = re.compile(r"metrics on http://([\d.]+:\d+)/metrics")


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # the servers only read it


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    from conftest import build_tiny_bert, build_tiny_tokenizer

    base = tmp_path_factory.mktemp("other_base")
    tok = build_tiny_tokenizer(base)
    build_tiny_bert(base, vocab_size=len(tok), seed=7)
    return build_tiny_model(base, seed=1)


class ServeProcess:
    """``profile-embed -v serve ...`` with stderr collected; waits for the ready log line."""

    def __init__(self, *args: str, wait: bool = True) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*CLI, "-v", "serve", "--port", "0", "--metrics-port", "-1", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self.metrics: str | None = None  # host:port, with --metrics-port 0 among ``args``
        self._ready = threading.Event()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        if wait and not self._ready.wait(180):
            self.proc.kill()
            raise AssertionError("server never became ready:\n" + "".join(self.lines[-30:]))

    def _pump(self) -> None:
        with self.proc.stderr:  # closed at the process's exit (EOF), not left to the GC
            for line in self.proc.stderr:
                self.lines.append(line)
                if found := METRICS.search(line):
                    self.metrics = found.group(1)
                match = READY.search(line)
                if match:
                    self.port = int(match.group(2))
                    self._ready.set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._pump_thread.join(timeout)  # every line of its log is in ``lines``
        return code

    def calls_in_progress(self) -> float:
        """The server's own count of admitted, unfinished calls (its metrics endpoint)."""
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return float(re.search(r"^profile_embed_calls_in_progress (\S+)$", text, re.M).group(1))


@pytest.mark.slow  # two `profile-embed serve` processes, each loading torch and the model
def test_cache_survives_kill9_and_sigterm_drains_in_flight_calls(model_dir, tmp_path):
    cache = tmp_path / "cache.sqlite"
    profiles = synthetic_profiles(30, seed=21)[0]
    request = pb2.EmbedRequest(profiles=[to_message(p) for p in profiles])

    first = ServeProcess("--model", str(model_dir), "--cache", str(cache))
    try:
        with ProfileEmbeddingClient(first.target) as c:
            before = c.stub.Embed(request, timeout=60)
        assert not any(e.cache_hit for e in before.embeddings)
    finally:
        first.proc.send_signal(signal.SIGKILL)  # acknowledged vectors must already be on disk
        first.wait()

    second = ServeProcess(
        "--model", str(model_dir), "--cache", str(cache), "--max-wait-ms", "1000", "--grace", "30",
        "--metrics-port", "0",
    )  # fmt: skip
    try:
        with ProfileEmbeddingClient(second.target) as c:
            after = c.stub.Embed(request, timeout=60)
            assert all(e.cache_hit for e in after.embeddings)
            for a, b in zip(before.embeddings, after.embeddings, strict=True):
                np.testing.assert_array_equal(
                    np.frombuffer(a.vector, "<f4"), np.frombuffer(b.vector, "<f4")
                )
            # In-flight calls: fresh profiles wait up to 1 s in the batcher for company (SIGTERM
            # ends that wait: draining does not add it to the test's time).
            fresh = synthetic_profiles(8, seed=22)[0]
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(c.predict, [p]) for p in fresh]
                wait_for(lambda: second.calls_in_progress() == 8, "the 8 calls reach the server")
                assert not any(f.done() for f in futures), "answered before SIGTERM: no drain"
                second.proc.send_signal(signal.SIGTERM)
                results = [f.result(timeout=60) for f in futures]
            assert [r[0]["id"] for r in results] == [p.id for p in fresh]
        assert second.wait() == 0
        log = "".join(second.lines)
        assert "draining" in log and "stopped" in log
        assert "based in" not in log  # profile text is never logged
    finally:
        if second.proc.poll() is None:
            second.proc.kill()


def test_head_of_another_embedding_version_is_refused_at_startup(
    model_dir, other_model, tmp_path, capsys
):
    mixed = tmp_path / "mixed"
    shutil.copytree(model_dir, mixed)
    shutil.rmtree(mixed / "heads" / "category")
    other_model.heads["category"].save(mixed / "heads" / "category" / "v1")
    from server.cli import main

    code = main(["serve", "--model", str(mixed), "--port", "0", "--metrics-port", "-1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "profile-embed serve: error:" in err and other_model.encoder.embedding_version in err
    assert "Traceback" not in err


def test_index_of_another_embedding_version_is_refused(model_dir, other_model, tmp_path):
    from embedder.errors import VersionMismatchError
    from embedder.index import SimilarityIndex
    from server.runtime import Runtime

    enc = other_model.encoder
    index = SimilarityIndex(enc.embedding_version, enc.dim)
    index.upsert(["a"], enc.encode(synthetic_profiles(1)[0]))
    index.save(tmp_path / "index")
    config = ServerConfig(model=model_dir, index=tmp_path / "index", port=0, metrics_port=None)
    with pytest.raises(VersionMismatchError, match=enc.embedding_version):
        Runtime.load(config)


def test_cache_rows_of_another_version_are_never_served(model_dir, other_model, tmp_path):
    from embedder.cache import EmbeddingCache
    from server.runtime import Runtime

    profiles = synthetic_profiles(5, seed=23)[0]
    enc = other_model.encoder
    with EmbeddingCache(
        tmp_path / "c.sqlite", embedding_version=enc.embedding_version, dim=enc.dim
    ) as other_cache:
        texts = enc.assemble(profiles)
        from embedder.profile import text_hash

        other_cache.put_many([text_hash(t) for t in texts], enc.encode_texts(texts))
    config = ServerConfig(model=model_dir, cache=tmp_path / "c.sqlite", port=0, metrics_port=None)
    runtime = Runtime.load(config)
    try:
        assert runtime.embedding_version != enc.embedding_version
        assert runtime.cache.get_many([text_hash(t) for t in texts]) == [None] * len(texts)
    finally:
        runtime.cache.close()


def test_grpc_status_of_refused_plaintext_call_to_dead_port():
    with ProfileEmbeddingClient("127.0.0.1:9", timeout=2) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.info()
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
