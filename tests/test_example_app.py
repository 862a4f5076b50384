"""The example project, run for real and used through its page in headless Chromium.

The emulator and the demo's Django server run as subprocesses with the demo's own settings, so this
covers what ``scripts/demo`` starts: enqueue over gRPC, dispatch over HTTP, results in the database,
and the page's live list. Without Chromium the test is skipped, unless REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SCREENSHOT = REPO / "test-artifacts" / "example-app.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1100",
)
STARTUP_TIMEOUT = 20.0
TASK_TIMEOUT = 10.0


@dataclass
class DemoApp:
    url: str
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def exited(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def logs(self) -> str:
        """The tail of each subprocess's output, to explain a failure."""
        parts = []
        for log in sorted(self.log_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-25:]
            parts.append(f"--- {log.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until[T](check: Callable[[], T | None], what: str, timeout: float, app: DemoApp) -> T:
    deadline = time.monotonic() + timeout
    while (value := check()) is None or value is False:
        if exited := app.exited():
            raise AssertionError(f"the {exited[0]} exited while waiting for {what}\n{app.logs()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{app.logs()}")
        time.sleep(0.1)
    return value


def _start(stack: ExitStack, app: DemoApp, name: str, args: list[str], env: dict[str, str]) -> None:
    log = stack.enter_context((app.log_dir / f"{name}.log").open("w"))
    process = subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLES,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stack.callback(_stop, process)
    app.processes[name] = process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = (
            f"the browser test needs {', '.join(missing)} "
            "(apt-get install chromium chromium-driver; pip install -e '.[dev]')"
        )
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    )
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoApp]:
    tmp = tmp_path_factory.mktemp("demo")
    port, emulator_port = _free_port(), _free_port()
    app = DemoApp(url=f"http://127.0.0.1:{port}", log_dir=tmp)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "demo.settings",
        "DEMO_DATABASE": str(tmp / "db.sqlite3"),
        "CLOUD_TASKS_EMULATOR_HOST": f"127.0.0.1:{emulator_port}",
        "SERVICE_URL": app.url,
        "PYTHONUNBUFFERED": "1",
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
    )
    assert migrate.returncode == 0, f"migrate failed:\n{migrate.stdout}{migrate.stderr}"
    with ExitStack() as stack:
        emulator_args = ["--host", "127.0.0.1", "--port", str(emulator_port)]
        queues = ["--queue", "default", "--queue", "high-priority"]
        _start(stack, app, "emulator", ["cloudtasks_emulator", *emulator_args, *queues], env)
        _start(stack, app, "server", ["runserver", f"127.0.0.1:{port}", "--noreload"], env)
        _wait_until(lambda: _listening(emulator_port), "the emulator", STARTUP_TIMEOUT, app)
        _wait_until(lambda: _answers(f"{app.url}/tasks/"), "the server", STARTUP_TIMEOUT, app)
        yield app


@pytest.fixture(scope="module")
def page(browser: WebDriver, demo_app: DemoApp) -> Iterator[WebDriver]:
    browser.get(demo_app.url + "/")
    _wait_until(lambda: "live" in _text(browser, "#feed-state"), "the task list", 5, demo_app)
    yield browser
    # Taken while the app still runs, so the page shows its last live state.
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))


def _text(driver: WebDriver, selector: str) -> str:
    text: str = driver.execute_script(
        "return document.querySelector(arguments[0]).textContent", selector
    )
    return text


def _enqueue(driver: WebDriver, app: DemoApp, kind: str, **fields: str) -> str:
    """Fill in and submit one form of the page; the id of the task it enqueued."""
    previous = driver.execute_script("return document.getElementById('flash').dataset.taskId")
    form = driver.find_element("css selector", f"#enqueue-{kind}")
    for name, value in fields.items():
        field = form.find_element("css selector", f"[name={name}]")
        field.clear()
        field.send_keys(value)
    form.find_element("css selector", "button[type=submit]").click()

    def answered() -> dict[str, Any] | None:
        flash: dict[str, Any] = driver.execute_script(
            "const f = document.getElementById('flash');"
            "return {id: f.dataset.taskId, error: f.classList.contains('error'),"
            " text: f.textContent}"
        )
        if flash["error"]:
            raise AssertionError(f"enqueueing {kind} failed: {flash['text']}\n{app.logs()}")
        return flash if flash["id"] and flash["id"] != previous else None

    task_id: str = _wait_until(answered, f"{kind} to be enqueued", 5, app)["id"]
    return task_id


def _row(driver: WebDriver, task_id: str) -> dict[str, Any] | None:
    """What the live list shows for a task, read at once (the list is redrawn every second)."""
    row: dict[str, Any] | None = driver.execute_script(
        """
        const tr = document.querySelector(`tr[data-task-id="${arguments[0]}"]`);
        if (!tr) return null;
        const cell = (name) => tr.querySelector(`td.${name}`).textContent;
        return {status: tr.dataset.status, state: tr.dataset.state,
                attempts: Number(tr.dataset.attempts), shown_attempts: cell("attempts"),
                task: cell("task"), queue: cell("queue"), result: cell("result")};
        """,
        task_id,
    )
    return row


def _wait_for_row(
    driver: WebDriver,
    app: DemoApp,
    task_id: str,
    what: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float = TASK_TIMEOUT,
) -> dict[str, Any]:
    def matching() -> dict[str, Any] | None:
        row = _row(driver, task_id)
        return row if row is not None and check(row) else None

    try:
        return _wait_until(matching, what, timeout, app)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast shown: {_row(driver, task_id)}") from None


def test_the_demo_refuses_a_delivery_without_an_id_token(demo_app: DemoApp) -> None:
    request = urllib.request.Request(
        f"{demo_app.url}/cloudtasks/execute/",
        data=b'{"task_id": "forged", "task_path": "demo.tasks.add_numbers", "args": [1, 2]}',
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)

    assert refused.value.code == 401
    assert "Bearer" in json.loads(refused.value.read())["reason"]


def test_adding_numbers_succeeds_with_the_sum(page: WebDriver, demo_app: DemoApp) -> None:
    task_id = _enqueue(page, demo_app, "add", a="5", b="3")

    row = _wait_for_row(page, demo_app, task_id, "the sum", lambda r: r["status"] == "SUCCESSFUL")
    assert row == {
        "status": "SUCCESSFUL",
        "state": "SUCCESSFUL",
        "attempts": 1,
        "shown_attempts": "1",
        "task": "add_numbers",
        "queue": "default",
        "result": "8",
    }


def test_urgent_task_runs_on_the_high_priority_queue(page: WebDriver, demo_app: DemoApp) -> None:
    task_id = _enqueue(page, demo_app, "urgent", message="Disk full")

    row = _wait_for_row(page, demo_app, task_id, "the alert", lambda r: r["status"] == "SUCCESSFUL")
    assert row["queue"] == "high-priority (priority 50)"
    assert row["result"] == "Alerted: Disk full"


@pytest.fixture(scope="module")
def failing_task(page: WebDriver, demo_app: DemoApp) -> str:
    """The failing task, enqueued once: its 4 attempts take seconds, which the tests in between
    (and the delayed task's wait) overlap."""
    return _enqueue(page, demo_app, "fail")


def test_a_failing_task_shows_when_its_next_attempt_comes(
    page: WebDriver, demo_app: DemoApp, failing_task: str
) -> None:
    retrying = _wait_for_row(
        page,
        demo_app,
        failing_task,
        "a failure waiting for its retry",
        lambda r: r["state"] == "RETRYING",
    )
    # The store says FAILED; the queue says another attempt comes, and when.
    assert retrying["status"] == "FAILED"
    assert re.fullmatch(r"[123] of 4 failed, next at .+", retrying["shown_attempts"])
    assert retrying["queue"] == "retries"
    assert retrying["result"] == "RuntimeError: This task fails on purpose"


def test_delayed_task_waits_then_runs(page: WebDriver, demo_app: DemoApp) -> None:
    delay = 2
    clicked = time.monotonic()
    task_id = _enqueue(page, demo_app, "delayed", name="Ada", delay=str(delay))

    waiting = _wait_for_row(page, demo_app, task_id, "the scheduled task", lambda r: True)
    assert (waiting["status"], waiting["attempts"]) == ("READY", 0)
    assert re.fullmatch(r"0, scheduled for .+", waiting["shown_attempts"])
    time.sleep(max(0.0, clicked + delay / 2 - time.monotonic()))
    assert _row(page, task_id) == waiting

    done = _wait_for_row(
        page, demo_app, task_id, "the delayed run", lambda r: r["status"] == "SUCCESSFUL"
    )
    # The server fixed run_after after the click, and the page saw the run after that.
    assert time.monotonic() - clicked >= delay
    assert (done["result"], done["attempts"]) == ("Hello, Ada!", 1)


def test_a_failing_task_is_given_up_after_its_last_attempt_with_a_line_each(
    page: WebDriver, demo_app: DemoApp, failing_task: str
) -> None:
    # 4 attempts, 1 + 2 + 2 s of backoff apart: then the queue gives up.
    given_up = _wait_for_row(
        page, demo_app, failing_task, "the last attempt", lambda r: r["state"] == "FAILED", 30
    )
    assert (given_up["attempts"], given_up["shown_attempts"]) == (4, "4 of 4, gave up")
    # One console line per attempt from the server, and no traceback.
    server_log = (demo_app.log_dir / "server.log").read_text()
    assert len(re.findall(r"always_fails: attempt \d failed: RuntimeError", server_log)) == 4
    assert "Traceback" not in server_log
