"""Soak and chaos: steady load through the emulator, with the server, the emulator and the
database each stopped and restarted mid-run; then what was lost, stuck or run twice.

    .venv/bin/python benchmarks/soak.py            # about five minutes
    .venv/bin/python benchmarks/soak.py --smoke    # under a minute, for CI

The setup is a production one in small: the package's emulator as a separate process, with its
state in a file (``--state-file``) and a queue retrying with a 2 s maximum backoff and 100 attempts;
gunicorn with 2 workers of 4 threads; ``STORE_RESULTS`` on a PostgreSQL server of the soak's own
(when PostgreSQL's server programs are installed; else on ``SOAK_POSTGRES_HOST``/``_PORT`` or
``TEST_POSTGRES_HOST``/``_PORT`` if set, and else on SQLite, without the database phase); the
default ``DISPATCH_DEADLINE`` (10 minutes) and ``LEASE`` (15 s). Enqueuers in this process add
tasks of 20 ms from 8 threads at a steady rate.

Phases, each a bounded time of steady load followed by a bounded drain:

- ``steady``: no fault, the baseline;
- ``server-kill``: gunicorn (its master and workers) is killed with SIGKILL at 40 % of the phase
  and started again 3 s later;
- ``emulator-restart``: the emulator is stopped (SIGTERM) and started again on its state file;
- ``database-restart``: the PostgreSQL server is restarted (``pg_ctl restart -m fast``).

The tasks note each start and end in a log of their own, so the counts do not rely on the result
store. Per phase: enqueued (and enqueues that failed), executed at least once, executed more than
once (finished twice), started more than once, of which while a killed worker ran them, stuck (not
finished at the end of the drain), lost (stuck, and no longer in the emulator), drain time after the
fault (from the fault's end until every task enqueued before it had finished), throughput, and
enqueue-to-start latency p50 and p99. The figures are printed and written to ``--json`` (default:
``soak.json`` in the run's directory) with the raw per-task data: for each task its phase, enqueue
time, and every start and end (time, process, attempt). Exits with status 1 if a task was lost or
stuck.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The benchmark project's (benchmarks/settings.py).
PROJECT, LOCATION, QUEUE = "bench-project", "us-central1", "default"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}/queues/{QUEUE}"
TASK_SECONDS = 0.02
# Where the fault strikes in a phase, and how long the server stays down after a kill.
FAULT_AT = 0.4
DOWN_SECONDS = 3.0


@dataclass
class Settings:
    rate: float  # Tasks enqueued per second, in all.
    threads: int
    phase_seconds: float
    drain_timeout: float
    lease: float | None
    phases: list[str]


FULL = Settings(
    rate=60,
    threads=8,
    phase_seconds=30,
    drain_timeout=120,
    lease=None,
    phases=["steady", "server-kill", "emulator-restart", "database-restart"],
)
# Short enough for CI: a shorter lease, so that the killed server's tasks are taken over soon.
SMOKE = Settings(
    rate=25,
    threads=4,
    phase_seconds=6,
    drain_timeout=30,
    lease=4,
    phases=["server-kill", "emulator-restart", "database-restart"],
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def wait_for_closed(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)


class Service:
    """A child process that the soak stops and starts again: its own process group, its log."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str], log: Path):
        self.name, self.command, self.port, self.env, self.log = name, command, port, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        wait_for_closed(self.port)


class Postgres:
    """A throwaway PostgreSQL server that the soak may restart (as scripts/with-postgres)."""

    def __init__(self, directory: Path) -> None:
        initdb = shutil.which("initdb") or max(
            (str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")), default=""
        )
        self.bin = Path(initdb).parent
        self.data = directory / "postgres"
        self.port = free_port()
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []

    @staticmethod
    def available() -> bool:
        return bool(
            shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        )

    def run(self, *args: str) -> None:
        # Output to a file, not a pipe: the server inherits it and would hold a pipe open.
        with (self.data.parent / "postgres.log").open("ab") as log:
            command = [*self.as_owner, str(self.bin / args[0]), *args[1:]]
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> None:
        self.data.mkdir()
        if self.as_owner:
            shutil.chown(self.data, "postgres")
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust")
        self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.data / "server.log"),
            "-w",
            "-o",
            self.options(),
            "start",
        )

    def options(self) -> str:
        return (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )

    def restart(self) -> None:
        self.run(
            "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-o", self.options(), "restart"
        )

    def stop(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")


@dataclass
class Task:
    id: str
    phase: str
    enqueued_at: float
    enqueue_error: str = ""
    starts: list[tuple[float, int, int]] = field(default_factory=list)  # (time, pid, attempt)
    ends: list[tuple[float, int, int]] = field(default_factory=list)


class ExecutionLog:
    """The tasks' own log of starts and ends, read as it grows."""

    def __init__(self, path: Path, tasks: dict[str, Task]) -> None:
        self.path, self.tasks, self.offset = path, tasks, 0
        self.unknown = 0
        path.touch()

    def read(self) -> None:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        complete = data.rpartition(b"\n")[0]
        if not complete:
            return
        self.offset += len(complete) + 1
        for line in complete.decode().splitlines():
            event, task_id, at, pid, attempt = line.split()
            task = self.tasks.get(task_id)
            if task is None:
                self.unknown += 1
                continue
            (task.starts if event == "start" else task.ends).append(
                (float(at), int(pid), int(attempt))
            )


class Enqueuers:
    """Threads that enqueue the soak task at a steady rate, all of them together ``rate`` per s."""

    def __init__(self, settings: Settings, tasks: dict[str, Task]) -> None:
        self.settings, self.tasks = settings, tasks
        self.lock = threading.Lock()

    def run(self, phase: str, seconds: float) -> None:
        stop_at = time.monotonic() + seconds
        interval = self.settings.threads / self.settings.rate

        def enqueue_for() -> None:
            from django.db import close_old_connections

            from benchmarks.tasks import soak

            next_at = time.monotonic()
            while next_at < stop_at:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
                enqueued_at = time.time()
                # What Django does around each request: a connection broken (by a database
                # restart) is replaced.
                close_old_connections()
                try:
                    result = soak.enqueue(TASK_SECONDS)
                except Exception as exc:  # counted, not lost: the enqueue said it failed
                    self.failed(phase, enqueued_at, exc)
                    continue
                with self.lock:
                    self.tasks[result.id] = Task(result.id, phase, enqueued_at)

        threads = [threading.Thread(target=enqueue_for) for _ in range(self.settings.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def failed(self, phase: str, enqueued_at: float, exc: Exception) -> None:
        if os.environ.get("SOAK_DEBUG"):
            print(f"enqueue failed: {exc!r}", file=sys.stderr)
        with self.lock:
            key = f"failed-{len(self.tasks)}"
            error = f"{type(exc).__name__}: {str(exc)[:80]}"
            self.tasks[key] = Task(key, phase, enqueued_at, enqueue_error=error)


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class Soak:
    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings, self.dir = settings, directory
        self.tasks: dict[str, Task] = {}
        self.log = ExecutionLog(directory / "executions.log", self.tasks)
        self.postgres: Postgres | None = None
        self.database = "sqlite"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "benchmarks.soak_settings",
            "SOAK_LOG": str(self.log.path),
            "BENCHMARK_DATABASE": str(directory / "db.sqlite3"),
        }
        if settings.lease:
            self.env["SOAK_LEASE"] = str(settings.lease)

    # --- setup ---------------------------------------------------------------------------------

    def choose_database(self, sqlite: bool) -> None:
        postgres_env = os.environ.get("SOAK_POSTGRES_HOST") or os.environ.get("TEST_POSTGRES_HOST")
        if not sqlite and Postgres.available():
            self.postgres = Postgres(self.dir)
            self.postgres.start()
            self.env.update(
                SOAK_POSTGRES_HOST="127.0.0.1", SOAK_POSTGRES_PORT=str(self.postgres.port)
            )
            self.database = "postgresql (restartable)"
        elif not sqlite and postgres_env:
            host = os.environ.get("SOAK_POSTGRES_HOST") or os.environ["TEST_POSTGRES_HOST"]
            port = os.environ.get("SOAK_POSTGRES_PORT") or os.environ.get(
                "TEST_POSTGRES_PORT", "5432"
            )
            self.env.update(SOAK_POSTGRES_HOST=host, SOAK_POSTGRES_PORT=port)
            self.database = "postgresql (not restarted: not the soak's own server)"
        if not self.postgres and "database-restart" in self.settings.phases:
            self.settings.phases.remove("database-restart")

    def start(self, *, sqlite: bool = False) -> None:
        self.choose_database(sqlite)
        emulator_port, server_port = free_port(), free_port()
        self.env["CLOUD_TASKS_EMULATOR_HOST"] = f"127.0.0.1:{emulator_port}"
        self.env["BENCHMARK_HANDLER_HOST"] = f"http://127.0.0.1:{server_port}"
        os.environ.update(self.env)
        self.emulator = Service(
            "emulator",
            [
                sys.executable, "-m", "django_tasks_cloud_tasks.emulator",
                "--port", str(emulator_port), "--project", PROJECT, "--location", LOCATION,
                "--state-file", str(self.dir / "emulator.sqlite3"), "--quiet",
            ],
            emulator_port,
            self.env,
            self.dir / "emulator.log",
        )  # fmt: skip
        self.server = Service(
            "gunicorn",
            [
                sys.executable, "-m", "gunicorn", "benchmarks.wsgi:application",
                "--bind", f"127.0.0.1:{server_port}", "--workers", "2",
                "--worker-class", "gthread", "--threads", "4", "--log-level", "warning",
            ],
            server_port,
            self.env,
            self.dir / "gunicorn.log",
        )  # fmt: skip
        sys.path.insert(0, str(ROOT))
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        self.emulator.start()
        self.create_queue()
        self.server.start()

    def create_queue(self) -> None:
        from google.cloud import tasks_v2
        from google.protobuf import duration_pb2

        from django_tasks_cloud_tasks import client

        tasks = client.sync_client(self.env["CLOUD_TASKS_EMULATOR_HOST"])
        queue = tasks_v2.Queue(
            name=PARENT,
            retry_config=tasks_v2.RetryConfig(
                max_attempts=100,
                min_backoff=duration_pb2.Duration(nanos=100_000_000),
                max_backoff=duration_pb2.Duration(seconds=2),
            ),
        )
        # The emulator creates the queue at start; kept in its state file across restarts.
        tasks.update_queue(queue=queue, update_mask={"paths": ["retry_config"]})

    def close(self) -> None:
        for service in (getattr(self, "server", None), getattr(self, "emulator", None)):
            if service is not None:
                service.stop(signal.SIGKILL)
        if self.postgres:
            self.postgres.stop()

    # --- phases --------------------------------------------------------------------------------

    def faults(self) -> dict[str, Callable[[], None]]:
        def server_kill() -> None:
            self.killed_pids = self.worker_pids()
            assert self.server.process is not None
            self.server.stop(signal.SIGKILL)
            time.sleep(DOWN_SECONDS)
            self.server.start()

        def emulator_restart() -> None:
            self.emulator.stop(signal.SIGTERM)
            self.emulator.start()

        def database_restart() -> None:
            assert self.postgres is not None
            self.postgres.restart()

        return {
            "server-kill": server_kill,
            "emulator-restart": emulator_restart,
            "database-restart": database_restart,
        }

    def worker_pids(self) -> set[int]:
        assert self.server.process is not None
        master = self.server.process.pid
        pids = {master}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                    pids.add(int(stat.parent.name))
        return pids

    def run_phase(self, phase: str) -> dict[str, Any]:
        print(f"== {phase}", flush=True)
        self.killed_pids: set[int] = set()
        fault = self.faults().get(phase)
        window: dict[str, float] = {}

        def strike() -> None:
            time.sleep(self.settings.phase_seconds * FAULT_AT)
            window["start"] = time.time()
            assert fault is not None
            fault()
            window["end"] = time.time()

        striker = threading.Thread(target=strike) if fault else None
        started = time.time()
        if striker:
            striker.start()
        Enqueuers(self.settings, self.tasks).run(phase, self.settings.phase_seconds)
        if striker:
            striker.join()
        enqueued_until = time.time()
        deadline = time.monotonic() + self.settings.drain_timeout
        mine = [t for t in self.tasks.values() if t.phase == phase and not t.enqueue_error]
        while time.monotonic() < deadline:
            self.log.read()
            if all(t.ends for t in mine):
                break
            time.sleep(0.2)
        time.sleep(1)  # Late duplicates, if any, land in this phase's figures.
        self.log.read()
        from django.db import close_old_connections

        close_old_connections()
        figures = self.figures(phase, started, enqueued_until, window)
        print(
            "   ",
            ", ".join(f"{k} {v}" for k, v in figures.items() if k not in ("phase", "stuck_ids")),
            flush=True,
        )
        return figures

    def figures(
        self, phase: str, started: float, enqueued_until: float, window: dict[str, float]
    ) -> dict[str, Any]:
        tasks = [t for t in self.tasks.values() if t.phase == phase]
        enqueued = [t for t in tasks if not t.enqueue_error]
        finished = [t for t in enqueued if t.ends]
        stuck = [t for t in enqueued if not t.ends]
        restarted = [t for t in enqueued if len(t.starts) > 1]
        at_kill = [t for t in restarted if self.ran_when_killed(t)]
        ends = [e[0] for t in finished for e in t.ends]
        latencies = [min(s[0] for s in t.starts) - t.enqueued_at for t in enqueued if t.starts]
        figures: dict[str, Any] = {
            "phase": phase,
            "enqueued": len(enqueued),
            "enqueue_failed": len(tasks) - len(enqueued),
            "enqueue_errors": sorted({t.enqueue_error for t in tasks if t.enqueue_error}),
            "executed_at_least_once": len(finished),
            "executed_more_than_once": sum(len(t.ends) > 1 for t in enqueued),
            "started_more_than_once": len(restarted),
            "started_again_after_the_kill": len(at_kill),
            "started_again_otherwise": len(restarted) - len(at_kill),
            "stuck": len(stuck),
            "lost": self.lost(stuck),
            "stuck_ids": [t.id for t in stuck][:50],
            "throughput_per_s": rounded(len(finished) / (max(ends) - started)) if ends else None,
            "latency_p50_s": rounded(percentile(latencies, 0.5)),
            "latency_p99_s": rounded(percentile(latencies, 0.99)),
            "last_finished_after_enqueue_stopped_s": rounded(max(ends) - enqueued_until)
            if ends
            else None,
        }
        if window:
            before = [t for t in enqueued if t.enqueued_at <= window["end"]]
            done = [min(e[0] for e in t.ends) for t in before if t.ends]
            figures["fault_seconds"] = rounded(window["end"] - window["start"])
            # The tasks a killed worker ran: when they started again, and on which attempt (the
            # deliveries in between were refused: the server down, then the lease still live).
            again = [sorted(t.starts)[1] for t in at_kill]
            figures["rerun_after_restart_s"] = rounded(
                max((start[0] - window["end"] for start in again), default=None)
            )
            figures["rerun_attempt_max"] = max((start[2] for start in again), default=None)
            # 0: every task enqueued before the fault's end had finished by then.
            figures["drain_after_fault_s"] = (
                rounded(max(0.0, max(done) - window["end"]))
                if done and len(done) == len(before)
                else None
            )
        return figures

    def ran_when_killed(self, task: Task) -> bool:
        """Whether a worker killed in this phase started the task and never finished it."""
        ended_by = {pid for _, pid, _ in task.ends}
        return any(pid in self.killed_pids and pid not in ended_by for _, pid, _ in task.starts)

    def lost(self, stuck: list[Task]) -> int:
        """Of the stuck tasks, those that Cloud Tasks (the emulator) no longer has."""
        from django.tasks import default_task_backend

        from django_tasks_cloud_tasks import client
        from django_tasks_cloud_tasks.models import TaskRecord

        config = default_task_backend.config  # type: ignore[attr-defined]
        names = dict(
            TaskRecord.objects.filter(pk__in=[t.id for t in stuck]).values_list(
                "pk", "cloud_task_name"
            )
        )
        lost = 0
        for task in stuck:
            name = names.get(task.id) or f"{PARENT}/tasks/{task.id}"
            try:
                lost += not client.task_exists(config, name)
            except Exception:  # the emulator cannot say: count it as lost, the worse case
                lost += 1
        return lost

    def store_summary(self) -> dict[str, int]:
        from django.db.models import Count

        from django_tasks_cloud_tasks.models import TaskRecord

        rows = TaskRecord.objects.values_list("status").annotate(n=Count("pk"))
        return {status: n for status, n in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a short run for CI (under a minute)")
    parser.add_argument(
        "--json", type=Path, help="write the report here (default: the run's directory)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's directory (logs, database)"
    )
    parser.add_argument(
        "--sqlite", action="store_true", help="SQLite, even if PostgreSQL is installed"
    )
    options = parser.parse_args()
    settings = SMOKE if options.smoke else FULL
    directory = Path(tempfile.mkdtemp(prefix="dtct-soak-"))
    # As root, PostgreSQL runs as its own user, which must reach its data directory in here.
    directory.chmod(0o755)
    soak = Soak(settings, directory)
    # Stopped from outside (a CI timeout): still stop the server, the emulator and the database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.time()
    try:
        soak.start(sqlite=options.sqlite)
        phases = [soak.run_phase(phase) for phase in settings.phases]
        store = soak.store_summary()
    finally:
        soak.close()
    report = {
        "mode": "smoke" if options.smoke else "full",
        "database": soak.database,
        "settings": {
            "rate_per_s": settings.rate,
            "enqueue_threads": settings.threads,
            "phase_seconds": settings.phase_seconds,
            "drain_timeout_s": settings.drain_timeout,
            "task_seconds": TASK_SECONDS,
            "lease_s": settings.lease or 15,
            "dispatch_deadline_s": 600,
            "server": "gunicorn, 2 workers x 4 threads (gthread)",
            "queue": "max_attempts 100, backoff 0.1 s to 2 s",
        },
        "seconds": round(time.time() - began, 1),
        "phases": phases,
        "totals": {
            key: sum(p[key] for p in phases)
            for key in (
                "enqueued", "executed_at_least_once", "executed_more_than_once", "stuck", "lost"
            )
        },
        "store": store,
        "unknown_log_lines": soak.log.unknown,
        "tasks": [
            {"id": t.id, "phase": t.phase, "enqueued_at": t.enqueued_at,
             "enqueue_error": t.enqueue_error, "starts": t.starts, "ends": t.ends}
            for t in soak.tasks.values()
        ],
    }  # fmt: skip
    path = options.json or directory / "soak.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print_report(report, path)
    if not options.keep and options.json:
        shutil.rmtree(directory, ignore_errors=True)
    totals = report["totals"]
    if totals["lost"] or totals["stuck"]:
        print(f"FAILED: {totals['lost']} lost, {totals['stuck']} stuck", file=sys.stderr)
        sys.exit(1)


def print_report(report: dict[str, Any], path: Path) -> None:
    columns = [
        ("phase", "phase", 17),
        ("enqueued", "enq", 6),
        ("executed_at_least_once", "ran", 6),
        ("executed_more_than_once", "twice", 6),
        ("started_again_after_the_kill", "again@kill", 10),
        ("started_again_otherwise", "again", 6),
        ("stuck", "stuck", 6),
        ("lost", "lost", 5),
        ("drain_after_fault_s", "drain s", 8),
        ("throughput_per_s", "tasks/s", 8),
        ("latency_p50_s", "p50 s", 7),
        ("latency_p99_s", "p99 s", 7),
    ]
    print(f"Soak ({report['mode']}, {report['database']}, {report['seconds']} s)")
    print(" ".join(f"{title:>{width}}" for _, title, width in columns))
    for phase in report["phases"]:
        print(" ".join(f"{phase.get(key, '-')!s:>{width}}" for key, _, width in columns))
    print(f"Totals: {report['totals']}; result store: {report['store']}")
    print(f"Report and raw per-task data: {path}")


if __name__ == "__main__":
    main()
