"""``manage.py cloudtasks_emulator`` as a separate process, the way developers run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import grpc
import pytest
import requests
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

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
    server = HTTPServer(("127.0.0.1", 0), _Target)
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook/"
    server.shutdown()


def test_the_command_serves_queues_of_the_backend_logs_dispatches_and_stops_on_ctrl_c(
    target: str,
) -> None:
    port = free_port()
    proc = start("--port", str(port), "--queue", "default", "--queue", "emails")
    try:
        banner = read_line_containing(proc, "Cloud Tasks emulator on")
        assert f"127.0.0.1:{port}" in banner
        assert "project test-project, location us-central1" in banner
        client = tasks_v2.CloudTasksClient(
            transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(f"127.0.0.1:{port}"))
        )
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


def test_the_command_explains_what_to_set_when_the_backend_cannot_be_resolved() -> None:
    unconfigured = {
        "DJANGO_SETTINGS_MODULE": "tests.settings_unconfigured",
        "GCE_METADATA_HOST": "127.0.0.1:9",
    }
    proc = start("--port", str(free_port()), env=unconfigured)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 1
    assert "CLOUD_TASKS_PROJECT" in stderr
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
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


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


def test_faults_given_on_the_command_line_apply_to_the_next_calls() -> None:
    import grpc
    from google.api_core.exceptions import ServiceUnavailable
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    port = free_port()
    proc = start(
        "--port", str(port), "--project", "p", "--location", "l",
        "--fault", "CreateTask,status=UNAVAILABLE,times=1",
    )  # fmt: skip
    try:
        assert "CreateTask" in read_line_containing(proc, "Injecting fault")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        task = {"http_request": {"url": "http://127.0.0.1:9/"}}
        parent = "projects/p/locations/l/queues/default"
        client.pause_queue(name=parent)

        with pytest.raises(ServiceUnavailable, match="Fault injected"):
            client.create_task(parent=parent, task=task)
        assert client.create_task(parent=parent, task=task).name.startswith(parent)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


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
def test_a_bad_fault_is_explained_not_a_traceback(spec: str, reason: str) -> None:
    proc = start("--port", str(free_port()), "--fault", spec)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 1
    assert "--fault: " in stderr
    assert reason in stderr
    assert "Traceback" not in stderr
