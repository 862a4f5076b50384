"""The emulator's dispatch figures: attempts a second end to end, attempts in flight against a
slow handler, and the emulator's CPU time per attempt.

The emulator runs standalone (``python -m django_tasks_cloud_tasks.emulator --quiet``) and the
target (``benchmarks/target.py``, asyncio, answering at once or after 500 ms) in processes of
their own. Each sample fills a paused queue whose burst admits every task at once, resumes it
and waits until the target has answered them all. The floor is the same target driven by the
same HTTP client the emulator uses (``emulator/sender.py``: keep-alive ``http.client``
connections, one ``Sender`` per thread, 32 threads as the emulator starts) with no emulator in
between: what dispatch could reach if scheduling, retries and bookkeeping cost nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import count as counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT, LOCATION = "bench-project", "us-central1"
SLOW_MS = 500
_queues = counter()


@contextmanager
def started(command: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    from benchmarks.run import wait_for_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(target: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{target}/stats", timeout=10) as answer:  # noqa: S310
        result: dict[str, int] = json.load(answer)
        return result


def dispatch_run(client: Any, emulator: subprocess.Popen[bytes], target: str, path: str,
                 tasks: int) -> tuple[float, float, int]:  # fmt: skip
    """(attempts a second, emulator CPU seconds per attempt, most attempts in flight)."""
    from google.cloud import tasks_v2

    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    queue = client.create_queue(
        parent=parent,
        queue={
            "name": f"{parent}/queues/bench-{next(_queues)}",
            "rate_limits": {"max_burst_size": tasks, "max_concurrent_dispatches": 1000},
        },
    )
    client.pause_queue(name=queue.name)
    task = tasks_v2.Task(http_request={"url": target + path, "body": b"{}"})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client.create_task(parent=queue.name, task=task), range(tasks)))
    urllib.request.urlopen(f"{target}/reset", timeout=10).close()  # noqa: S310
    cpu = cpu_seconds(emulator.pid)
    start = time.perf_counter()
    client.resume_queue(name=queue.name)
    while (seen := stats(target))["count"] < tasks:
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(emulator.pid) - cpu
    client.delete_queue(name=queue.name)
    return tasks / elapsed, cpu / tasks, seen["peak"]


def floor_run(target: str, path: str, tasks: int, threads: int = 32) -> tuple[float, float]:
    """(requests a second, this process's CPU seconds per request) without the emulator."""
    from django_tasks_cloud_tasks.emulator.sender import Sender

    left = iter(range(tasks))
    lock = threading.Lock()
    headers = {"User-Agent": "Google-Cloud-Tasks", "Content-Type": "application/json"}

    def work() -> None:
        sender = Sender()
        while True:
            with lock:
                if next(left, None) is None:
                    break
            sender.send("POST", target + path, headers, b"{}", 30)
        sender.close()

    cpu = time.process_time()
    start = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return tasks / (time.perf_counter() - start), (time.process_time() - cpu) / tasks


def dispatch_figures(repeat: int, quick: bool) -> list[Any]:
    from benchmarks.run import Figure, free_port, rotated
    from django_tasks_cloud_tasks import client as clients

    fast_tasks, slow_tasks = (600, 300) if quick else (3000, 600)
    port, token_port, target_port = free_port(), free_port(), free_port()
    emulator_command = [
        sys.executable, "-m", "django_tasks_cloud_tasks.emulator", "--quiet",
        "--port", str(port), "--token-port", str(token_port), "--queue-reuse-wait", "0",
        "--project", PROJECT, "--location", LOCATION,
    ]  # fmt: skip
    target = f"http://127.0.0.1:{target_port}"
    with (
        started([sys.executable, str(ROOT / "benchmarks" / "target.py"), str(target_port)],
                target_port),
        started(emulator_command, port) as emulator,
    ):  # fmt: skip
        client = clients.sync_client(f"127.0.0.1:{port}")
        fast, fast_floor = rotated(
            repeat,
            lambda: dispatch_run(client, emulator, target, "/ok", fast_tasks),
            lambda: floor_run(target, "/ok", fast_tasks),
        )
        slow = [
            dispatch_run(client, emulator, target, f"/sleep/{SLOW_MS}", slow_tasks)
            for _ in range(max(repeat // 2, 1))
        ]
    return [
        Figure(
            "dispatch, trivial target",
            statistics.median(rate for rate, _, _ in fast),
            statistics.median(rate for rate, _ in fast_floor),
            "/s",
            ">= 1,500/s",
        ),
        Figure(
            "emulator CPU per dispatch",
            statistics.median(cpu for _, cpu, _ in fast) * 1e6,
            statistics.median(cpu for _, cpu in fast_floor) * 1e6,
            "us",
            "",
        ),
        Figure(
            f"attempts in flight, {SLOW_MS} ms handler",
            statistics.median(peak for _, _, peak in slow),
            float(slow_tasks),
            "",
            ">= 200",
        ),
        Figure(
            f"dispatch, {SLOW_MS} ms handler",
            statistics.median(rate for rate, _, _ in slow),
            min(slow_tasks, 1000) / (SLOW_MS / 1000),
            "/s",
            "",
        ),
    ]
