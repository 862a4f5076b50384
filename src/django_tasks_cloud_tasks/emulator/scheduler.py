"""``google.cloud.scheduler.v1.CloudScheduler`` on the emulator's gRPC port, and the thread that
fires its jobs.

Like the Cloud Tasks service, the handlers use the installed client's own message classes
(``google-cloud-scheduler``, the ``scheduler`` extra). Without that package the emulator serves
Cloud Tasks alone, and Cloud Scheduler calls answer UNIMPLEMENTED.

Requests carry Cloud Scheduler's headers (``User-Agent: Google-Cloud-Scheduler``,
``X-CloudScheduler``, ``X-CloudScheduler-JobName`` with the job id, and for cron runs
``X-CloudScheduler-ScheduleTime`` in RFC 3339 UTC) and, for jobs with an ``oidc_token``, an ID token
signed by the emulator's key, as Cloud Tasks' dispatches do.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import requests
from google.cloud import scheduler_v1

from .faults import Faults
from .names import check_location
from .paging import page
from .schedules import JobAttempt, JobStore, Run
from .service import _empty, _unary
from .tokens import TokenSigner

SERVICE = "google.cloud.scheduler.v1.CloudScheduler"
MAX_JOB_PAGE = 500
# Cloud Scheduler's default attempt deadline for HTTP targets.
DEFAULT_ATTEMPT_DEADLINE = 180.0
_SENDERS = 4


class CloudSchedulerService:
    def __init__(self, store: JobStore, runner: JobRunner, fault_plans: Faults) -> None:
        self._store = store
        self._runner = runner
        self.faults = fault_plans  # Read by ``_unary``, as the Cloud Tasks service's are.

    def handler(self) -> Any:
        job = scheduler_v1.Job.serialize
        handlers = {
            "CreateJob": _unary(self.create_job, scheduler_v1.CreateJobRequest, job),
            "GetJob": _unary(self.get_job, scheduler_v1.GetJobRequest, job),
            "ListJobs": _unary(
                self.list_jobs,
                scheduler_v1.ListJobsRequest,
                scheduler_v1.ListJobsResponse.serialize,
            ),
            "UpdateJob": _unary(self.update_job, scheduler_v1.UpdateJobRequest, job),
            "DeleteJob": _unary(self.delete_job, scheduler_v1.DeleteJobRequest, _empty),
            "PauseJob": _unary(self.pause_job, scheduler_v1.PauseJobRequest, job),
            "ResumeJob": _unary(self.resume_job, scheduler_v1.ResumeJobRequest, job),
            "RunJob": _unary(self.run_job, scheduler_v1.RunJobRequest, job),
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def create_job(self, request: scheduler_v1.CreateJobRequest) -> scheduler_v1.Job:
        return self._store.create(check_location(request.parent), request.job, time.time())

    def get_job(self, request: scheduler_v1.GetJobRequest) -> scheduler_v1.Job:
        return self._store.get(request.name)

    def list_jobs(self, request: scheduler_v1.ListJobsRequest) -> scheduler_v1.ListJobsResponse:
        jobs, token = page(
            self._store.list_jobs(check_location(request.parent)),
            lambda job: str(job.name),
            page_size=request.page_size,
            page_token=request.page_token,
            max_page_size=MAX_JOB_PAGE,
        )
        return scheduler_v1.ListJobsResponse(jobs=jobs, next_page_token=token)

    def update_job(self, request: scheduler_v1.UpdateJobRequest) -> scheduler_v1.Job:
        return self._store.update(request.job, request.update_mask, time.time())

    def delete_job(self, request: scheduler_v1.DeleteJobRequest) -> None:
        self._store.delete(request.name)

    def pause_job(self, request: scheduler_v1.PauseJobRequest) -> scheduler_v1.Job:
        return self._store.pause(request.name, time.time())

    def resume_job(self, request: scheduler_v1.ResumeJobRequest) -> scheduler_v1.Job:
        return self._store.resume(request.name, time.time())

    def run_job(self, request: scheduler_v1.RunJobRequest) -> scheduler_v1.Job:
        job, run = self._store.run_now(request.name)
        self._runner.send(run)
        return job


class JobRunner:
    """Fires due jobs: one thread watches the clock, a few send the requests."""

    def __init__(
        self, store: JobStore, signer: TokenSigner, log: Callable[[str], None] | None
    ) -> None:
        self._store = store
        self._signer = signer
        self._log = log
        self._stopping = False
        self._senders = concurrent.futures.ThreadPoolExecutor(
            _SENDERS, thread_name_prefix="cloud-scheduler-emulator-sender"
        )
        self._thread = threading.Thread(
            target=self._watch, name="cloud-scheduler-emulator", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._store.changed:
            self._stopping = True
            self._store.changed.notify_all()
        self._thread.join(1)
        self._senders.shutdown(wait=False, cancel_futures=True)

    def send(self, run: Run) -> None:
        self._senders.submit(self._attempt, run)

    def _watch(self) -> None:
        while True:
            for run in self._store.take_due(time.time()):
                self.send(run)
            with self._store.changed:
                if self._stopping:
                    return
                due = self._store.next_due_locked()
                wait = None if due is None else max(due - time.time(), 0.0)
                if wait is None or wait > 0:
                    self._store.changed.wait(wait)

    def _attempt(self, run: Run) -> None:
        job = run.job
        target = job.http_target
        job_id = str(job.name).rpartition("/")[2]
        headers = {**target.headers, "User-Agent": "Google-Cloud-Scheduler"}
        headers["X-CloudScheduler"] = "true"
        headers["X-CloudScheduler-JobName"] = job_id
        if run.schedule_time is not None:
            slot = datetime.fromtimestamp(run.schedule_time, UTC)
            headers["X-CloudScheduler-ScheduleTime"] = slot.isoformat().replace("+00:00", "Z")
        if target.body and "Content-Type" not in headers:
            headers["Content-Type"] = "application/octet-stream"
        if "oidc_token" in target:
            oidc = target.oidc_token
            token = self._signer.mint(
                email=oidc.service_account_email, audience=oidc.audience or target.uri
            )
            headers["Authorization"] = f"Bearer {token}"
        method = scheduler_v1.HttpMethod(target.http_method or scheduler_v1.HttpMethod.POST).name
        deadline = job.attempt_deadline.total_seconds() if "attempt_deadline" in job else 0
        started_at = time.time()
        status, timed_out, outcome = 0, False, "error"
        try:
            with requests.Session() as session:
                session.trust_env = False
                response = session.request(
                    method,
                    target.uri,
                    headers=headers,
                    data=target.body or None,
                    timeout=deadline or DEFAULT_ATTEMPT_DEADLINE,
                    allow_redirects=False,
                )
            status = response.status_code
            outcome = str(status)
        except requests.Timeout:
            timed_out, outcome = True, "timeout"
        except Exception as exc:  # Whatever happens, the run must settle.
            outcome = f"error ({type(exc).__name__})"
        attempt = JobAttempt(
            job=job_id,
            url=target.uri,
            status=status,
            schedule_time=run.schedule_time,
            started_at=started_at,
            retry=run.retry,
            headers=headers,
        )
        self._store.finish(run, attempt, time.time(), timed_out=timed_out)
        if self._log is not None:
            kind = "run now" if run.forced else f"retry {run.retry}" if run.retry else "cron"
            self._log(f"Cloud Scheduler job {job_id} ({kind}): {method} {target.uri} -> {outcome}")
