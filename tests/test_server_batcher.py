"""The dynamic batcher on its own: grouping, order, backpressure, cancellation, drain."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from waiting import until

from embedder.errors import NotReadyError, OverloadedError
from server.batcher import DynamicBatcher, estimate_tokens


class RecordingEncoder:
    """Deterministic encoder: vector = [len(text), first char code]; records each call's texts.

    ``entered`` is set when a pass starts; clearing ``release`` makes passes block until it is set.
    """

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.entered.set()
        self.release.wait(5)
        self.calls.append(list(texts))
        return np.array([[len(t), ord(t[0]) if t else 0] for t in texts], dtype=np.float32)


def _expected(texts):
    return np.array([[len(t), ord(t[0]) if t else 0] for t in texts], dtype=np.float32)


def test_concurrent_callers_share_forward_passes_and_get_their_own_rows():
    enc = RecordingEncoder()

    async def main():
        b = DynamicBatcher(enc, max_wait_ms=50, max_batch_profiles=64, max_batch_tokens=10**6)
        b.start()
        requests = [[f"{chr(97 + i)}" * (i + 1), "z" * (20 - i)] for i in range(10)]
        results = await asyncio.gather(*(b.submit(r) for r in requests))
        await b.close()
        return requests, results

    requests, results = asyncio.run(main())
    for req, res in zip(requests, results, strict=True):
        np.testing.assert_array_equal(res, _expected(req))
    assert len(enc.calls) < 10  # callers were batched together
    for call in enc.calls:  # each pass is sorted longest first
        lengths = [estimate_tokens(t) for t in call]
        assert lengths == sorted(lengths, reverse=True)


def test_token_budget_and_profile_cap_split_batches():
    enc = RecordingEncoder()

    async def main():
        b = DynamicBatcher(enc, max_wait_ms=20, max_batch_profiles=4, max_batch_tokens=40)
        b.start()
        out = await b.submit(["x" * 30] * 10)  # ~12 tokens each: 3 fit the budget of 40
        await b.close()
        return out

    out = asyncio.run(main())
    assert out.shape == (10, 2)
    assert all(len(c) <= 3 for c in enc.calls)
    assert sum(len(c) for c in enc.calls) == 10


def test_full_queue_raises_overloaded_and_recovers():
    enc = RecordingEncoder()
    enc.release.clear()

    async def main():
        b = DynamicBatcher(enc, max_wait_ms=0, max_batch_profiles=2, max_queue=5)
        b.start()
        first = asyncio.ensure_future(b.submit(["a", "b"]))
        await until(enc.entered.is_set, "the first pass runs (blocked): its texts left the queue")
        queued = asyncio.ensure_future(b.submit(["c", "d", "e", "f", "g"]))
        await until(lambda: b.queue_depth == 5, "the second caller's texts are queued")
        with pytest.raises(OverloadedError, match="queue is full"):
            await b.submit(["h"])
        enc.release.set()
        await asyncio.gather(first, queued)
        again = await b.submit(["h"])
        await b.close()
        return again

    again = asyncio.run(main())
    np.testing.assert_array_equal(again, _expected(["h"]))


def test_cancelled_callers_texts_never_reach_the_encoder():
    enc = RecordingEncoder()
    enc.release.clear()

    async def main():
        b = DynamicBatcher(enc, max_wait_ms=0, max_batch_profiles=1)
        b.start()
        blocker = asyncio.ensure_future(b.submit(["blocker"]))
        await until(enc.entered.is_set, "the blocker's pass runs")
        doomed = asyncio.ensure_future(b.submit(["doomed-1", "doomed-2"]))
        await until(lambda: b.queue_depth == 2, "the doomed texts are queued")
        doomed.cancel()
        await asyncio.wait({doomed}, timeout=5)  # its cancellation has run
        assert doomed.cancelled() and b.queue_depth == 0
        enc.release.set()
        await blocker
        ok = await asyncio.wait_for(b.submit(["after"]), 5)
        await b.close()
        return ok

    asyncio.run(main())
    flat = [t for c in enc.calls for t in c]
    assert "doomed-1" not in flat and "doomed-2" not in flat
    assert flat == ["blocker", "after"]


def test_encoder_failure_reaches_every_caller_of_that_pass_and_batcher_survives():
    state = {"fail": True}

    def encode(texts):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("boom")
        return _expected(texts)

    async def main():
        b = DynamicBatcher(encode, max_wait_ms=20)
        b.start()
        results = await asyncio.gather(b.submit(["a"]), b.submit(["b"]), return_exceptions=True)
        ok = await b.submit(["c"])
        await b.close()
        return results, ok

    results, ok = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    np.testing.assert_array_equal(ok, _expected(["c"]))


def test_close_drains_queued_work_then_refuses_new_work():
    enc = RecordingEncoder()

    async def main():
        # Queued texts would wait a minute for company: close must cut that wait, not drop them.
        b = DynamicBatcher(enc, max_wait_ms=60_000)
        b.start()
        pending = [asyncio.ensure_future(b.submit([f"t{i}"])) for i in range(5)]
        await until(lambda: b.queue_depth == 5, "the five callers are queued")
        await asyncio.wait_for(b.close(drain=True), 10)
        done = [p.result() for p in pending]
        with pytest.raises(NotReadyError):
            await b.submit(["late"])
        return done

    done = asyncio.run(main())
    assert len(done) == 5 and all(d.shape == (1, 2) for d in done)


def test_forward_pass_threads_share_the_cores_among_workers(monkeypatch):
    import embedder.numerics
    from server.config import ServerConfig

    monkeypatch.setattr(embedder.numerics, "default_threads", lambda: 2)
    assert ServerConfig().threads_per_worker == 2
    assert ServerConfig(workers=2).threads_per_worker == 1  # 2 passes x 1 thread on 2 cores
    assert ServerConfig(workers=3).threads_per_worker == 1
    assert ServerConfig(workers=2, threads=2).threads_per_worker == 2  # an explicit choice wins
    with pytest.raises(ValueError, match="threads"):
        ServerConfig(threads=0)
    with pytest.raises(ValueError, match="pass_overhead_tokens"):
        ServerConfig(pass_overhead_tokens=-1)


@pytest.mark.parametrize(
    "floor, expected_passes",
    [(0, [["x" * 10], ["a" * 40], ["b" * 40]]), (1024, [["x" * 10], ["a" * 40, "b" * 40]])],
)
def test_a_later_caller_shares_a_pass_only_while_the_earlier_callers_promise_holds(
    floor, expected_passes
):
    """A is promised the running pass + its own 40 tokens (0.5 s at 10 ms a token); B, admitted
    after it, would make a shared pass end 0.4 s later, so B waits for the next pass, unless the
    pass is below the size that is always allowed (then sharing costs too little to refuse)."""
    enc = RecordingEncoder()
    enc.release.clear()

    async def main():
        b = DynamicBatcher(
            enc, max_wait_ms=0, max_batch_tokens=10**6, max_queue_delay_s=1.0, length_fn=len
        )
        b.MIN_SHARED_PASS_TOKENS = floor
        b.start()
        blocker = asyncio.ensure_future(b.submit(["x" * 10]))
        await until(enc.entered.is_set, "the blocker's pass runs")
        b.seconds_per_token = 0.01  # as if measured
        first = asyncio.ensure_future(b.submit(["a" * 40]))
        await until(lambda: b.queue_depth == 1, "A is queued")
        second = asyncio.ensure_future(b.submit(["b" * 40]))  # 0.5 s ahead: admitted
        await until(lambda: b.queue_depth == 2, "B is queued")
        enc.release.set()
        await asyncio.gather(blocker, first, second)
        await b.close()

    asyncio.run(main())
    assert enc.calls == expected_passes


def test_a_taken_pass_counts_as_work_ahead_before_its_task_first_runs():
    """Callers admitted between the collector taking a pass and the pass's task starting must
    see that pass as ahead of them (else they are promised, and admitted on, too little)."""
    enc = RecordingEncoder()
    seen: list[float] = []

    async def main():
        b = DynamicBatcher(
            enc, max_wait_ms=0, max_batch_tokens=10**6, max_queue_delay_s=1.0, length_fn=len
        )
        b.seconds_per_token = 0.01
        forward = b._forward

        async def first_look(batch):
            seen.append(b.estimated_delay())  # the first moment the task runs
            await forward(batch)

        b._forward = first_look
        b.start()
        await b.submit(["a" * 40])
        assert b.estimated_delay() == 0.0  # done: nothing ahead any more
        await b.close()

    asyncio.run(main())
    assert seen == [pytest.approx(0.4)]


def test_steady_passes_plan_at_their_speed_and_a_swing_keeps_admission_cautious():
    """Admission plans with the mean seconds per token plus DEV_K mean deviations (RFC 6298's
    retransmission timer): passes of one speed cost nothing, and after the speed swings (a
    drained queue runs fast) a burst is not admitted on the fastest speed lately seen."""
    b = DynamicBatcher(lambda texts: None, max_queue_delay_s=1.0, length_fn=len)
    assert b.planning_seconds_per_token is None  # nothing measured yet
    for _ in range(5):
        b._learn_speed(seconds=0.1, tokens=1000)  # 0.1 ms per token
    assert b.seconds_per_token_dev == 0.0
    assert b.planning_seconds_per_token == pytest.approx(1e-4)
    assert b.pass_tokens() == 10_000  # 1 s at 0.1 ms per token

    b._learn_speed(seconds=0.025, tokens=1000)  # the queue drained: 4x faster
    mean, planning = b.seconds_per_token, b.planning_seconds_per_token
    assert mean < 1e-4  # the mean follows the fast pass ...
    assert planning > 1e-4  # ... the planning speed stays at or over the steady one
    assert planning == pytest.approx(mean + b.DEV_K * b.seconds_per_token_dev)
    assert b.pass_tokens() == int(1.0 / planning)

    for _ in range(40):  # fast for good: the caution fades and the fast speed is planned with
        b._learn_speed(seconds=0.025, tokens=1000)
    assert b.planning_seconds_per_token == pytest.approx(2.5e-5, rel=0.05)


def test_a_small_pass_moves_the_deviation_as_little_as_the_mean():
    """A pass of a few tokens is mostly fixed cost: it weighs in the deviation by its size."""
    b = DynamicBatcher(lambda texts: None, max_queue_delay_s=1.0, length_fn=len)
    b._learn_speed(seconds=0.1, tokens=1024)
    b._learn_speed(seconds=0.01, tokens=8)  # 12x the per-token cost, 8 tokens
    small = b.seconds_per_token_dev
    b2 = DynamicBatcher(lambda texts: None, max_queue_delay_s=1.0, length_fn=len)
    b2._learn_speed(seconds=0.1, tokens=1024)
    b2._learn_speed(seconds=1.2, tokens=1024)  # the same per-token cost in a full pass
    assert 0 < small < b2.seconds_per_token_dev / 100
