"""The emulator's web page: queues, waiting tasks and recent attempts, with a few buttons.

Server-rendered HTML with no script, served by the same small HTTP server as the token keys (one
port less to publish from a container). The buttons are plain form POSTs that answer with a
redirect back to the page. A POST whose ``Origin`` is another site is refused, so that a page
open in the same browser cannot pause or purge queues behind the developer's back.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qs

from google.api_core.exceptions import GoogleAPICallError
from google.cloud import tasks_v2

from .names import check_queue_name, short_id, split_task_name
from .records import DispatchRecord, QueueView
from .state import Store

TASKS_SHOWN = 50
RECORDS_SHOWN = 100
_ACTIONS = ("/queues/pause", "/queues/resume", "/queues/purge", "/tasks/run")
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.3rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}form{display:inline}.PAUSED,.failure{color:#b00}
.RUNNING,.success{color:#070}
details{max-width:40rem}code{font-size:12px}
"""


class Page:
    """An HTTP answer: status, content type, body, extra headers."""

    def __init__(
        self,
        status: int,
        body: str = "",
        *,
        content_type: str = "text/html; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body.encode()
        self.content_type = content_type
        self.headers = dict(headers or {})


class Console:
    def __init__(self, store: Store, title: str) -> None:
        self._store = store
        self._title = title

    def get(self, path: str) -> Page | None:
        """The page at ``path``, or None if there is none."""
        if path != "/":
            return None
        queues, records = self._store.overview(tasks=TASKS_SHOWN, records=RECORDS_SHOWN)
        return Page(200, _render(self._title, queues, records))

    def post(self, path: str, body: bytes, *, origin: str | None, host: str | None) -> Page:
        if path not in _ACTIONS:
            return Page(404, "No such action.", content_type="text/plain; charset=utf-8")
        if origin is not None and origin != f"http://{host}":
            return Page(
                403,
                "Refused: this form was posted from another site.",
                content_type="text/plain; charset=utf-8",
            )
        form = {key: values[0] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}
        try:
            self._act(path, form)
        except (GoogleAPICallError, KeyError) as exc:
            reason = exc.message if isinstance(exc, GoogleAPICallError) else f"missing {exc}"
            return Page(400, f"Refused: {reason}", content_type="text/plain; charset=utf-8")
        return Page(303, headers={"Location": "/"})

    def _act(self, path: str, form: dict[str, str]) -> None:
        store = self._store
        if path == "/tasks/run":
            split_task_name(form["task"])
            store.run_task(form["task"])
            return
        queue = check_queue_name(form["queue"])
        if path == "/queues/purge":
            store.purge_queue(queue)
        else:
            store.set_paused(queue, paused=path == "/queues/pause")


def _render(title: str, queues: list[QueueView], records: list[DispatchRecord]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<p><a href='/'>Refresh</a></p>",
        "<h2>Queues</h2>",
    ]
    if not queues:
        parts.append("<p>No queues.</p>")
    for view in queues:
        parts.append(_queue(view))
    parts.append("<h2>Recent attempts</h2>")
    parts.append(_records(records))
    parts.append("</body></html>")
    return "".join(parts)


def _queue(view: QueueView) -> str:
    queue = view.queue
    name = queue.name
    state = tasks_v2.Queue.State(queue.state).name
    rates = queue.rate_limits
    retry = queue.retry_config
    config = (
        f"rate {rates.max_dispatches_per_second:g}/s, burst {rates.max_burst_size}, "
        f"concurrency {rates.max_concurrent_dispatches}; max attempts {retry.max_attempts}, "
        f"backoff {retry.min_backoff.total_seconds():g}-{retry.max_backoff.total_seconds():g} s, "
        f"doublings {retry.max_doublings}, "
        f"max retry duration {retry.max_retry_duration.total_seconds():g} s"
    )
    pause = "resume" if state == "PAUSED" else "pause"
    rows = "".join(_task_row(task, in_flight) for task, in_flight in view.tasks)
    more = ""
    if view.task_count > len(view.tasks):
        more = f"<p>… and {view.task_count - len(view.tasks)} more.</p>"
    return (
        f"<section class='queue' id='queue-{_e(short_id(name))}'>"
        f"<h3>{_e(short_id(name))} <span class='{state}'>{state}</span></h3>"
        f"<p><code>{_e(name)}</code><br>{_e(config)}</p>"
        f"<p>{view.task_count} tasks, {view.in_flight} in flight. "
        f"{_button('/queues/' + pause, 'queue', name, pause.capitalize())} "
        f"{_button('/queues/purge', 'queue', name, 'Purge')}</p>"
        + (
            "<table class='tasks'><tr><th>Task</th><th>Scheduled for</th><th>Attempts</th>"
            f"<th>Last response</th><th></th></tr>{rows}</table>{more}"
            if rows
            else "<p>No tasks waiting.</p>"
        )
        + "</section>"
    )


def _task_row(task: tasks_v2.Task, in_flight: bool) -> str:
    pb = tasks_v2.Task.pb(task)
    last = pb.last_attempt.response_status.message if pb.HasField("last_attempt") else ""
    action = "in flight" if in_flight else _button("/tasks/run", "task", task.name, "Run now")
    return (
        f"<tr><td>{_e(short_id(task.name))}</td>"
        f"<td>{_time(pb.schedule_time.seconds + pb.schedule_time.nanos / 1e9)}</td>"
        f"<td>{pb.dispatch_count}</td><td>{_e(last)}</td><td>{action}</td></tr>"
    )


def _records(records: list[DispatchRecord]) -> str:
    if not records:
        return "<p>No attempts yet.</p>"
    rows = []
    for record in records:
        status = "no response" if record.status < 0 else str(record.status)
        outcome = "success" if 200 <= record.status < 300 else "failure"
        headers = "".join(
            f"{_e(key)}: {_e(_shorten(key, value))}<br>" for key, value in record.headers.items()
        )
        rows.append(
            f"<tr><td>{_time(record.started_at)}</td><td>{_e(record.queue)}</td>"
            f"<td>{_e(record.task)}</td><td>{record.attempt}</td>"
            f"<td class='{outcome}'>{outcome}</td><td class='status'>{status}</td>"
            f"<td>{record.duration * 1000:.0f} ms</td>"
            f"<td>{_e(record.url)}</td>"
            f"<td><details><summary>headers</summary><code>{headers}</code></details></td></tr>"
        )
    return (
        "<table class='attempts'><tr><th>Started</th><th>Queue</th><th>Task</th><th>Retry</th>"
        "<th>Outcome</th><th>HTTP status</th><th>Duration</th><th>URL</th><th>Headers sent</th>"
        "</tr>" + "".join(rows) + "</table>"
    )


def _button(action: str, field: str, value: str, label: str) -> str:
    return (
        f"<form method='post' action='{action}'>"
        f"<input type='hidden' name='{field}' value='{_e(value)}'>"
        f"<button type='submit'>{label}</button></form>"
    )


def _shorten(key: str, value: str) -> str:
    # A bearer token is long and says nothing at a glance.
    if key.lower() == "authorization" and len(value) > 40:
        return value[:30] + "…"
    return value


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
