"""Keeping the emulator's state in a SQLite file, so that a restart resumes where it stopped.

The store reports every change here as it happens (a queue or task saved or gone, a name
reserved, an attempt recorded), under its own lock, and the ``Journal`` writes them behind, in one
transaction every ``FLUSH_SECONDS``. Writing behind keeps SQLite off the dispatch path, and a task
created, dispatched and deleted between two flushes costs no write at all; the price is that a
crash (not a clean stop, which flushes) loses the last fraction of a second. The standard
library's ``sqlite3`` is enough: one writer, no server, one file to delete for a fresh start.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from .records import DispatchRecord

FLUSH_SECONDS = 0.1
# The most recent attempts kept, in the file as in memory.
RECORDS_KEPT = 10_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, queue BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    task BLOB NOT NULL,
    execution_count INTEGER NOT NULL,
    previous_response INTEGER,
    first_dispatch REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (
    kind TEXT NOT NULL, name TEXT NOT NULL, expiry REAL NOT NULL, PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL);
"""
TASK_NAMES = "task"
QUEUE_NAMES = "queue"


@dataclass(frozen=True, slots=True)
class TaskRow:
    queue: str
    task: bytes  # tasks_v2.Task, serialized
    execution_count: int
    previous_response: int | None
    first_dispatch: float


@dataclass(frozen=True, slots=True)
class Saved:
    """Everything a journal file held when it was opened."""

    queues: list[bytes]
    tasks: list[TaskRow]
    tombstones: list[tuple[str, str, float]]  # (kind, name, expiry)
    records: list[DispatchRecord]


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        self._flushed = threading.Lock()  # one flush at a time
        self._queues: dict[str, bytes | None] = {}
        self._tasks: dict[str, TaskRow | None] = {}
        self._tombstones: dict[tuple[str, str], float] = {}
        self._records: list[DispatchRecord] = []
        self._reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="cloud-tasks-emulator-journal", daemon=True
        )

    def load(self) -> Saved:
        db = self._db
        return Saved(
            queues=[row[0] for row in db.execute("SELECT queue FROM queues ORDER BY name")],
            tasks=[TaskRow(*row) for row in db.execute("SELECT queue, task, execution_count, "
                                                       "previous_response, first_dispatch "
                                                       "FROM tasks")],
            tombstones=list(db.execute("SELECT kind, name, expiry FROM tombstones")),
            records=[
                DispatchRecord(**json.loads(row[0]))
                for row in db.execute("SELECT record FROM records ORDER BY id")
            ],
        )  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Write what is pending and close the file."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()
        self._db.close()

    # Changes, reported by the store under its lock.

    def queue(self, name: str, queue: bytes | None) -> None:
        with self._lock:
            self._queues[name] = queue

    def task(self, name: str, row: TaskRow | None) -> None:
        with self._lock:
            self._tasks[name] = row

    def tombstone(self, kind: str, name: str, expiry: float) -> None:
        with self._lock:
            self._tombstones[kind, name] = expiry

    def record(self, record: DispatchRecord) -> None:
        with self._lock:
            self._records.append(record)

    def reset(self) -> None:
        """Forget every task, name reservation and record, pending or written; keep the queues."""
        with self._lock:
            self._tasks.clear()
            self._tombstones.clear()
            self._records.clear()
            self._reset = True

    def flush(self) -> None:
        with self._flushed:
            with self._lock:
                queues, self._queues = self._queues, {}
                tasks, self._tasks = self._tasks, {}
                tombstones, self._tombstones = self._tombstones, {}
                records, self._records = self._records, []
                reset, self._reset = self._reset, False
            if not (queues or tasks or tombstones or records or reset):
                return
            with closing(self._db.cursor()) as cursor:
                cursor.execute("BEGIN")
                if reset:
                    for table in ("tasks", "tombstones", "records"):
                        cursor.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed names)
                _write(cursor, "queues", "name, queue", _split(queues))
                _write(cursor, "tasks", "name, queue, task, execution_count, previous_response, "
                       "first_dispatch", _task_rows(tasks))  # fmt: skip
                cursor.executemany(
                    "INSERT OR REPLACE INTO tombstones (kind, name, expiry) VALUES (?, ?, ?)",
                    [(kind, name, expiry) for (kind, name), expiry in tombstones.items()],
                )
                cursor.executemany(
                    "INSERT INTO records (record) VALUES (?)",
                    [(json.dumps(asdict(record)),) for record in records],
                )
                cursor.execute(
                    "DELETE FROM records WHERE id <= (SELECT max(id) FROM records) - ?",
                    (RECORDS_KEPT,),
                )
                cursor.execute("DELETE FROM tombstones WHERE expiry <= ?", (time.time(),))
                cursor.execute("COMMIT")

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()


def _split(changes: dict[str, bytes | None]) -> Iterator[tuple[str, tuple[object, ...] | None]]:
    for name, value in changes.items():
        yield name, None if value is None else (value,)


def _task_rows(
    changes: dict[str, TaskRow | None],
) -> Iterator[tuple[str, tuple[object, ...] | None]]:
    for name, row in changes.items():
        if row is None:
            yield name, None
        else:
            yield (
                name,
                (
                    row.queue,
                    row.task,
                    row.execution_count,
                    row.previous_response,
                    row.first_dispatch,
                ),
            )


def _write(
    cursor: sqlite3.Cursor,
    table: str,
    columns: str,
    changes: Iterator[tuple[str, tuple[object, ...] | None]],
) -> None:
    """Replace or delete each named row of ``table``."""
    gone: list[tuple[str]] = []
    kept: list[tuple[object, ...]] = []
    for name, values in changes:
        if values is None:
            gone.append((name,))
        else:
            kept.append((name, *values))
    placeholders = ", ".join("?" * (1 + columns.count(",")))
    cursor.executemany(f"DELETE FROM {table} WHERE name = ?", gone)  # noqa: S608
    cursor.executemany(
        f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({placeholders})",  # noqa: S608
        kept,
    )
