"""Dynamic batching: many callers' texts, one forward pass.

Callers ``await batcher.submit(texts)``. A single collector task waits until a worker is free,
then gathers queued texts for up to ``max_wait_ms`` (or until the token budget or profile cap is
reached), sorts them by length, and runs one ``encode`` call in a worker thread (torch releases the
GIL, so the event loop keeps accepting calls). Each caller's future resolves when all its texts are
done.

Backpressure: at most ``max_queue`` texts wait, and (with ``max_queue_delay_s``) at most that
long by estimate: the tokens queued ahead x the seconds per token of recent passes (an
exponential average), shared out among the workers. Beyond either ``submit`` raises
``OverloadedError`` at once, and :meth:`DynamicBatcher.overloaded` says so before a request is
even read (``server.service``).

Completion, not only admission, is bounded: an admitted caller is promised the work ahead of it
plus its own (``_Job.due``), and a pass takes texts of later callers only while its estimated end
keeps every caller already in it within that promise. Without this a caller admitted just behind
a long pass shared its next pass with callers admitted after it, and waited up to two queue
delays (measured by ``bench/adversarial.py``).

Deadlines: a caller that is cancelled (deadline passed, client gone) marks its texts dead and they
are dropped before the next forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from embedder.errors import NotReadyError, OverloadedError

logger = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], np.ndarray]
#: ``on_batch(n_texts, padded_tokens, seconds)``, called after every forward pass (metrics).
BatchCallback = Callable[[int, int, float], None]


def estimate_tokens(text: str) -> int:
    """A cheap upper-ish bound on subword tokens: about one per 3 characters, plus specials."""
    return len(text) // 3 + 2


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: asyncio.Future[np.ndarray]
    remaining: int
    in_queue: int = 0
    tokens_in_queue: int = 0
    dead: bool = False
    out: np.ndarray | None = None
    #: monotonic time by which its texts should be done (work ahead + its own at admission);
    #: infinite when the queue has no delay bound or no pass has been measured yet.
    due: float = math.inf


@dataclass(eq=False)
class _Item:
    job: _Job
    pos: int
    length: int
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Collect texts from concurrent callers into token-budgeted forward passes.

    Args:
        encode: ``texts -> (n, dim) float32`` array; runs in a worker thread.
        max_batch_tokens: padded-token budget of one pass (texts x longest text).
        max_batch_profiles: most texts in one pass.
        max_wait_ms: how long the oldest queued text waits for company.
        max_queue: most texts waiting; beyond it ``submit`` raises ``OverloadedError``.
        workers: forward passes that may run at once.
        length_fn: token count estimate of a text, used for the budget and the sort.
        on_batch: optional callback after every pass (for metrics).
        max_queue_delay_s: most estimated wait of a newly queued text; 0: no bound.
    """

    #: Weight of the newest pass in the seconds-per-token average, reached from this many tokens.
    EWMA_ALPHA = 0.2
    EWMA_FULL_WEIGHT_TOKENS = 1024
    #: How much more a pass slower than the estimate weighs in it.
    SLOWER_WEIGHT = 2.5
    #: Weight of the newest pass in the mean deviation of seconds per token (RFC 6298's beta).
    DEV_ALPHA = 0.25
    #: Admission and promises plan with the mean plus this many mean deviations (RFC 6298's
    #: retransmission timer uses 4): after the passes' speed swings (a drained queue runs fast,
    #: a flood of refused calls takes the cores) a burst of callers is not admitted on the
    #: fastest speed lately seen.
    DEV_K = 2.0
    #: A pass may always grow to this many tokens, promises or not: smaller passes waste the
    #: cores (the default model: 605 profiles/s in passes of 16, 864 in passes of 64) and, when
    #: estimates run late, would shrink to one text each. What sharing can add to a promise is
    #: this many tokens' time (~50 ms for the default model on 2 cores).
    MIN_SHARED_PASS_TOKENS = 4096

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch_tokens: int = 16384,
        max_batch_profiles: int = 256,
        max_wait_ms: float = 5.0,
        max_queue: int = 8192,
        workers: int = 1,
        length_fn: Callable[[str], int] = estimate_tokens,
        on_batch: BatchCallback | None = None,
        max_queue_delay_s: float = 0.0,
    ) -> None:
        self._encode = encode
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_profiles = max_batch_profiles
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.workers = workers
        self._length_fn = length_fn
        self._on_batch = on_batch
        self.max_queue_delay_s = max_queue_delay_s
        self.seconds_per_token: float | None = None
        self.seconds_per_token_dev = 0.0
        self._queue: deque[_Item] = deque()
        self._live = 0
        self._live_tokens = 0
        self._running_tokens = 0  # of passes in progress: a newcomer waits for them too
        self._closing = False
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(workers)
        self._inflight: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encoder")
        self._collector: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Texts waiting for a forward pass (cancelled ones excluded)."""
        return self._live

    @property
    def planning_seconds_per_token(self) -> float | None:
        """The speed admission and promises plan with: the measured mean plus ``DEV_K`` mean
        deviations (None before any pass)."""
        if self.seconds_per_token is None:
            return None
        return self.seconds_per_token + self.DEV_K * self.seconds_per_token_dev

    def estimated_delay(self) -> float:
        """Seconds a text queued now would wait: queued texts and passes in progress (counted
        whole) at the planning speed; 0 before any pass."""
        spt = self.planning_seconds_per_token
        if spt is None:
            return 0.0
        ahead = self._live_tokens + self._running_tokens
        return ahead * spt / self.workers

    def overloaded(self, extra_texts: int = 1) -> str | None:
        """Why ``extra_texts`` more texts would be refused now, or None when they fit."""
        if self._live + extra_texts > self.max_queue:
            return (
                f"encoder queue is full: {self._live} profiles waiting, this request adds "
                f"{extra_texts}, the limit is {self.max_queue}; retry with backoff"
            )
        if self.max_queue_delay_s > 0 and self.seconds_per_token is None:
            # No pass measured yet: one request may wait, not a burst of unknown cost.
            if self._live:
                return (
                    f"encoder queue is full: {self._live} profiles wait for the first forward "
                    f"pass, whose speed bounds the queue (--max-queue-delay-ms); retry with backoff"
                )
        elif self.max_queue_delay_s > 0:
            delay = self.estimated_delay()
            if delay > self.max_queue_delay_s:
                return (
                    f"encoder queue is full: {self._live} profiles waiting, about "
                    f"{1000 * delay:.0f} ms of work, the limit is "
                    f"{1000 * self.max_queue_delay_s:.0f} ms (--max-queue-delay-ms); "
                    "retry with backoff"
                )
        return None

    async def calibrate(self, texts: Sequence[str], encode: EncodeFn | None = None) -> float:
        """Run ``texts`` twice outside the queue and learn the speed of the second pass.

        Before serving, so the first callers are admitted by a measured speed (and the first
        pass's one-off costs are not theirs). Returns the second pass's seconds.
        """
        loop = asyncio.get_running_loop()
        fn = encode or self._encode
        await loop.run_in_executor(self._executor, fn, list(texts))  # one-off costs
        start = time.perf_counter()
        await loop.run_in_executor(self._executor, fn, list(texts))
        seconds = time.perf_counter() - start
        self.seconds_per_token = seconds / max(1, sum(self._length_fn(t) for t in texts))
        return seconds

    async def lower_priority(self, nice: int) -> None:
        """Give each worker thread (and the intra-op threads it starts later) ``nice``.

        Call before the first pass: threads inherit the niceness of the thread that creates
        them, so OpenMP's pool, started by a worker's first pass, runs at the same priority.
        """
        if nice <= 0 or not hasattr(os, "setpriority"):
            return
        barrier = threading.Barrier(self.workers)  # one job per worker thread

        def renice() -> None:
            barrier.wait(10)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)

        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self._executor, renice) for _ in range(self.workers)]
        await asyncio.gather(*jobs)

    def start(self) -> None:
        """Start the collector task on the running event loop."""
        if self._collector is None:
            self._collector = asyncio.get_running_loop().create_task(self._collect())

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """Queue texts and wait for their embeddings.

        Args:
            texts: assembled encoder inputs.

        Returns:
            ``(len(texts), dim)`` float32 array in input order.

        Raises:
            OverloadedError: the queue cannot take ``len(texts)`` more texts.
            NotReadyError: the batcher is shutting down.
        """
        if self._closing or self._collector is None:
            raise NotReadyError("the server is not accepting work (starting or shutting down)")
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        reason = self.overloaded(len(texts))
        if reason is not None:
            raise OverloadedError(reason)
        loop = asyncio.get_running_loop()
        job = _Job(texts=list(texts), future=loop.create_future(), remaining=len(texts))
        ahead = self.estimated_delay()
        for pos, text in enumerate(job.texts):
            length = self._length_fn(text)
            self._queue.append(_Item(job, pos, length))
            self._live_tokens += length
            job.tokens_in_queue += length
        spt = self.planning_seconds_per_token
        if self.max_queue_delay_s > 0 and spt is not None:
            own = job.tokens_in_queue * spt / self.workers
            job.due = time.monotonic() + ahead + own
        job.in_queue = len(texts)
        self._live += len(texts)
        self._wakeup.set()
        queued = time.monotonic()
        try:
            out = await job.future
            logger.debug(
                "%d texts: %.0f ms ahead at admission, promised %.0f ms, done in %.0f ms",
                len(job.texts),
                1000 * ahead,
                1000 * (job.due - queued),
                1000 * (time.monotonic() - queued),
            )
            return out
        finally:
            if not job.future.done() or job.future.cancelled():
                self._discard(job)

    def _discard(self, job: _Job) -> None:
        job.dead = True
        self._live -= job.in_queue
        job.in_queue = 0
        # Dead texts stay in the deque until popped, but no longer count as work ahead.
        self._live_tokens -= job.tokens_in_queue
        job.tokens_in_queue = 0

    def pass_tokens(self) -> int:
        """Token budget of the next pass: ``max_batch_tokens``, cut so that one pass takes about
        ``max_queue_delay_s`` at the planning speed (a caller waits the queue plus one pass)."""
        spt = self.planning_seconds_per_token
        if self.max_queue_delay_s > 0 and spt:
            fits = int(self.max_queue_delay_s / spt)
            return max(1, min(self.max_batch_tokens, fits))
        return self.max_batch_tokens

    def _full(self) -> bool:
        return self._live >= self.max_batch_profiles or self._live_tokens >= self.pass_tokens()

    async def _collect(self) -> None:
        while not (self._closing and not self._queue):
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            await self._wait_for_company()
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._forward(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _wait_for_company(self) -> None:
        while self._queue and self._queue[0].job.dead:
            self._pop_dead()
        if not self._queue:
            return
        deadline = self._queue[0].enqueued + self.max_wait_s
        while not self._full() and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break

    def _pop_dead(self) -> None:
        self._queue.popleft()  # its tokens left _live_tokens when its job was discarded

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        budget = self.pass_tokens()
        longest = 0
        tokens = 0
        due = math.inf  # earliest promise among the callers in this pass
        start = time.monotonic()
        spt = (self.planning_seconds_per_token or 0.0) / self.workers
        while self._queue and len(batch) < self.max_batch_profiles:
            item = self._queue[0]
            if item.job.dead:
                self._pop_dead()
                continue
            longest_if = max(longest, item.length)
            if batch and longest_if * (len(batch) + 1) > budget:
                break
            if (
                batch
                and item.job is not batch[0].job
                and tokens + item.length > self.MIN_SHARED_PASS_TOKENS
                and start + (tokens + item.length) * spt > due
            ):
                break  # a later caller's text would make this pass end past a promise
            self._queue.popleft()
            self._live_tokens -= item.length
            item.job.tokens_in_queue -= item.length
            item.job.in_queue -= 1
            self._live -= 1
            longest = longest_if
            tokens += item.length
            due = min(due, item.job.due)
            batch.append(item)
        batch.sort(key=lambda it: it.length, reverse=True)
        # Work ahead from now on, not from when the pass's task first runs: a caller admitted
        # in between must not see it as gone.
        self._running_tokens += tokens
        return batch

    async def _forward(self, batch: list[_Item]) -> None:
        taken = sum(it.length for it in batch)  # counted as running by _take
        try:
            # Callers cancelled while the batch waited for a worker are dropped before the pass.
            batch = [it for it in batch if not it.job.future.done()]
            if not batch:
                return
            texts = [it.job.texts[it.pos] for it in batch]
            padded = len(batch) * max(it.length for it in batch)
            start = time.perf_counter()
            loop = asyncio.get_running_loop()
            tokens = sum(it.length for it in batch)
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, texts)
            except Exception as err:  # delivered to each caller, mapped to a status there
                for job in {it.job for it in batch}:
                    if not job.future.done():
                        job.future.set_exception(err)
                return
            seconds = time.perf_counter() - start
            self._learn_speed(seconds, tokens)
            self._deliver(batch, vectors)
            if self._on_batch is not None:
                self._on_batch(len(batch), padded, seconds)
            logger.debug(
                "forward pass: %d texts, %d padded tokens, %.1f ms",
                len(batch),
                padded,
                1000 * seconds,
            )
        finally:
            self._running_tokens -= taken
            self._slots.release()

    def _learn_speed(self, seconds: float, tokens: int) -> None:
        per_token = seconds / max(tokens, 1)
        if self.seconds_per_token is None:
            self.seconds_per_token = per_token
        else:
            # Weighted by size: a pass of a few tokens is mostly fixed cost and says little
            # about the per-token cost of the big passes an overloaded queue makes.
            weight = min(1.0, tokens / self.EWMA_FULL_WEIGHT_TOKENS)
            b = self.DEV_ALPHA * weight
            self.seconds_per_token_dev = (
                b * abs(per_token - self.seconds_per_token) + (1 - b) * self.seconds_per_token_dev
            )
            a = self.EWMA_ALPHA * weight
            if per_token > self.seconds_per_token:
                # Slower than believed: learn it faster. Too low an estimate breaks promises
                # (callers admitted on it wait longer); too high one only refuses a little more.
                a = min(1.0, a * self.SLOWER_WEIGHT)
            self.seconds_per_token = a * per_token + (1 - a) * self.seconds_per_token

    @staticmethod
    def _deliver(batch: list[_Item], vectors: np.ndarray) -> None:
        for item, vector in zip(batch, vectors, strict=True):
            job = item.job
            if job.future.done():
                continue
            if job.out is None:
                job.out = np.empty((len(job.texts), vectors.shape[1]), dtype=np.float32)
            job.out[item.pos] = vector
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.out)

    async def close(self, *, drain: bool = True) -> None:
        """Stop accepting work; with ``drain`` finish queued texts first, else fail them.

        Args:
            drain: finish what is queued (True) or cancel it (False).
        """
        self._closing = True
        if not drain:
            for item in self._queue:
                if not item.job.future.done():
                    item.job.future.set_exception(NotReadyError("the server is shutting down"))
                    self._discard(item.job)
        self._wakeup.set()
        if self._collector is not None:
            await self._collector
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self._executor.shutdown(wait=True)
