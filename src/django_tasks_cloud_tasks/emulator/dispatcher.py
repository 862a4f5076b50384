"""The threads that send due tasks to their targets over HTTP.

A scheduler thread takes attempts from the store as they become due and allowed (the store
applies each queue's rate and ``max_concurrent_dispatches``), and hands them to worker threads,
each worker with its own keep-alive connections (``sender.py``). There is no fixed pool, so the
number of attempts in flight is bounded only by the queues' own limits and one slow queue never
holds up another for long:

- up to ``BASE_WORKERS`` workers start as soon as attempts wait for one;
- beyond that, while attempts wait, a grower thread doubles the workers every
  ``GROW_INTERVAL`` in which they are evidently waiting on their targets rather than on the
  CPU: no attempt finished at all, or the process used less than ``IDLE_CPU`` of a core while
  the machine had a core to spare; after two intervals in which nothing finished, it starts a
  worker for every waiting attempt. Workers that keep a CPU busy gain nothing from more threads
  but switching (measured: a pool grown to 1,000 threads sends fewer attempts a second than 32).
  Neither signal alone is enough: an attempt's wall time and the process's CPU share both look
  "slow" when other processes take the CPU, and a slow handler still finishes some attempts;
  workers parked on slow targets cost nothing, so a 500 ms handler reaches hundreds of attempts
  in flight within a few hundred milliseconds;
- a worker idle for ``IDLE_WORKER_SECONDS`` exits.

Threads rather than an event loop: blocking connections per thread are what the emulator
already used, and an attempt waiting on a slow target costs a parked thread and nothing more.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable

from .attempts import NO_RESPONSE
from .records import DispatchRecord, Job
from .retry import retry_after_seconds
from .sender import Sender
from .state import Store
from .tokens import TokenSigner

BASE_WORKERS = 32
GROW_INTERVAL = 0.05
IDLE_CPU = 0.5
# How long an idle worker waits for another attempt before it exits.
IDLE_WORKER_SECONDS = 30.0


class Dispatcher:
    def __init__(
        self, store: Store, signer: TokenSigner, log: Callable[[str], None] | None
    ) -> None:
        self._store = store
        self._signer = signer
        self._log = log
        self._log_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        # Guards _idle and _workers. _idle counts waiting workers minus queued jobs: a job put
        # while it is positive has a worker ready for it; a negative value is the backlog.
        self._pool_lock = threading.Lock()
        self._backlog = threading.Condition(self._pool_lock)  # the grower waits here
        self._idle = 0
        self._finished = 0  # attempts finished, for the grower
        self._workers: set[threading.Thread] = set()
        self._threads = [
            threading.Thread(target=run, name=f"cloud-tasks-emulator-{name}", daemon=True)
            for run, name in ((self._schedule, "scheduler"), (self._grow, "grower"))
        ]

    @property
    def workers(self) -> int:
        """How many worker threads exist now (busy or idle)."""
        with self._pool_lock:
            return len(self._workers)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        """Stop the workers after their current attempts, waiting at most ``timeout`` seconds.

        The store must be closed first, so that the scheduler has stopped handing out attempts.
        """
        self._stopping.set()
        deadline = time.monotonic() + timeout
        with self._pool_lock:
            self._backlog.notify_all()
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._pool_lock:
            workers = list(self._workers)
        for _ in workers:
            self._jobs.put(None)
        # Daemon threads: an attempt stuck on a slow target must not keep the process alive.
        for thread in workers:
            thread.join(max(deadline - time.monotonic(), 0))

    def _schedule(self) -> None:
        while jobs := self._store.next_jobs():
            with self._pool_lock:
                for job in jobs:
                    self._jobs.put(job)
                    self._idle -= 1
                    if self._idle < 0 and len(self._workers) < BASE_WORKERS:
                        self._spawn()
                if self._idle < 0:
                    self._backlog.notify()

    def _grow(self) -> None:
        stalled = 0  # consecutive intervals in which no attempt finished
        with self._pool_lock:
            while not self._stopping.is_set():
                if self._idle >= 0:
                    stalled = 0
                    self._backlog.wait()
                    continue
                finished, cpu, spare = self._finished, time.process_time(), _SpareCpu()
                # A full interval, whatever wakes the condition meanwhile: over a shorter one,
                # "nothing finished" would be a matter of chance.
                deadline = time.monotonic() + GROW_INTERVAL
                while (left := deadline - time.monotonic()) > 0 and not self._stopping.is_set():
                    self._backlog.wait(left)
                stalled = stalled + 1 if self._finished == finished else 0
                if stalled >= 2:
                    # Nothing finished for two intervals: every worker waits on a target.
                    grow = -self._idle
                elif stalled or (
                    (time.process_time() - cpu) < IDLE_CPU * GROW_INTERVAL and spare.core()
                ):
                    grow = max(len(self._workers), 1)
                else:
                    grow = 0
                for _ in range(min(grow, -self._idle)):
                    self._spawn()

    def _spawn(self) -> None:
        # The caller holds _pool_lock. The new worker is a waiting one until it takes a job.
        thread = threading.Thread(
            target=self._work, name=f"cloud-tasks-emulator-worker-{len(self._workers)}"
        )
        thread.daemon = True
        self._workers.add(thread)
        self._idle += 1
        thread.start()

    def _work(self) -> None:
        sender = Sender()
        try:
            while (job := self._next_job()) is not None and not self._stopping.is_set():
                self._attempt(sender, job)
                with self._pool_lock:
                    self._idle += 1
                    self._finished += 1
        finally:
            sender.close()
            with self._pool_lock:
                self._workers.discard(threading.current_thread())

    def _next_job(self) -> Job | None:
        """The next job, or None when stopping or after IDLE_WORKER_SECONDS without one."""
        while True:
            try:
                return self._jobs.get(timeout=IDLE_WORKER_SECONDS)
            except queue.Empty:
                with self._pool_lock:
                    # A job put after the timeout but before the lock is this worker's to take.
                    if self._jobs.empty():
                        self._idle -= 1
                        return None

    def _attempt(self, sender: Sender, job: Job) -> None:
        entry = job.entry
        target = entry.target
        headers = dict(job.headers)
        if target.oidc_email is not None:
            token = self._signer.mint(email=target.oidc_email, audience=target.oidc_audience)
            headers["Authorization"] = f"Bearer {token}"
        started_at = time.time()
        clock = time.perf_counter()
        status = NO_RESPONSE
        retry_after = None
        timed_out = False
        try:
            answer = sender.send(target.method, target.url, headers, target.body, target.timeout)
            status = answer.status
            retry_after = retry_after_seconds(status, answer.retry_after)
            outcome = str(status)
            # Redirects are not followed: a 3xx is a failed attempt, which makes a misrouted
            # URL (say, a missing trailing slash) visible instead of silently turning a POST
            # into a GET without its body. See docs/emulator.md.
            if 300 <= status < 400 and answer.location is not None:
                outcome += f" (redirect to {answer.location} not followed)"
        except TimeoutError:
            timed_out = True
            outcome = "timeout"
        # Whatever goes wrong, the attempt must settle, or the task would stay in flight forever.
        except Exception as exc:
            outcome = f"error ({type(exc).__name__})"
        duration = time.perf_counter() - clock
        record = DispatchRecord(
            queue=entry.queue.short_id,
            task=entry.task_id,
            url=target.url,
            status=status,
            attempt=job.attempt,
            headers=headers,
            started_at=started_at,
            duration=duration,
        )
        self._store.finish(job, record, retry_after=retry_after, timed_out=timed_out)
        if self._log is not None:
            line = (
                f"{target.method} {target.url} -> {outcome} in {duration * 1000:.0f} ms "
                f"(queue={record.queue} task={record.task} retry={record.attempt})"
            )
            with self._log_lock:
                self._log(line)


class _SpareCpu:
    """Whether the machine had at least one core idle since this object was made (Linux's
    /proc/stat; elsewhere never, which leaves growth to the no-attempt-finished signal)."""

    def __init__(self) -> None:
        self._start = _cpu_times()

    def core(self) -> bool:
        end = _cpu_times()
        if self._start is None or end is None:
            return False
        total = end[0] - self._start[0]
        idle = end[1] - self._start[1]
        cores = os.cpu_count() or 1
        return total > 0 and idle / total * cores >= 1


def _cpu_times() -> tuple[int, int] | None:
    """(all, idle) jiffies of the machine so far."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return None
    values = [int(field) for field in fields]
    return sum(values), values[3] + values[4]  # idle + iowait
