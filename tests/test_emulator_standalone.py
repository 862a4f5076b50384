"""The emulator without Django: ``python -m django_tasks_cloud_tasks.emulator``, the
``cloud-tasks-emulator`` script and the container recipe's command line, each in a process of its
own with no Django settings module, configured by flags or environment variables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.servers import Target, stop, tasks_client
from tests.test_emulator import http_task
from tests.test_emulator_command import free_port, read_line_containing

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "cloud-tasks-emulator"


def without_django(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CLOUD_TASKS_"))}
    env.pop("GOOGLE_CLOUD_PROJECT", None)
    return {**env, **extra}


def run(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_importing_the_emulator_does_not_import_django() -> None:
    code = (
        "import sys\n"
        "from django_tasks_cloud_tasks.emulator import cli, Emulator\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=without_django(), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_python_m_runs_from_flags_and_dispatches(target: Target) -> None:
    port = free_port()
    proc = run(
        [sys.executable, "-m", "django_tasks_cloud_tasks.emulator", "--port", str(port),
         "--project", "any-project", "--location", "europe-west1", "--queue", "jobs"],
        without_django(),
    )  # fmt: skip
    try:
        banner = read_line_containing(proc, "Cloud Tasks emulator on")
        assert "project any-project, location europe-west1, queues: jobs" in banner
        parent = "projects/any-project/locations/europe-west1/queues/jobs"
        tasks_client(f"127.0.0.1:{port}").create_task(
            parent=parent, task=http_task(target.url("/standalone"))
        )
        assert read_line_containing(proc, "->").startswith(
            f"POST {target.url('/standalone')} -> 200"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not SCRIPT.exists(), reason="the package is not installed with its scripts")
def test_the_console_script_takes_its_settings_from_the_environment(tmp_path: Path) -> None:
    port, token_port = free_port(), free_port()
    env = without_django(
        CLOUD_TASKS_EMULATOR_PORT=str(port),
        CLOUD_TASKS_EMULATOR_TOKEN_PORT=str(token_port),
        CLOUD_TASKS_EMULATOR_QUEUES="a, b",
        GOOGLE_CLOUD_PROJECT="env-project",
        CLOUD_TASKS_EMULATOR_STATE_FILE=str(tmp_path / "state.sqlite3"),
    )
    proc = run([str(SCRIPT)], env)
    try:
        banner = read_line_containing(proc, "Cloud Tasks emulator on")
        assert "project env-project, location us-central1, queues: a, b" in banner
        page = requests.get(f"http://127.0.0.1:{token_port}/", timeout=10)
        assert "projects/env-project/locations/us-central1/queues/b" in page.text
    finally:
        assert stop(proc) == 0
    assert (tmp_path / "state.sqlite3").exists()


# The kernel hands a signal sent to a process to any of its threads. This one sends SIGINT to a
# thread other than the main one, once the emulator serves: Python then runs the handler only
# when the main thread next wakes.
INTERRUPT_ANOTHER_THREAD = """
import signal, socket, sys, threading, time
from django_tasks_cloud_tasks.emulator import cli

def interrupt_this_thread(port):
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)

threading.Thread(target=interrupt_this_thread, args=(int(sys.argv[1]),), daemon=True).start()
sys.exit(cli.main(["--port", sys.argv[1]]))
"""


def test_ctrl_c_stops_the_emulator_whichever_thread_receives_it() -> None:
    port = free_port()
    proc = run([sys.executable, "-c", INTERRUPT_ANOTHER_THREAD, str(port)], without_django())
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("SIGINT to a worker thread did not stop the emulator") from None
    assert proc.returncode == 0, err
    assert "Emulator stopped." in out


def test_an_unusable_state_file_is_explained_not_a_traceback(tmp_path: Path) -> None:
    proc = run(
        [sys.executable, "-m", "django_tasks_cloud_tasks.emulator", "--port", str(free_port()),
         "--state-file", str(tmp_path / "missing-dir" / "state.sqlite3")],
        without_django(),
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Could not start the emulator: unable to open database file" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("variable", "value", "flag", "reason"),
    [
        ("PORT", "eighty", "--port", "is not a whole number from 0 to 65535"),
        ("TOKEN_PORT", "70000", "--token-port", "is not a whole number from 0 to 65535"),
        ("QUEUE_REUSE_WAIT", "-1", "--queue-reuse-wait", "is not a number of seconds of 0"),
        ("TASK_NAME_REUSE_WAIT", "nan", "--task-name-reuse-wait", "is not a number of seconds"),
    ],
)
def test_a_bad_number_in_the_environment_is_a_usage_error_naming_it(
    variable: str, value: str, flag: str, reason: str
) -> None:
    env = without_django(**{f"CLOUD_TASKS_EMULATOR_{variable}": value})
    proc = run([sys.executable, "-m", "django_tasks_cloud_tasks.emulator"], env)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert f"argument {flag}: {value!r} {reason}" in stderr
    assert f"CLOUD_TASKS_EMULATOR_{variable})" in stderr
    assert "Traceback" not in stderr
    assert "Cloud Tasks emulator on" not in stdout


def dockerfile_command() -> tuple[list[str], dict[str, str]]:
    """The CMD of emulator.Dockerfile and the environment its ENV lines set."""
    env: dict[str, str] = {}
    command: list[str] = []
    lines = (ROOT / "emulator.Dockerfile").read_text().replace("\\\n", " ").splitlines()
    for line in lines:
        keyword, _, rest = line.partition(" ")
        if keyword == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                env[key] = value
        elif keyword == "CMD":
            command = json.loads(rest)
    return command, env


@pytest.mark.skipif(not SCRIPT.exists(), reason="the package is not installed with its scripts")
def test_the_container_recipe_command_line_serves(tmp_path: Path, target: Target) -> None:
    command, env = dockerfile_command()
    assert command == ["cloud-tasks-emulator"]
    port, token_port = free_port(), free_port()
    # As in the container, but on free ports and with the volume in a temporary directory.
    env.update(
        CLOUD_TASKS_EMULATOR_PORT=str(port),
        CLOUD_TASKS_EMULATOR_TOKEN_PORT=str(token_port),
        CLOUD_TASKS_EMULATOR_STATE_FILE=str(tmp_path / "emulator.sqlite3"),
    )
    proc = run([str(SCRIPT.parent / command[0]), *command[1:]], without_django(**env))
    try:
        banner = read_line_containing(proc, "Cloud Tasks emulator on")
        assert f"0.0.0.0:{port}" in banner
        client = tasks_client(f"127.0.0.1:{port}")
        queues = client.list_queues(parent="projects/demo-project/locations/us-central1")
        assert [q.name.rsplit("/", 1)[1] for q in queues] == ["default"]
        assert requests.get(f"http://127.0.0.1:{token_port}/certs", timeout=10).ok
    finally:
        assert stop(proc, signal.SIGTERM) == 0
