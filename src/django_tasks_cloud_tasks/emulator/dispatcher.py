"""The threads that send due tasks to their targets over HTTP.

A scheduler thread takes attempts from the store as they become due and allowed (the store
applies each queue's rate and ``max_concurrent_dispatches``), and hands each to a worker thread,
each worker with its own keep-alive ``requests.Session``. There is no fixed pool: a worker is
started whenever every existing one is busy, and retires after a while without work, so the
number of attempts in flight is bounded only by the queues' own limits and one slow queue never
holds up another. Threads rather than an event loop, because a blocking ``requests`` session per
thread already sends an attempt for less CPU than the alternatives measured (see
docs/emulator.md), and an attempt waiting on a slow target costs a parked thread, nothing more.
"""

from __future__ import annotations

import http.cookiejar
import queue
import threading
import time
from collections.abc import Callable

import requests

from .attempts import NO_RESPONSE
from .records import DispatchRecord, Job
from .retry import retry_after_seconds
from .state import Store
from .tokens import TokenSigner

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
        # while it is positive has a worker ready for it; otherwise a new worker is started.
        self._pool_lock = threading.Lock()
        self._idle = 0
        self._workers: set[threading.Thread] = set()
        self._scheduler = threading.Thread(
            target=self._schedule, name="cloud-tasks-emulator-scheduler", daemon=True
        )

    @property
    def workers(self) -> int:
        """How many worker threads exist now (busy or idle)."""
        with self._pool_lock:
            return len(self._workers)

    def start(self) -> None:
        self._scheduler.start()

    def stop(self, timeout: float) -> None:
        """Stop the workers after their current attempts, waiting at most ``timeout`` seconds.

        The store must be closed first, so that the scheduler has stopped handing out attempts.
        """
        self._stopping.set()
        deadline = time.monotonic() + timeout
        self._scheduler.join(max(deadline - time.monotonic(), 0))
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
                    if self._idle > 0:
                        self._idle -= 1
                    else:
                        self._spawn()

    def _spawn(self) -> None:
        # The caller holds _pool_lock.
        thread = threading.Thread(
            target=self._work, name=f"cloud-tasks-emulator-worker-{len(self._workers)}"
        )
        thread.daemon = True
        self._workers.add(thread)
        thread.start()

    def _work(self) -> None:
        with requests.Session() as session:
            # Send only what the task and Cloud Tasks specify: not requests' default headers, nor
            # cookies from earlier responses, nor proxies and credentials from the environment.
            # Skipping the cookie and environment work also saves a quarter of the CPU time of
            # each attempt.
            session.headers.clear()
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            session.trust_env = False
            while (job := self._next_job()) is not None and not self._stopping.is_set():
                self._attempt(session, job)
                with self._pool_lock:
                    self._idle += 1
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

    def _attempt(self, session: requests.Session, job: Job) -> None:
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
        redirect = ""
        try:
            # Redirects are not followed: a 3xx is a failed attempt, which makes a misrouted
            # URL (say, a missing trailing slash) visible instead of silently turning a POST
            # into a GET without its body. See docs/emulator.md.
            with session.request(
                target.method,
                target.url,
                headers=headers,
                data=target.body,
                timeout=target.timeout,
                allow_redirects=False,
            ) as response:
                status = response.status_code
                retry_after = retry_after_seconds(status, response.headers.get("Retry-After"))
                if response.is_redirect:
                    redirect = f" (redirect to {response.headers['Location']} not followed)"
            outcome = str(status) + redirect
        except requests.Timeout:
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
