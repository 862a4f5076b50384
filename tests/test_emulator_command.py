"""``manage.py cloudtasks_emulator`` as a separate process, the way developers run it (and its
refusals of bad faults, which come before anything starts, in this one)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.management import CommandError, call_command
from google.api_core.exceptions import ServiceUnavailable
from google.cloud import tasks_v2

from django_tasks_cloud_tasks.config import LOCAL_LOCATION, LOCAL_PROJECT
from django_tasks_cloud_tasks.sync import scheduler_client
from tests.servers import BackgroundServer, stop, tasks_client

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "django", "cloudtasks_emulator", *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT),
             **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def read_line_containing(proc: subprocess.Popen[str], text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(
        f"no line with {text!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
    )


class _Target(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def target() -> Iterator[str]:
    with BackgroundServer(_Target) as server:
        yield f"{server.base_url}/hook/"


def test_the_command_serves_queues_of_the_backend_logs_dispatches_and_stops_on_ctrl_c(
    target: str,
) -> None:
    port = free_port()
    proc = start("--port", str(port), "--queue", "default", "--queue", "emails")
    try:
        banner = read_line_containing(proc, "Cloud Tasks emulator on")
        assert f"127.0.0.1:{port}" in banner
        assert "project test-project, location us-central1" in banner
        client = tasks_client(f"127.0.0.1:{port}")
        parent = "projects/test-project/locations/us-central1"
        queues = {q.name.rsplit("/", 1)[1] for q in client.list_queues(parent=parent)}
        assert queues == {"default", "emails"}

        client.create_task(
            parent=f"{parent}/queues/emails", task={"http_request": {"url": target, "body": b"x"}}
        )

        line = read_line_containing(proc, "->")
        assert line.startswith(f"POST {target} -> 204")
        assert "queue=emails" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert "Emulator stopped." in (proc.stdout.read() if proc.stdout else "")
    finally:
        proc.kill()
        proc.wait()


def test_an_unconfigured_backend_gets_the_local_defaults_the_backend_uses_on_the_emulator() -> None:
    unconfigured = {"DJANGO_SETTINGS_MODULE": "tests.settings_unconfigured"}
    proc = start("--port", str(free_port()), env=unconfigured)
    try:
        banner = read_line_containing(proc, "Cloud Tasks emulator on")
        assert f"(project {LOCAL_PROJECT}, location {LOCAL_LOCATION}," in banner
    finally:
        stop(proc)


def test_the_command_explains_what_to_set_when_the_backend_cannot_be_resolved() -> None:
    bad_project = {
        "DJANGO_SETTINGS_MODULE": "tests.settings_unconfigured",
        "GOOGLE_CLOUD_PROJECT": "not a project",
    }
    proc = start("--port", str(free_port()), env=bad_project)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 1
    assert "'not a project' is not a valid Google Cloud project id" in stderr
    assert "--project and --location" in stderr


def test_a_busy_port_is_reported_not_hidden() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = start("--port", str(busy.getsockname()[1]))
        _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 1
    assert "Could not start the emulator" in stderr


def test_the_command_takes_the_issuer_url_the_backend_should_reach_the_keys_at() -> None:
    token_port = free_port()
    issuer = f"http://localhost:{token_port}"
    proc = start("--port", str(free_port()), "--token-port", str(token_port), "--issuer", issuer)
    try:
        banner = read_line_containing(proc, "Cloud Tasks emulator on")
        assert f"OIDC issuer {issuer}." in banner
        assert requests.get(f"{issuer}/certs", timeout=5).status_code == 200
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["--issuer", "emulator:8124"], "issuer must be an http:// or https:// URL"),
        (["--queue", "no spaces"], "Queue name must be formatted"),
    ],
)
def test_bad_arguments_are_explained_not_a_traceback(arguments: list[str], reason: str) -> None:
    proc = start("--port", str(free_port()), *arguments)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 1
    assert "Could not start the emulator: " in stderr
    assert reason in stderr
    assert "Traceback" not in stderr


def test_the_command_creates_the_declared_queues_and_schedules() -> None:
    port = free_port()
    proc = start("--port", str(port), env={"DJANGO_SETTINGS_MODULE": "tests.settings_declared"})
    try:
        schedule = read_line_containing(proc, "Schedule digest")
        assert "tests.tasks.add at '0 8 * * 1' (UTC), next at" in schedule
        banner = read_line_containing(proc, "Cloud Tasks emulator on")
        assert "queues: emails, urgent, default" in banner
        tasks = tasks_client(f"127.0.0.1:{port}")
        parent = "projects/test-project/locations/us-central1"
        emails = tasks.get_queue(name=f"{parent}/queues/emails")
        assert emails.retry_config.max_attempts == 4
        assert emails.rate_limits.max_dispatches_per_second == 2
        assert tasks.get_queue(name=f"{parent}/queues/urgent")
        scheduler = scheduler_client(f"127.0.0.1:{port}")
        job = scheduler.get_job(name=f"{parent}/jobs/digest")
        assert job.http_target.uri == "http://127.0.0.1:1/cloudtasks/schedule/digest/"
    finally:
        stop(proc)


def test_faults_given_on_the_command_line_apply_to_the_next_calls() -> None:
    port = free_port()
    proc = start(
        "--port", str(port), "--project", "p", "--location", "l",
        "--fault", "CreateTask,status=UNAVAILABLE,times=1",
    )  # fmt: skip
    try:
        assert "CreateTask" in read_line_containing(proc, "Injecting fault")
        client = tasks_client(f"127.0.0.1:{port}")
        task = {"http_request": {"url": "http://127.0.0.1:9/"}}
        parent = "projects/p/locations/l/queues/default"
        client.pause_queue(name=parent)

        with pytest.raises(ServiceUnavailable, match="Fault injected"):
            client.create_task(parent=parent, task=task)
        assert client.create_task(parent=parent, task=task).name.startswith(parent)
    finally:
        stop(proc)


def test_the_command_keeps_its_queues_and_tasks_in_a_state_file(tmp_path: Path) -> None:
    port = free_port()
    state = ["--port", str(port), "--state-file", str(tmp_path / "state.sqlite3")]
    parent = "projects/test-project/locations/us-central1"
    proc = start(*state, "--queue", "kept")
    try:
        read_line_containing(proc, "Cloud Tasks emulator on")
        client = tasks_client(f"127.0.0.1:{port}")
        client.pause_queue(name=f"{parent}/queues/kept")
        client.create_task(
            parent=f"{parent}/queues/kept", task={"http_request": {"url": "http://127.0.0.1:9/"}}
        )
    finally:
        assert stop(proc) == 0

    proc = start(*state)
    try:
        banner = read_line_containing(proc, "Cloud Tasks emulator on")
        assert "queues: default" in banner
        # A new channel: the first one waits out gRPC's reconnect backoff after the restart.
        client.transport.close()
        client = tasks_client(f"127.0.0.1:{port}")
        queues = {q.name.rsplit("/", 1)[1]: q for q in client.list_queues(parent=parent)}
        assert queues["kept"].state == tasks_v2.Queue.State.PAUSED
        assert len(client.list_tasks(parent=f"{parent}/queues/kept").tasks) == 1
    finally:
        assert stop(proc) == 0


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        pytest.param("CreateTask,status=NOPE", "is not a gRPC status", id="unknown-status"),
        pytest.param("CreateTask,after-success", "needs the status", id="after-without-status"),
        pytest.param("CreateTask,times=0", "times >= 1", id="zero-times"),
        pytest.param("CreateTask,color=red", "unknown fault setting", id="unknown-setting"),
        pytest.param("CreateTask", "needs a status, a delay", id="no-fault"),
    ],
)
def test_a_bad_fault_is_refused_with_the_reason(spec: str, reason: str) -> None:
    # In this process: the faults are read before anything starts.
    with pytest.raises(CommandError, match=f"^--fault: .*{re.escape(reason)}"):
        call_command("cloudtasks_emulator", "--port", "0", "--fault", spec)


def test_a_bad_fault_is_explained_not_a_traceback() -> None:
    proc = start("--port", str(free_port()), "--fault", "CreateTask,status=NOPE")
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 1
    assert "--fault: 'NOPE' is not a gRPC status" in stderr
    assert "Traceback" not in stderr


def test_a_bad_number_in_the_environment_is_a_command_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_PORT", "8123x")
    with pytest.raises(CommandError, match=r"argument --port: '8123x' is not a whole number .*"
                       r"CLOUD_TASKS_EMULATOR_PORT"):  # fmt: skip
        call_command("cloudtasks_emulator")
