"""The threads that send due tasks to their targets over HTTP.

A scheduler thread takes attempts from the store as they become due and allowed, and a fixed pool
of worker threads sends them, each worker with its own keep-alive ``requests.Session``.
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

WORKERS = 32


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
        # Daemon threads: an attempt stuck on a slow target must not keep the process alive.
        self._threads = [
            threading.Thread(target=self._schedule, name="cloud-tasks-emulator-scheduler"),
            *(
                threading.Thread(target=self._work, name=f"cloud-tasks-emulator-worker-{i}")
                for i in range(WORKERS)
            ),
        ]
        for thread in self._threads:
            thread.daemon = True

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        """Stop the workers after their current attempts, waiting at most ``timeout`` seconds.

        The store must be closed first, so that the scheduler has stopped handing out attempts.
        """
        self._stopping.set()
        for _ in range(WORKERS):
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def _schedule(self) -> None:
        while jobs := self._store.next_jobs():
            for job in jobs:
                self._jobs.put(job)

    def _work(self) -> None:
        with requests.Session() as session:
            # Send only what the task and Cloud Tasks specify: not requests' default headers, nor
            # cookies from earlier responses, nor proxies and credentials from the environment.
            # Skipping the cookie and environment work also saves a quarter of the CPU time of
            # each attempt.
            session.headers.clear()
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            session.trust_env = False
            while (job := self._jobs.get()) is not None and not self._stopping.is_set():
                self._attempt(session, job)

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
        try:
            # Redirects are not followed: a 3xx is a failed attempt, which makes a misrouted
            # URL (say, a missing trailing slash) visible instead of silently turning into a GET.
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
            outcome = str(status)
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
