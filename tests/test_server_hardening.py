"""Issue 14: memory-bounded intake, validation before work, fast shedding, honest metrics."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import urllib.error
import urllib.request

import grpc
import pytest
from server_helpers import ServerThread, self_signed_cert
from waiting import until, wait_for

from embedder.errors import OverloadedError
from server._codegen import modules
from server.client import ProfileEmbeddingClient
from server.config import ServerConfig
from server.intake import Intake

pb2, pb2_grpc = modules()
SERVICE = "/profile_embedding.v1.ProfileEmbeddingService/"
TOKEN = "hardening-token-0123456789"
MIB = 1024 * 1024


def _unary(target, method, payload, *, token=None, timeout=30):
    """Send raw bytes to a method; return (code name, details)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as ch:
        call = ch.unary_unary(SERVICE + method)
        try:
            call(payload, timeout=timeout, metadata=metadata)
        except grpc.RpcError as err:
            return err.code().name, err.details()
    return "OK", ""


def _metrics(srv, **headers) -> str:
    url = f"http://127.0.0.1:{srv.running.metrics.port}/metrics"
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=10).read().decode()


def _calls_in_progress(srv) -> float:
    return srv.running.metrics.calls_in_progress.collect()[0].samples[0].value


# ---------------------------------------------------------------------- intake budget (unit)
class _FakeContext:
    """A servicer context whose read() returns a body when the test releases it."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.go = asyncio.Event()

    def time_remaining(self):
        return None

    async def read(self):
        await self.go.wait()
        return self.body


def test_a_read_needs_room_for_a_largest_message_and_holds_only_the_real_size():
    async def scenario():
        intake = Intake(max_calls=8, max_bytes=2 * MIB, max_message_bytes=MIB, wait_s=0.2)
        first, second, third = (_FakeContext(b"x" * n) for n in (100, 200, 300))
        a = asyncio.ensure_future(intake.read(first, hold=True))
        b = asyncio.ensure_future(intake.read(second, hold=True))
        await until(lambda: intake.reading == 2, "both reads are in progress")
        assert intake.committed == 2 * MIB
        # Two reads in progress could each bring 1 MiB: a third has no room and is refused.
        with pytest.raises(OverloadedError, match="max-inflight-bytes"):
            await intake.read(third, hold=True)
        first.go.set()
        assert await a == b"x" * 100
        assert intake.held == 100 and intake.reading == 1
        # Now there is room: the reservation shrank to the body's real size.
        c = asyncio.ensure_future(intake.read(third, hold=True))
        second.go.set()
        third.go.set()
        await asyncio.gather(b, c)
        assert intake.held == 600 and intake.reading == 0
        for size in (100, 200, 300):
            await intake.release(size)
        assert intake.committed == 0

    asyncio.run(scenario())


def test_a_read_cancelled_after_its_message_came_holds_nothing():
    # The read has its message, then waits for the budget's lock to wake waiters; cancelled
    # there, its caller never gets the message to release, so the read itself must not hold it.
    async def scenario():
        intake = Intake(max_calls=8, max_bytes=2 * MIB, max_message_bytes=MIB)
        ctx = _FakeContext(b"x" * 1000)
        ctx.go.set()
        await intake._room.acquire()  # another read re-taking the lock right then
        read = asyncio.ensure_future(intake.read(ctx, hold=True))
        await until(lambda: intake.held == 1000, "the message has come and the read is ending")
        assert intake.reading == 0  # it waits for the lock to wake other readers
        read.cancel()
        intake._room.release()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert intake.held == 0 and intake.committed == 0

    asyncio.run(scenario())


def test_a_read_idle_past_idle_s_gives_its_room_to_a_waiting_read_and_a_young_one_does_not():
    async def scenario(idle_s: float):
        evicted: list[None] = []
        intake = Intake(
            max_calls=8,
            max_bytes=2 * MIB,
            max_message_bytes=MIB,
            wait_s=0.6,
            idle_s=idle_s,
            on_evict=lambda: evicted.append(None),
        )
        old, older, late = (_FakeContext(b"x" * n) for n in (100, 200, 300))
        a = asyncio.ensure_future(intake.read(older, hold=True))
        await until(lambda: intake.reading == 1, "the first read is in progress")
        b = asyncio.ensure_future(intake.read(old, hold=True))
        await until(lambda: intake.reading == 2, "both reads are in progress")
        late.go.set()  # the third caller's message is there as soon as it may read
        try:
            return evicted, a, b, await intake.read(late, hold=True)
        except OverloadedError as err:
            return evicted, a, b, err

    # Idle after 0.1 s: the waiting read evicts the oldest idle one only (one message's room).
    evicted, first, second, third = asyncio.run(scenario(0.1))
    # (counted once the loop has run the evicted read's task to its end)
    assert third == b"x" * 300 and len(evicted) == 1
    assert isinstance(first.exception(), OverloadedError)
    assert "no request message arrived within 0.1 s" in str(first.exception())
    assert second.cancelled()  # still waiting when the loop ended: it was not evicted

    # Idle only after 5 s: nobody is evicted, the waiting read is refused after wait_s.
    evicted, first, second, third = asyncio.run(scenario(5.0))
    assert isinstance(third, OverloadedError) and "max-inflight-bytes" in str(third)
    assert evicted == []


def test_calls_beyond_the_cap_are_refused_and_a_budget_smaller_than_a_message_is_an_error():
    intake = Intake(max_calls=1, max_bytes=MIB, max_message_bytes=MIB)
    intake.enter_call("/s/Embed")
    with pytest.raises(OverloadedError, match="1 calls in progress, the limit is 1"):
        intake.enter_call("/s/Embed")
    intake.exit_call()
    intake.enter_call("/s/Embed")
    with pytest.raises(ValueError, match="max_bytes"):
        Intake(max_calls=1, max_bytes=MIB, max_message_bytes=2 * MIB)
    with pytest.raises(ValueError, match="max_inflight_bytes"):
        ServerConfig(max_message_bytes=4 * MIB, max_inflight_bytes=2 * MIB)


# ---------------------------------------------------------------------- intake through the server
def test_oversized_garbage_and_valid_bodies_give_the_right_codes_and_the_budget_returns_to_zero(
    tiny_model,
):
    config = ServerConfig(
        port=0, metrics_port=None, max_message_bytes=MIB, max_inflight_bytes=2 * MIB
    )
    srv = ServerThread(config, tiny_model)
    try:
        code, details = _unary(srv.target, "Embed", b"\x0a" + b"\xff" * (3 * MIB))
        assert code == "RESOURCE_EXHAUSTED"
        code, details = _unary(srv.target, "Embed", b"\x0a\xff\xff\xff\xff" + b"\x00" * 900_000)
        assert code == "INVALID_ARGUMENT" and "EmbedRequest" in details
        big_bio = pb2.EmbedRequest(profiles=[pb2.Profile(id="a", biography="b" * 200_000)])
        code, details = _unary(srv.target, "Embed", big_bio.SerializeToString())
        assert code == "INVALID_ARGUMENT" and "biography" in details and "200,000" in details
        ok = pb2.EmbedRequest(profiles=[pb2.Profile(id="a", biography="paris")])
        assert _unary(srv.target, "Embed", ok.SerializeToString())[0] == "OK"
        metrics = srv.running.metrics
        for gauge in (metrics.inflight_bytes, metrics.calls_in_progress):
            assert gauge.collect()[0].samples[0].value == 0
    finally:
        srv.stop()


def test_calls_beyond_max_concurrent_calls_get_resource_exhausted_before_their_body(tiny_model):
    config = ServerConfig(port=0, metrics_port=None, max_concurrent_calls=1)
    srv = ServerThread(config, tiny_model)
    release = threading.Event()

    def items():
        yield pb2.PredictStreamRequest(profile=pb2.Profile(id="s0", biography="paris"))
        release.wait(30)

    try:
        with ProfileEmbeddingClient(srv.target) as c:
            stream = c.stub.PredictStream(items(), timeout=60)
            wait_for(lambda: _calls_in_progress(srv) == 1, "the stream holds the only slot")
            code, details = _unary(srv.target, "Embed", b"\xff" * 1000)  # garbage, never read
            assert code == "RESOURCE_EXHAUSTED" and "--max-concurrent-calls" in details
            assert c.health() == "SERVING"  # health checks are not counted
            release.set()
            assert [r.id for r in stream] == ["s0"]
            wait_for(lambda: c.embed([{"id": "after"}]).shape[0] == 1, "a call after the stream")
    finally:
        release.set()
        srv.stop()


def test_idle_streams_do_not_lock_other_callers_out_of_the_byte_budget(tiny_model):
    # Each PredictStream waiting for its next item holds a largest message's room: with room
    # for two, two idle streams took it all, and every other call was refused after 1 s.
    config = ServerConfig(
        port=0, metrics_port=None, max_message_bytes=MIB, max_inflight_bytes=2 * MIB
    )
    srv = ServerThread(config, tiny_model)
    release = threading.Event()

    def idle_items():
        release.wait(30)
        return
        yield  # pragma: no cover - a generator that sends nothing

    try:
        with ProfileEmbeddingClient(srv.target) as c:
            idle = [c.stub.PredictStream(idle_items(), timeout=60) for _ in range(2)]
            wait_for(
                lambda: srv.running.metrics.inflight_bytes.collect()[0].samples[0].value == 2 * MIB,
                "both idle streams hold a reservation",
            )
            embedded = c.embed([{"id": "a", "biography": "paris"}])
            assert embedded.shape[0] == 1
            release.set()  # the stream not evicted ends normally, with no items
            outcomes = []
            for stream in idle:
                try:
                    outcomes.append(("OK", list(stream)))
                except grpc.RpcError as err:
                    outcomes.append((err.code().name, err.details()))
            # One message's room was needed: only the oldest idle stream gave it up.
            assert sorted(code for code, _ in outcomes) == ["OK", "RESOURCE_EXHAUSTED"]
            assert "no request message arrived" in dict(outcomes)["RESOURCE_EXHAUSTED"]
            # operators see evictions apart from other budget refusals
            evicted = srv.running.metrics.idle_reads_evicted.collect()[0].samples[0]
            assert evicted.name == "profile_embed_idle_reads_evicted_total" and evicted.value == 1
            # and the evicted call is counted once, under the code it got
            stream_codes = {
                sample.labels["code"]: sample.value
                for sample in srv.running.metrics.requests.collect()[0].samples
                if sample.name.endswith("_total") and sample.labels["rpc"] == "PredictStream"
            }
            assert stream_codes == {"RESOURCE_EXHAUSTED": 1.0, "OK": 1.0}
    finally:
        release.set()
        srv.stop()


# ---------------------------------------------------------------------- auth before the body
def test_unauthenticated_calls_are_refused_unread_counted_and_logged_once_per_interval(
    tiny_model, tmp_path, caplog
):
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKEN + "\n")
    config = ServerConfig(port=0, metrics_port=0, auth_token_file=token_file)
    srv = ServerThread(config, tiny_model)
    try:
        with caplog.at_level(logging.INFO, logger="server.auth"):
            for _ in range(20):
                code, _ = _unary(srv.target, "Embed", b"\xff" * 2_000_000)
                assert code == "UNAUTHENTICATED"
        refusals = [r for r in caplog.records if "unauthenticated" in r.getMessage()]
        assert len(refusals) == 1 and "refused 1 " in refusals[0].getMessage()
        assert 'profile_embed_requests_total{code="UNAUTHENTICATED",rpc="Embed"} 20.0' in _metrics(
            srv
        )
        ok = pb2.EmbedRequest(profiles=[pb2.Profile(id="a", biography="paris")])
        assert _unary(srv.target, "Embed", ok.SerializeToString(), token=TOKEN)[0] == "OK"
        # Made-up methods share one label: a caller without a token cannot grow the series.
        with grpc.insecure_channel(srv.target) as ch:
            for i in range(5):
                with pytest.raises(grpc.RpcError):
                    ch.unary_unary(f"/made.Up/M{i}")(b"", timeout=10)
        text = _metrics(srv)
        assert 'profile_embed_requests_total{code="UNAUTHENTICATED",rpc="unknown"} 5.0' in text
        assert "M0" not in text
    finally:
        srv.stop()


# ---------------------------------------------------------------------- validation before work
class _CountingRuntime:
    """Counts embed calls of the wrapped runtime."""

    def __init__(self, runtime) -> None:
        self.embedded = 0
        original = runtime.embed

        async def embed(profiles):
            self.embedded += len(profiles)
            return await original(profiles)

        runtime.embed = embed


@pytest.mark.parametrize(
    ("fields", "needles"),
    [
        ({"method": 99}, ["'method'", "99", "AUDIENCE_METHOD_AVERAGE"]),
        ({"n_bootstrap": 5000}, ["'n_bootstrap'", "5000", "1000"]),
        ({"confidence": 0.3}, ["'confidence'", "0.3"]),
        ({"head": "nope"}, ["'nope'"]),
    ],
)
def test_estimate_audience_is_validated_before_any_follower_is_embedded(
    tiny_model, fields, needles
):
    srv = ServerThread(ServerConfig(port=0, metrics_port=None), tiny_model)
    try:
        counter = _CountingRuntime(srv.running.servicer.runtime)
        followers = [pb2.Profile(id=f"f{i}", biography="paris") for i in range(50)]
        request = pb2.EstimateAudienceRequest(followers=followers, **fields)
        code, details = _unary(srv.target, "EstimateAudience", request.SerializeToString())
        assert code == ("NOT_FOUND" if "head" in fields else "INVALID_ARGUMENT")
        for needle in needles:
            assert needle in details
        assert counter.embedded == 0
        good = pb2.EstimateAudienceRequest(followers=followers, n_bootstrap=20)
        assert _unary(srv.target, "EstimateAudience", good.SerializeToString())[0] == "OK"
        assert counter.embedded == 50
    finally:
        srv.stop()


# ---------------------------------------------------------------------- shedding
def test_a_queue_over_its_delay_budget_sheds_before_the_body_is_parsed(tiny_model):
    config = ServerConfig(port=0, metrics_port=None, max_wait_ms=0, max_queue_delay_ms=50)
    srv = ServerThread(config, tiny_model)
    batcher = srv.running.servicer.runtime.batcher
    gate = threading.Event()
    encode = batcher._encode
    batcher._encode = lambda texts: (gate.wait(30), encode(texts))[1]  # a pass that waits

    def embed(pid):
        request = pb2.EmbedRequest(profiles=[pb2.Profile(id=pid, biography="tokyo gym")])
        return c.stub.Embed.future(request, timeout=30)

    try:
        with ProfileEmbeddingClient(srv.target) as c:
            running = embed("running")
            wait_for(lambda: batcher._slots.locked(), "the first request's pass runs")
            queued = embed("queued")
            wait_for(lambda: batcher.queue_depth == 1, "the second request waits in the queue")
            batcher.seconds_per_token = 1.0  # as if passes had been measured this slow
            # Garbage that would be INVALID_ARGUMENT if parsed: refused before it is read.
            code, details = _unary(srv.target, "Embed", b"\xff" * 100)
            assert code == "RESOURCE_EXHAUSTED" and "--max-queue-delay-ms" in details
            assert _unary(srv.target, "Info", b"")[0] == "OK"  # Info is never shed
            gate.set()
            assert len(running.result().embeddings) == 1
            assert len(queued.result().embeddings) == 1
    finally:
        gate.set()
        srv.stop()


# ---------------------------------------------------------------------- metrics codes
def test_cancelled_streams_and_passed_deadlines_are_not_counted_ok(tiny_model):
    config = ServerConfig(port=0, metrics_port=0, max_wait_ms=600)
    srv = ServerThread(config, tiny_model)
    release = threading.Event()

    def items():
        yield pb2.PredictStreamRequest(profile=pb2.Profile(id="s0", biography="paris"))
        release.wait(30)

    try:
        with ProfileEmbeddingClient(srv.target) as c:
            stream = c.stub.PredictStream(items(), timeout=60)
            wait_for(lambda: _calls_in_progress(srv) == 1, "the stream is being served")
            stream.cancel()
            release.set()
            with pytest.raises(grpc.RpcError) as info:
                c.stub.Embed(
                    pb2.EmbedRequest(profiles=[pb2.Profile(id="d", biography="lima")]),
                    timeout=0.1,  # the request waits 600 ms for batch company
                )
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        cancelled = 'profile_embed_requests_total{code="CANCELLED",rpc="PredictStream"} 1.0'
        deadline = 'profile_embed_requests_total{code="DEADLINE_EXCEEDED",rpc="Embed"} 1.0'
        wait_for(lambda: cancelled in _metrics(srv), "the cancelled stream is counted")
        wait_for(lambda: deadline in _metrics(srv), "the passed deadline is counted")
        text = _metrics(srv)
        assert 'code="OK",rpc="PredictStream"' not in text
        assert 'code="OK",rpc="Embed"' not in text
    finally:
        release.set()
        srv.stop()


def test_a_call_ended_at_its_deadline_counts_as_deadline_exceeded():
    from server.service import _final_code

    class Ended:
        """What grpc's context says when it cancels a handler at the deadline."""

        def __init__(self, remaining):
            self.remaining = remaining

        def time_remaining(self):
            return self.remaining

        def cancelled(self):
            return False

    # grpc cancels the handler when the deadline passes; the server's clock may read ~7 ms left
    assert _final_code("CANCELLED", Ended(0.007)) == "DEADLINE_EXCEEDED"
    assert _final_code("CANCELLED", Ended(2.0)) == "CANCELLED"
    assert _final_code("CANCELLED", Ended(None)) == "CANCELLED"
    assert _final_code("OK", Ended(2.0)) == "OK"
    assert _final_code("INVALID_ARGUMENT", Ended(0.0)) == "INVALID_ARGUMENT"


def test_a_stream_answers_each_item_before_the_client_half_closes(tiny_model):
    # A client that sends one item and waits for its answer must get it: items used to wait
    # for 128 more, or for the end of the stream.
    import queue

    config = ServerConfig(port=0, metrics_port=None)
    srv = ServerThread(config, tiny_model)
    sent: queue.Queue = queue.Queue()

    def items():
        while (item := sent.get()) is not None:
            yield item

    def ask(i: int, heads: list[str]):
        profile = pb2.Profile(id=f"s{i}", biography="paris")
        return pb2.PredictStreamRequest(profile=profile, heads=heads)

    try:
        with ProfileEmbeddingClient(srv.target) as c:
            stream = c.stub.PredictStream(items(), timeout=30)
            sent.put(ask(0, ["geolocation"]))
            assert next(stream).id == "s0"  # answered with the stream still open
            sent.put(ask(1, ["category"]))
            answer = next(stream)
            assert answer.id == "s1" and [p.head for p in answer.result.predictions] == ["category"]
            for i in range(2, 6):
                sent.put(ask(i, ["geolocation"]))
            sent.put(None)
            assert sorted(r.id for r in stream) == [f"s{i}" for i in range(2, 6)]
        # Each head ran, and is counted, for the items that asked for it only.
        counted = {
            head: sum(
                sample.value
                for sample in srv.running.metrics.head_predictions.collect()[0].samples
                if sample.name.endswith("_total") and sample.labels["head"] == head
            )
            for head in ("geolocation", "category")
        }
        assert srv.running.metrics.profiles.labels("PredictStream")._value.get() == 6
        assert counted == {"geolocation": 5.0, "category": 1.0}
    finally:
        sent.put(None)
        srv.stop()


def test_stream_reader_ends_after_a_cancel_even_with_a_full_output_queue():
    from server.errors import RequestLimits
    from server.metrics import ServerMetrics
    from server.service import ProfileEmbeddingServicer

    limits = RequestLimits(
        max_profiles=8,
        max_field_chars=10_000,
        max_captions=5,
        max_search_k=10,
        max_message_bytes=MIB,
    )
    servicer = ProfileEmbeddingServicer(limits, ServerMetrics())

    async def scenario():
        reading = asyncio.Event()

        async def never():
            reading.set()
            await asyncio.Event().wait()
            yield b""  # pragma: no cover

        out: asyncio.Queue = asyncio.Queue(maxsize=1)
        out.put_nowait("a response nobody reads")
        reader = asyncio.ensure_future(servicer._read_stream(None, never(), out))
        # Cancelled before its first step a task never runs, and this test would prove nothing.
        await asyncio.wait_for(reading.wait(), 10)
        reader.cancel()
        done, _ = await asyncio.wait({reader}, timeout=10)
        assert done, "the reader hung on the full queue after its cancel"

    asyncio.run(scenario())


# ---------------------------------------------------------------------- metrics endpoint
def test_metrics_endpoint_is_loopback_by_default_and_can_need_a_token_and_tls(tiny_model, tmp_path):
    assert ServerConfig(host="0.0.0.0").metrics_host == "127.0.0.1"
    cert, key = self_signed_cert(tmp_path)
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKEN + "\n")
    config = ServerConfig(
        port=0,
        metrics_port=0,
        tls_cert=cert,
        tls_key=key,
        auth_token_file=token_file,
        metrics_tls=True,
        metrics_auth=True,
    )
    srv = ServerThread(config, tiny_model)
    try:
        port = srv.running.metrics.port
        assert srv.running.metrics._http.server_address[0] == "127.0.0.1"
        ctx = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, context=ctx, timeout=10)
        assert info.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        body = urllib.request.urlopen(request, context=ctx, timeout=10).read().decode()
        assert "profile_embed_ready 1.0" in body
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        # A connection that never starts its handshake does not hold up other scrapes.
        with socket.create_connection(("127.0.0.1", port)):
            body = urllib.request.urlopen(request, context=ctx, timeout=5).read().decode()
            assert "profile_embed_ready 1.0" in body
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="metrics_auth needs auth_token_file"):
        ServerConfig(metrics_auth=True)
    with pytest.raises(ValueError, match="metrics_tls needs tls_cert"):
        ServerConfig(metrics_tls=True)


def test_serve_flags_reach_the_config():
    import argparse

    from server.commands.serve import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "serve",
            "--max-inflight-bytes",
            str(64 * MIB),
            "--max-concurrent-calls",
            "9",
            "--max-queue-delay-ms",
            "250",
            "--metrics-host",
            "::1",
        ]
    )
    config = config_from_args(args)
    assert config.max_inflight_bytes == 64 * MIB and config.max_concurrent_calls == 9
    assert config.max_queue_delay_ms == 250 and config.metrics_host == "::1"
    assert config.max_message_bytes == 16 * MIB and not config.metrics_auth


def test_the_delay_estimate_counts_live_and_running_work_and_sheds_beyond_the_budget():
    import numpy as np

    from server.batcher import DynamicBatcher

    entered, release = threading.Event(), threading.Event()

    def encode(texts):
        entered.set()
        release.wait(5)
        return np.ones((len(texts), 2), dtype=np.float32)

    async def scenario():
        b = DynamicBatcher(
            encode, max_wait_ms=0, max_batch_profiles=1, max_queue_delay_s=0.5, length_fn=len
        )
        b.start()
        blocker = asyncio.ensure_future(b.submit(["x" * 10]))  # occupies the one worker
        await until(entered.is_set, "the blocker's pass runs")
        b.seconds_per_token = 0.01  # as if measured: 10 ms per token
        doomed = asyncio.ensure_future(b.submit(["y" * 100]))
        await until(lambda: b.queue_depth == 1, "the doomed text is queued")
        # 100 queued tokens + the 10 of the pass in progress.
        assert b.estimated_delay() == pytest.approx(1.1)
        assert "--max-queue-delay-ms" in b.overloaded()
        with pytest.raises(OverloadedError, match="about 1100 ms of work"):
            await b.submit(["z"])
        doomed.cancel()
        await asyncio.wait({doomed}, timeout=5)  # its cancellation has run
        assert doomed.cancelled()
        # The cancelled caller's texts still sit in the deque but are no work ahead any more.
        assert b.estimated_delay() == pytest.approx(0.1) and b.overloaded() is None
        release.set()
        await blocker
        assert (await asyncio.wait_for(b.submit(["after"]), 5)).shape == (1, 2)
        await b.close()

    asyncio.run(scenario())


def test_before_any_pass_one_request_may_queue_and_a_pass_is_cut_to_the_delay_budget():
    import numpy as np

    from server.batcher import DynamicBatcher

    entered, release = threading.Event(), threading.Event()

    def encode(texts):
        entered.set()
        release.wait(5)
        return np.ones((len(texts), 2), dtype=np.float32)

    async def scenario():
        b = DynamicBatcher(
            encode, max_wait_ms=0, max_batch_tokens=1000, max_queue_delay_s=0.5, length_fn=len
        )
        b.start()
        assert b.pass_tokens() == 1000  # nothing measured yet
        first = asyncio.ensure_future(b.submit(["a" * 10, "b" * 10]))
        await until(entered.is_set, "the first pass runs")
        second = asyncio.ensure_future(b.submit(["c" * 10]))  # queued behind the running pass
        await until(lambda: b.queue_depth == 1, "the second text is queued")
        # The cost of a pass is unknown until one ends: nothing more may wait meanwhile.
        with pytest.raises(OverloadedError, match="first forward pass"):
            await b.submit(["d"])
        release.set()
        await asyncio.gather(first, second)
        assert b.seconds_per_token is not None
        b.seconds_per_token, b.seconds_per_token_dev = 0.001, 0.0  # as if every pass took this
        assert b.pass_tokens() == 500  # 0.5 s at 1 ms per token
        b.seconds_per_token = 10.0
        assert b.pass_tokens() == 1  # always at least one text
        await b.close()

    asyncio.run(scenario())


def test_a_stream_waits_for_its_own_chunks_instead_of_failing_items(tiny_model):
    from server_helpers import synthetic_profiles

    config = ServerConfig(port=0, metrics_port=None, max_wait_ms=0, max_queue_delay_ms=50)
    srv = ServerThread(config, tiny_model)
    try:
        batcher = srv.running.servicer.runtime.batcher
        batcher.seconds_per_token = 1.0  # any queued chunk is over the 50 ms budget
        with ProfileEmbeddingClient(srv.target) as c:
            rows = list(c.predict_stream(synthetic_profiles(400, seed=3)[0]))
        assert len(rows) == 400
        assert {r["status"] for r in rows} == {"ITEM_STATUS_OK"}
    finally:
        srv.stop()


def test_a_chunk_overtaken_by_a_later_chunk_of_its_stream_waits_for_it():
    """Chunks 2 and 3 wake together after chunk 1; 3 reaches the queue first. Chunk 2's earlier
    work is done, but its own stream's chunk 3 fills the queue: it waits for 3 and retries
    instead of failing its items; a stream with nothing of its own queued still gets refused."""
    from server.service import _embed_paced

    class Runtime:
        def __init__(self) -> None:
            self.queued = 0
            self.release = asyncio.Event()

        async def embed(self, profiles):
            if self.queued:
                raise OverloadedError("encoder queue is full")
            self.queued += 1
            try:
                await self.release.wait()
                return profiles
            finally:
                self.queued -= 1

    async def scenario() -> None:
        rt = Runtime()
        submitted: set[asyncio.Task] = set()
        done_earlier = asyncio.ensure_future(asyncio.sleep(0))
        await done_earlier
        third = asyncio.ensure_future(_embed_paced(rt, ["c3"], {done_earlier}, submitted))
        await until(lambda: rt.queued == 1, "chunk 3 is in the queue")
        second = asyncio.ensure_future(_embed_paced(rt, ["c2"], {done_earlier}, submitted))
        await asyncio.sleep(0.01)
        assert not second.done()  # waiting for chunk 3, not failed
        rt.release.set()
        assert await third == ["c3"] and await second == ["c2"]
        # nothing of its own in the queue: refused at once
        rt.release.clear()
        other = asyncio.ensure_future(rt.embed(["x"]))
        await until(lambda: rt.queued == 1, "another stream's work is queued")
        with pytest.raises(OverloadedError):
            await _embed_paced(rt, ["c4"], set(), set())
        rt.release.set()
        await other

    asyncio.run(scenario())


def test_lower_priority_renices_the_encoder_worker_threads():
    import os

    import numpy as np

    from server.batcher import DynamicBatcher

    async def scenario():
        b = DynamicBatcher(lambda t: np.ones((len(t), 2), dtype=np.float32), workers=2)
        await b.lower_priority(3)
        loop = asyncio.get_running_loop()

        def nice():
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        got = await asyncio.gather(*[loop.run_in_executor(b._executor, nice) for _ in range(4)])
        await b.close()
        return got

    assert set(asyncio.run(scenario())) == {3}
    with pytest.raises(ValueError, match="encoder_nice"):
        ServerConfig(encoder_nice=20)
