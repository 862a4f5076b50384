"""A forked child (gunicorn --preload) makes its own connections, never sharing its parent's."""

from __future__ import annotations

import os

import pytest

from django_tasks_cloud_tasks import client, transport


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_drops_every_inherited_connection() -> None:
    transport.http_request()
    client.sync_client("127.0.0.1:9")
    read, write = os.pipe()

    pid = os.fork()
    if pid == 0:  # The child reports what it inherited, and leaves without running pytest's exit.
        dropped = transport._request is None and not client._sync_clients
        os.write(write, b"1" if dropped else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)

    assert answer == b"1"
    assert transport._request is not None  # The parent keeps its own.
