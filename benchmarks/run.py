"""Benchmark: the backend and the execute view against the floors they cannot beat.

    .venv/bin/python benchmarks/run.py            # about four minutes
    .venv/bin/python benchmarks/run.py --quick    # fewer repetitions, for a smoke test

A full run appends its figures, with the date, machine and versions, to ``benchmarks/history.json``
(``--history`` elsewhere): the run-by-run record, which the performance page does not keep.

Each figure is the median of several repetitions, and each is compared with its floor, measured in
alternation with it, in the same run on the same machine: the raw, reused ``CloudTasksClient``
calling the same emulator with the same requests (named, as the backend names tasks by default); a
bare Django JSON view behind the same server and middleware; a process that builds a raw client
instead of the backend. The emulator and the web server run in processes of
their own, so the client side is measured alone. Queues are paused: the emulator does not dispatch.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT, LOCATION, QUEUE = "bench-project", "us-central1", "default"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}/queues/{QUEUE}"
SERVICE_ACCOUNT = "invoker@bench-project.iam.gserviceaccount.com"
ARGS = ([1, 2, 3], {"user_id": 123, "message": "hello"})
HISTORY = ROOT / "benchmarks" / "history.json"


@dataclass
class Figure:
    name: str
    ours: float
    floor: float
    unit: str
    target: str

    @property
    def ratio(self) -> float:
        return self.ours / self.floor

    def line(self) -> str:
        target = f"  (target {self.target})" if self.target else "  (no target: a breakdown)"
        return (
            f"{self.name:<44} {self.ours:>10,.1f} {self.floor:>10,.1f} {self.unit:<8} "
            f"{self.ratio:>6.2f}x{target}"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "benchmarks.settings"}
    env.update(extra)
    return env


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


@contextmanager
def process(command: list[str], port: int, env: dict[str, str]) -> Iterator[None]:
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def rotated[Sample](repeat: int, *measures: Callable[[], Sample]) -> list[list[Sample]]:
    """Samples of every measure, each repetition taking all of them, forwards and backwards in
    turn, so that drift and whatever the previous measurement left behind affect them alike.
    """
    samples: list[list[Sample]] = [[] for _ in measures]
    for repetition in range(repeat):
        order = range(len(measures))
        for index in reversed(order) if repetition % 2 else order:
            samples[index].append(measures[index]())
    return samples


def alternated[Sample](
    repeat: int, ours: Callable[[], Sample], floor: Callable[[], Sample]
) -> tuple[list[Sample], list[Sample]]:
    """Samples of ``ours`` and ``floor`` taken in alternation, each going first every other time."""
    ours_samples, floor_samples = rotated(repeat, ours, floor)
    return ours_samples, floor_samples


def paired(
    repeat: int, ours: Callable[[], float], floor: Callable[[], float]
) -> tuple[float, float]:
    """Medians of ``ours`` and ``floor``, measured in alternation."""
    ours_samples, floor_samples = alternated(repeat, ours, floor)
    return statistics.median(ours_samples), statistics.median(floor_samples)


# --- enqueue ---------------------------------------------------------------------------------


def raw_request(handler_host: str) -> dict[str, Any]:
    """What the backend sends (the same body), built once: the floor does no work of its own."""
    body = task_body(str(uuid.uuid4()))
    return {
        "parent": PARENT,
        "task": {
            "http_request": {
                "url": f"{handler_host}/cloudtasks/execute/",
                "headers": {"Content-Type": "application/json"},
                "body": body,
            }
        },
    }


def named_requests(count: int) -> list[dict[str, Any]]:
    """``count`` raw requests, each with a task name of its own as the backend sends by default
    (NAMED_TASKS): the floor does the same work on the server, and builds them before timing."""
    requests = []
    for _ in range(count):
        request = raw_request("http://127.0.0.1:9")
        request["task"]["name"] = f"{PARENT}/tasks/{uuid.uuid4()}"
        requests.append(request)
    return requests


def rate(count: int, run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def enqueue_figures(repeat: int, count: int, emulator_host: str) -> list[Figure]:
    from google.cloud import tasks_v2

    from benchmarks.least_backend import LeastBackend
    from benchmarks.tasks import noop
    from django_tasks_cloud_tasks import client

    raw = client.sync_client(emulator_host)
    request = raw_request("http://127.0.0.1:9")
    args, kwargs = ARGS

    def ours_sequential() -> float:
        return rate(count, lambda: [noop.enqueue(*args, **kwargs) for _ in range(count)])

    def raw_sequential() -> float:
        requests = named_requests(count)
        return rate(count, lambda: [raw.create_task(request=r) for r in requests])

    def threaded(call: Callable[[Any], Any], items: list[Any]) -> float:
        def run() -> None:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(call, items))

        return rate(count, run)

    least = LeastBackend(raw, PARENT, "http://127.0.0.1:9/cloudtasks/execute/")

    def least_sequential() -> float:
        return rate(count, lambda: [least.enqueue(noop, args, kwargs) for _ in range(count)])

    noop.enqueue(*args, **kwargs)  # Warm every path before timing.
    least.enqueue(noop, args, kwargs)
    raw.create_task(request=request)
    ours_samples, least_samples, raw_samples = rotated(
        repeat, ours_sequential, least_sequential, raw_sequential
    )
    floor = statistics.median(raw_samples)
    figures = [
        Figure("enqueue, sequential", statistics.median(ours_samples), floor, "ops/s", ">= 0.9x"),
        Figure(
            "enqueue, the least a backend does",
            statistics.median(least_samples),
            floor,
            "ops/s",
            "",
        ),
        Figure(
            "enqueue, 8 threads",
            *paired(
                repeat,
                lambda: threaded(lambda _: noop.enqueue(*args, **kwargs), [None] * count),
                lambda: threaded(lambda r: raw.create_task(request=r), named_requests(count)),
            ),
            "ops/s",
            ">= 0.9x",
        ),
    ]

    async def gathered(make: Callable[[], Any]) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(make() for _ in range(count)))
        return count / (time.perf_counter() - started)

    async def async_figures() -> tuple[float, float]:
        raw_async = client.async_client(emulator_host)
        await noop.aenqueue(*args, **kwargs)
        await raw_async.create_task(request=tasks_v2.CreateTaskRequest(request))
        ours, floor = [], []
        for _ in range(repeat):  # In alternation, as paired() does.
            ours.append(await gathered(lambda: noop.aenqueue(*args, **kwargs)))
            requests = iter(named_requests(count))
            floor.append(await gathered(lambda r=requests: raw_async.create_task(request=next(r))))
        return statistics.median(ours), statistics.median(floor)

    ours_async, raw_async = asyncio.run(async_figures())
    figures.append(Figure(f"aenqueue, {count} gathered", ours_async, raw_async, "ops/s", ">= 0.8x"))
    return figures


# --- tracing ---------------------------------------------------------------------------------


def tracing_figures(repeat: int, count: int, emulator_host: str) -> list[Figure]:
    """Enqueue and the execute view with ``opentelemetry-api`` but no SDK against the same without
    the API; and with an SDK whose exporter drops the spans against no SDK: the difference is
    the cost of tracing per task. Each mode runs in a process of its own (benchmarks/tracing.py),
    the three in rotation."""
    env = environment(CLOUD_TASKS_EMULATOR_HOST=emulator_host)

    def measure(mode: str) -> dict[str, float]:
        output = subprocess.run(
            [sys.executable, "-m", "benchmarks.tracing", mode, str(count)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(json.loads(output.stdout.strip().splitlines()[-1]))

    absent, api, sdk = rotated(repeat, *(partial(measure, mode) for mode in TRACING_MODES))

    def median(samples: list[dict[str, float]], key: str) -> float:
        return statistics.median(sample[key] for sample in samples)

    return [
        Figure(
            f"{what}, otel API without SDK", median(api, key), median(absent, key), "µs", "<= 1.02x"
        )
        for what, key in (("enqueue", "enqueue"), ("execute", "execute"))
    ] + [
        # No target: ours minus the floor is what making the spans costs per task.
        Figure(f"{what}, otel SDK, spans dropped", median(sdk, key), median(api, key), "µs", "")
        for what, key in (("enqueue", "enqueue"), ("execute", "execute"))
    ]


TRACING_MODES = ("absent", "api", "sdk")


# --- execute view ----------------------------------------------------------------------------


def task_body(task_id: str) -> bytes:
    return json.dumps(
        {
            "task_id": task_id,
            "task_path": "benchmarks.tasks.noop",
            "args": ARGS[0],
            "kwargs": ARGS[1],
            "queue_name": QUEUE,
            "backend": "default",
            "priority": 0,
            "takes_context": False,
            "enqueued_at": "2026-01-01T00:00:00+00:00",
        }
    ).encode()


def post_rate(
    port: int,
    path: str,
    count: int,
    mint: Callable[[], str] | None = None,
    prepare: Callable[[list[str]], None] | None = None,
) -> float:
    """Requests/s from two keep-alive connections (the server has one worker process).

    Every request carries a new task id, as deliveries of distinct tasks do (the result store
    would otherwise answer all but the first as duplicates) and, with ``mint``, a new ID token, as
    the emulator attaches to each dispatch (so no verification can be skipped as already done).
    """
    headers = {"Content-Type": "application/json", "X-CloudTasks-TaskRetryCount": "0"}
    task_ids = [str(uuid.uuid4()) for _ in range(count)]
    if prepare:
        prepare(task_ids)
    requests = [
        (
            task_body(task_id),
            {**headers, **({"Authorization": f"Bearer {mint()}"} if mint else {})},
        )
        for task_id in task_ids
    ]

    def client(share: list[tuple[bytes, dict[str, str]]]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        for body, request_headers in share:
            connection.request("POST", path, body, request_headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}: {answer[:300]!r}")
        connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(client, requests[i::2]) for i in range(2)]:
            done.result()
    return count / (time.perf_counter() - started)


@dataclass
class ViewFigure:
    name: str
    path: str
    target: str


@dataclass
class ViewServer:
    """One server's settings and the views measured on it, each against the bare view."""

    env: dict[str, str]
    figures: list[ViewFigure]
    mint: Callable[[], str] | None = None
    prepare: Callable[[list[str]], None] | None = None


EXECUTE = "/cloudtasks/execute/"


def view_figures(repeat: int, count: int, emulator: Any, database: Path) -> list[Figure]:
    port = free_port()
    handler_host = f"http://127.0.0.1:{port}"

    def mint() -> str:
        return str(emulator.mint_token(email=SERVICE_ACCOUNT, audience=handler_host))

    oidc_env = {
        "BENCHMARK_OIDC_EMAIL": SERVICE_ACCOUNT,
        "CLOUD_TASKS_EMULATOR_HOST": emulator.address,
    }
    servers = [
        ViewServer(
            {},
            [
                ViewFigure("execute view (WSGI, gunicorn)", EXECUTE, ">= 0.8x"),
                # No target: the least any execute view must do (run the task as Django does,
                # answer), a bound as the OIDC one below is.
                ViewFigure("run, nothing else", "/run/", ""),
            ],
        ),
        ViewServer(
            oidc_env,
            [
                ViewFigure("execute view with OIDC", EXECUTE, ">= 0.75x"),
                # No targets: breakdowns of the figure above, measured in the same server. The
                # OIDC check alone (the bare view plus authenticate()), and the least any execute
                # view with OIDC must do (verify the token, run the task as Django does, answer):
                # a bound for every implementation, this one included.
                ViewFigure("OIDC check alone", "/authenticated/", ""),
                ViewFigure("OIDC verify and run, nothing else", "/verify-and-run/", ""),
            ],
            mint,
        ),
        ViewServer(
            {"BENCHMARK_STORE_RESULTS": "1"},
            [ViewFigure("execute view with result store", EXECUTE, ">= 0.5x")],
            prepare=enqueued_rows,
        ),
        # Every stored attempt holds a lease (a claim renewed while the task runs). With the
        # shortest renewal interval the renewer's UPDATE runs ten times a second beside the
        # requests: the most that leases can cost the view.
        ViewServer(
            {"BENCHMARK_STORE_RESULTS": "1", "BENCHMARK_LEASE_RENEWAL_INTERVAL": "0.1"},
            [ViewFigure("execute view, store, renewals every 0.1 s", EXECUTE, "")],
            prepare=enqueued_rows,
        ),
    ]
    figures = []
    for server in servers:
        env = environment(
            BENCHMARK_HANDLER_HOST=handler_host, BENCHMARK_DATABASE=str(database), **server.env
        )
        command = [
            sys.executable, "-m", "gunicorn", "benchmarks.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "gthread",
            "--threads", "2", "--keep-alive", "30", "--log-level", "warning",
        ]  # fmt: skip
        paths = ["/bare/", *(figure.path for figure in server.figures)]
        with process(command, port, env):
            for path in paths:
                post_rate(port, path, 200, server.mint, server.prepare)  # Warm up, fetch keys.
            floor, *samples = rotated(
                repeat,
                *(
                    partial(post_rate, port, path, count, server.mint, server.prepare)
                    for path in paths
                ),
            )
        figures += [
            Figure(
                figure.name,
                statistics.median(ours),
                statistics.median(floor),
                "req/s",
                figure.target,
            )
            for figure, ours in zip(server.figures, samples, strict=True)
        ]
    return figures


def enqueued_rows(task_ids: list[str]) -> None:
    """The READY rows that enqueueing with the store writes, so deliveries take the usual path."""
    from django.utils import timezone

    from django_tasks_cloud_tasks.models import TaskRecord

    now = timezone.now()
    TaskRecord.objects.bulk_create(
        TaskRecord(
            id=task_id, task_path="benchmarks.tasks.noop", queue_name=QUEUE, priority=0,
            backend="default", status="READY", args=ARGS[0], kwargs=ARGS[1], enqueued_at=now,
        )
        for task_id in task_ids
    )  # fmt: skip


def store_enqueue_figure(repeat: int, count: int) -> Figure:
    """Enqueue with the result store (one INSERT per task, SQLite) against enqueue without it."""
    from django.test.utils import override_settings

    from benchmarks.settings import TASKS
    from benchmarks.tasks import noop

    args, kwargs = ARGS
    stored = {"default": {**TASKS["default"], "OPTIONS": {**TASKS["default"]["OPTIONS"]}}}
    stored["default"]["OPTIONS"]["STORE_RESULTS"] = True

    def sequential() -> float:
        return rate(count, lambda: [noop.enqueue(*args, **kwargs) for _ in range(count)])

    def with_store() -> float:
        with override_settings(TASKS=stored):
            return sequential()

    with_store()  # Warm up: the first write opens the database.
    ours, floor = paired(repeat, with_store, sequential)
    return Figure("enqueue with result store, sequential", ours, floor, "ops/s", ">= 0.7x")


def delivery_figures(repeat: int, emulator_host: str) -> list[Figure]:
    """Bulk enqueue against sequential enqueue() (1,000 tasks each, both ours), and the cost of
    naming a task: CreateTask with and without a name, with the raw client."""
    from benchmarks.tasks import noop
    from django_tasks_cloud_tasks import Call, client, enqueue_many

    count = 1000
    raw = client.sync_client(emulator_host)
    args, kwargs = ARGS
    calls = [Call(*args, **kwargs) for _ in range(count)]

    def bulk() -> float:
        return rate(count, lambda: enqueue_many(noop, calls))

    def sequential() -> float:
        return rate(count, lambda: [noop.enqueue(*args, **kwargs) for _ in range(count)])

    def create(named: bool) -> float:
        # Requests built beforehand: only the calls are timed.
        request = raw_request("http://127.0.0.1:9")
        requests = named_requests(count) if named else [request] * count
        return rate(count, lambda: [raw.create_task(request=r) for r in requests])

    bulk()  # Warm up the batch path.
    bulk_rate, sequential_rate = paired(repeat, bulk, sequential)
    named_rate, unnamed_rate = paired(repeat, lambda: create(True), lambda: create(False))
    return [
        Figure(
            "bulk enqueue (enqueue_many), 1000 tasks",
            bulk_rate,
            sequential_rate,
            "ops/s",
            ">= 5x sequential enqueue()",
        ),
        Figure("CreateTask named vs unnamed (raw client)", named_rate, unnamed_rate, "ops/s", ""),
    ]


# --- cold start ------------------------------------------------------------------------------

COLD_OURS = """
import django; django.setup()
from benchmarks.tasks import noop
noop.enqueue(1)
"""
COLD_RAW = """
import django; django.setup()
import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
client = tasks_v2.CloudTasksClient(
    transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel("{host}"))
)
client.create_task(request={request!r})
"""
RSS = "\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


def cold_start_figures(repeat: int, emulator_host: str) -> list[Figure]:
    env = environment(CLOUD_TASKS_EMULATOR_HOST=emulator_host)
    raw = COLD_RAW.format(host=emulator_host, request=raw_request("http://127.0.0.1:9"))

    def run(code: str) -> tuple[float, float]:
        started = time.perf_counter()
        output = subprocess.run(
            [sys.executable, "-c", code + RSS], env=env, cwd=ROOT, check=True,
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        return (time.perf_counter() - started) * 1000, int(output.split()[-1]) / 1024

    ours, floor = alternated(repeat, lambda: run(COLD_OURS), lambda: run(raw))
    return [
        Figure(
            "cold start (setup + first enqueue)",
            statistics.median(t for t, _ in ours),
            statistics.median(t for t, _ in floor),
            "ms",
            "<= 1.0x",
        ),
        Figure(
            "peak memory of that process",
            statistics.median(m for _, m in ours),
            statistics.median(m for _, m in floor),
            "MiB",
            "~ 1.0x",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", type=Path, help="also write this run's figures to this file")
    parser.add_argument(
        "--history",
        type=Path,
        help=f"append this run to this file (default: {HISTORY.relative_to(ROOT)}, full runs only)",
    )
    options = parser.parse_args()
    repeat, count = (3, 300) if options.quick else (7, 1000)
    # The machine may be shared: the load before the run says how busy it was.
    load = [round(x, 2) for x in os.getloadavg()]

    sys.path.insert(0, str(ROOT))
    os.environ.update(environment())
    import django
    from django.core.management import call_command

    from benchmarks.dispatch import dispatch_figures
    from django_tasks_cloud_tasks import client
    from django_tasks_cloud_tasks.emulator import Emulator

    port = free_port()
    emulator_host = f"127.0.0.1:{port}"
    os.environ["CLOUD_TASKS_EMULATOR_HOST"] = emulator_host
    database = Path(tempfile.mkdtemp(prefix="dtct-benchmark-")) / "db.sqlite3"
    os.environ["BENCHMARK_DATABASE"] = str(database)
    django.setup()
    call_command("migrate", verbosity=0)
    command = [
        sys.executable, "-m", "django", "cloudtasks_emulator", "--port", str(port),
        "--project", PROJECT, "--location", LOCATION, "--queue", QUEUE,
    ]  # fmt: skip
    figures: list[Figure] = []
    with process(command, port, environment()):
        client.sync_client(emulator_host).pause_queue(name=PARENT)
        figures += enqueue_figures(repeat, count, emulator_host)
        figures.append(store_enqueue_figure(repeat, count))
        figures += delivery_figures(repeat, emulator_host)
        figures += cold_start_figures(repeat, emulator_host)
        figures += tracing_figures(repeat, count // 3, emulator_host)
    figures += dispatch_figures(repeat, options.quick)
    # The view benchmark needs only the emulator's keys (for OIDC tokens): run it in-process.
    with Emulator(project=PROJECT, location=LOCATION, queues=()) as emulator:
        figures += view_figures(repeat, count, emulator, database)
    shutil.rmtree(database.parent)

    print(f"\n{'':<44} {'ours':>10} {'floor':>10}")
    for figure in figures:
        print(figure.line())
    results = [{**vars(f), "ratio": round(f.ratio, 3)} for f in figures]
    if options.json:
        options.json.write_text(json.dumps(results, indent=2) + "\n")
    history = options.history or (None if options.quick else HISTORY)
    if history:
        append_run(history, results, quick=options.quick, load=load)
        print(f"\nAppended to {history}")


def append_run(
    path: Path, results: list[dict[str, Any]], *, quick: bool, load: list[float]
) -> None:
    """Add this run to the history file: a JSON list of runs, oldest first."""
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append(
        {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": quick,
            "machine": {
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "load_average_before": load,
            },
            "versions": versions(),
            "figures": results,
        }
    )
    path.write_text(json.dumps(runs, indent=2) + "\n")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    packages = ("django", "google-cloud-tasks", "grpcio", "google-auth", "gunicorn")
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}


if __name__ == "__main__":
    main()
