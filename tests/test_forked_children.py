"""A forked child (gunicorn --preload) makes its own connections, never sharing its parent's.

The fork happens in a fresh interpreter: forking the test process itself, with its live servers'
and emulator's threads, could deadlock the child on a lock one of them held.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import os
from django_tasks_cloud_tasks import client, transport

transport.http_request()
client.sync_client("127.0.0.1:9")
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    dropped = transport._request is None and not client._sync_clients
    os.write(write, b"1" if dropped else b"0")
    os._exit(0)
os.close(write)
answer = os.read(read, 1)
os.waitpid(pid, 0)
kept = transport._request is not None and bool(client._sync_clients)
print(answer.decode(), "1" if kept else "0")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_drops_every_inherited_connection_and_the_parent_keeps_its_own() -> None:
    output = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout  # fmt: skip

    child_dropped, parent_kept = output.split()
    assert child_dropped == "1"
    assert parent_kept == "1"
