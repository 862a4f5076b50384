"""The emulator's web page, used in headless Chromium: it shows queues with their state and
settings, waiting tasks with their schedule time and recent attempts, and its buttons pause,
resume and purge a queue and run a task now. Skipped without Chromium, like the example app's
test, unless REQUIRE_BROWSER=1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import requests
from google.cloud import tasks_v2

from django_tasks_cloud_tasks.emulator import Emulator
from tests.servers import Target, tasks_client
from tests.test_emulator import LOCATION, PROJECT, http_task, in_seconds, wait_until
from tests.test_example_app import browser

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

__all__ = ["browser"]  # the fixture, shared with the example app's test
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
WORK = f"{PARENT}/queues/work"


@pytest.fixture
def em(target: Target) -> Iterator[Emulator]:
    target.reset()
    with Emulator(project=PROJECT, location=LOCATION, queues=("default", "work")) as em:
        yield em


@pytest.fixture
def client(em: Emulator) -> Iterator[tasks_v2.CloudTasksClient]:
    client = tasks_client(em.address)
    yield client
    client.transport.close()


def section(driver: WebDriver, queue_id: str) -> str:
    text: str = driver.execute_script(
        "return document.getElementById(arguments[0]).textContent", f"queue-{queue_id}"
    )
    return text


def click(driver: WebDriver, queue_id: str, label: str) -> None:
    driver.execute_script(
        """const buttons = document.getElementById(arguments[0]).querySelectorAll('button');
        [...buttons].find(b => b.textContent === arguments[1]).click();""",
        f"queue-{queue_id}",
        label,
    )


def wait_for_text(driver: WebDriver, queue_id: str, text: str) -> bool:
    return wait_until(lambda: text in section(driver, queue_id), timeout=15)


def test_the_page_shows_queues_tasks_and_attempts_and_its_buttons_act(
    browser: WebDriver, em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    client.create_task(
        parent=f"{PARENT}/queues/default",
        task=http_task(target.url("/done"), http={"headers": {"X-Trace": "t-1"}}),
    )
    assert em.wait_until_idle(10)
    waiting = client.create_task(
        parent=WORK, task=http_task(target.url("/waiting"), schedule_time=in_seconds(600))
    )
    waiting_id = waiting.name.rsplit("/", 1)[1]

    browser.get(em.console_url)
    work = section(browser, "work")
    assert "RUNNING" in work
    assert "rate 500/s, burst 100, concurrency 1000; max attempts 100" in work
    assert waiting_id in work
    assert waiting.schedule_time.strftime("%Y-%m-%d %H:%M:%S") in work
    attempts: str = browser.execute_script(
        "return document.querySelector('table.attempts').textContent"
    )
    assert target.url("/done") in attempts
    assert "success200" in attempts.replace(" ", "")
    assert "X-CloudTasks-QueueName: default" in attempts
    assert "X-Trace: t-1" in attempts

    click(browser, "work", "Pause")
    assert wait_for_text(browser, "work", "PAUSED")
    assert client.get_queue(name=WORK).state == tasks_v2.Queue.State.PAUSED
    click(browser, "work", "Resume")
    assert wait_for_text(browser, "work", "RUNNING")
    assert client.get_queue(name=WORK).state == tasks_v2.Queue.State.RUNNING

    click(browser, "work", "Run now")
    assert target.wait_for_hits(1, "/waiting")
    assert em.wait_until_idle(10)
    browser.get(em.console_url)
    assert wait_for_text(browser, "work", "No tasks waiting.")

    client.create_task(
        parent=WORK, task=http_task(target.url("/purged"), schedule_time=in_seconds(600))
    )
    browser.get(em.console_url)
    click(browser, "work", "Purge")
    assert wait_for_text(browser, "work", "No tasks waiting.")
    assert client.list_tasks(parent=WORK).tasks == []
    assert target.hits("/purged") == []


@pytest.mark.parametrize(
    ("origin", "status"),
    [("http://evil.example", 403), (None, 303)],
    ids=["other-site", "no-origin-header"],
)
def test_a_form_posted_from_another_site_is_refused(
    em: Emulator, client: tasks_v2.CloudTasksClient, origin: str | None, status: int
) -> None:
    headers = {"Origin": origin} if origin else {}
    answer = requests.post(
        em.console_url + "queues/pause",
        data={"queue": WORK},
        headers=headers,
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == status
    paused = client.get_queue(name=WORK).state == tasks_v2.Queue.State.PAUSED
    assert paused is (status == 303)


@pytest.mark.parametrize(
    ("path", "form", "reason"),
    [
        ("queues/pause", {"queue": f"{PARENT}/queues/missing"}, "Queue does not exist"),
        ("queues/purge", {}, "missing 'queue'"),
        ("tasks/run", {"task": "not-a-task"}, "Task name must be formatted"),
    ],
    ids=["unknown-queue", "no-queue", "malformed-task"],
)
def test_a_bad_action_is_a_400_with_the_reason(
    em: Emulator, path: str, form: dict[str, str], reason: str
) -> None:
    answer = requests.post(em.console_url + path, data=form, timeout=10)
    assert answer.status_code == 400
    assert reason in answer.text
