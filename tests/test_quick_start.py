"""The README's Quick start, run as written in a new project: a user's first hour, end to end.

Its blocks are taken from the README, not copied here, so the README cannot drift from what works.
Shell lines run one by one, ``venv`` and ``pip install`` excepted: the commands run in this
environment, or in the one ``QUICK_START_VENV`` names (CI makes a fresh one with
``pip install . pytest pytest-django``, since the README's ``pip install`` would fetch the
published release). A Python block headed ``# PATH`` is that file, ``# PATH (at the end)`` is
appended to it, and ``# python manage.py shell`` is fed to that command. The one change: the
emulator and the server listen on free ports instead of 8123 and 8000 (``SERVICE_URL`` tells the
backend the server's), since other tests may run at the same time.

It takes a new project's worth of processes (about 10 s), so the everyday ``scripts/test`` skips it
and ``.ci/run`` runs it: ``QUICK_START_VENV=.venv scripts/test tests/test_quick_start.py`` runs it
here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not os.environ.get("QUICK_START_VENV"),
    reason="runs in CI; here with QUICK_START_VENV=.venv scripts/test tests/test_quick_start.py",
)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TESTING_PAGE = ROOT / "docs" / "testing.md"
LOCAL_DEVELOPMENT_PAGE = ROOT / "docs" / "local-development.md"
# Where the commands come from: a fresh virtual environment in CI.
BIN = (
    Path(os.environ.get("QUICK_START_VENV") or Path(sys.executable).parent.parent).resolve() / "bin"
)
PYTHON = str(BIN / "python")
TIMEOUT = 120


def quick_start_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block of the README's Quick start, in order."""
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    return fenced_blocks(section[: section.index("\n## ", 1)])


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    blocks = re.findall(r"^( *)```(\w+)\n(.*?)^\1```", text, flags=re.M | re.S)
    return [(lang, textwrap.dedent(code)) for _, lang, code in blocks]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited: {proc.communicate()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


class Project:
    """A new project directory, and the shell the Quick start's commands run in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.emulator_port = free_port()
        self.server_port = free_port()
        # A clean environment: none of this suite's settings or emulator.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DJANGO_SETTINGS_MODULE", "CLOUD_TASKS_EMULATOR_HOST", "PYTHONPATH"}
        }
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["SERVICE_URL"] = f"http://127.0.0.1:{self.server_port}"
        self.background: list[subprocess.Popen[str]] = []

    def sh(self, line: str) -> str:
        line = line.split("  #", 1)[0].strip()
        if not line or line.startswith(("python -m venv", "pip install")):
            return ""
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            self.env[name] = value.replace(":8123", f":{self.emulator_port}")
            return ""
        argv = shlex.split(line.removesuffix("&").strip())
        env = dict(self.env)
        while re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value command
            name, _, value = argv.pop(0).partition("=")
            env[name] = value
        if argv[0] == "python":
            argv[0] = PYTHON
        elif argv[0] in {"django-admin", "pytest"}:
            argv[0] = str(BIN / argv[0])
        if "cloudtasks_emulator" in argv:
            argv += ["--port", str(self.emulator_port)]
            wait_for_port(self.emulator_port, self.start(argv))
            return ""
        if "runserver" in argv:
            argv += [f"127.0.0.1:{self.server_port}", "--noreload"]
            wait_for_port(self.server_port, self.start(argv))
            return ""
        return self.run(argv, env=env)

    def start(self, argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv, cwd=self.root, env=self.env, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.background.append(proc)
        return proc

    def run(
        self, argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None
    ) -> str:
        done = subprocess.run(
            argv, cwd=self.root, env=env or self.env, input=stdin, text=True,
            capture_output=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def python_block(self, code: str) -> str:
        header, _, body = code.partition("\n")
        target = header.removeprefix("# ").strip()
        if target == "python manage.py shell":
            return self.run([PYTHON, "manage.py", "shell"], stdin=body)
        path, _, how = target.partition(" ")
        file = self.root / path
        if how == "(at the end)":
            file.write_text(file.read_text() + "\n" + body)
        else:
            file.write_text(body)
        return ""

    def close(self) -> None:
        for proc in self.background:
            proc.terminate()
        for proc in self.background:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    new = Project(tmp_path)
    yield new
    new.close()


def test_the_readme_quick_start_runs_as_written_on_the_emulator(project: Project) -> None:
    outputs = []
    for lang, code in quick_start_blocks():
        if lang == "sh":
            outputs += [project.sh(line) for line in code.splitlines()]
        else:
            outputs.append(project.python_block(code))

    # Local development's snippets that need the running project: curl, and the emulator class.
    page = fenced_blocks(LOCAL_DEVELOPMENT_PAGE.read_text())
    [curl] = [code for lang, code in page if lang == "sh" and code.startswith("curl")]
    command = curl.replace("127.0.0.1:8000", f"127.0.0.1:{project.server_port}")
    answer = project.run(["bash", "-c", command])
    # curl reports progress on stderr, after the answer.
    assert json.JSONDecoder().raw_decode(answer)[0] == json.loads(curl.rsplit("# ", 1)[1])
    [emulator_class] = [code for lang, code in page if "from django_tasks_cloud_tasks." in code]
    assert re.fullmatch(r"127\.0\.0\.1:\d+\n", project.run([PYTHON, "-c", emulator_class]))

    text = "\n".join(outputs)
    # The shell: the task ran on the live server and its stored result was read back.
    assert "READY\nSUCCESSFUL 123" in text
    # The test with the plugin: one test, run through the emulator and a live server.
    assert re.search(r"\b1 passed\b", text)
    assert "Traceback" not in text


def write_quick_start_files(project: Project) -> None:
    """The Quick start's project and files, without running anything."""
    for lang, code in quick_start_blocks():
        if lang == "sh":
            for line in code.splitlines():
                if "startproject" in line or "startapp" in line:
                    project.sh(line)
        elif not code.startswith("# python manage.py shell"):
            project.python_block(code)


def test_the_testing_page_examples_run_as_written(project: Project) -> None:
    # No CLOUD_TASKS_EMULATOR_HOST or SERVICE_URL for pytest: the backend cannot tell its project
    # when the tasks are imported, at collection, and the plugin must make up for it.
    del project.env["SERVICE_URL"]
    write_quick_start_files(project)
    blocks = fenced_blocks(TESTING_PAGE.read_text())
    for lang, code in blocks:
        if lang == "python":
            project.python_block(code)
    outputs = [
        project.sh(line) for lang, code in blocks if lang == "sh" for line in code.splitlines()
    ]

    text = "\n".join(outputs)
    # pytest shop/: the page's two tests and its TestCase; manage.py test: the TestCase. And no
    # error from a server thread after the tests (an emulator outliving the live server).
    assert re.search(r"\b3 passed\b", text), text
    assert re.search(r"Ran 1 test.*\n\nOK", text, flags=re.S)
    assert "Traceback" not in text
