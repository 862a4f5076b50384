"""Every Python snippet in the README and docs/ is valid Python, as written.

The Quick start and the testing page are run end to end (``test_quick_start``); the other pages'
snippets are fragments of settings and code, so this checks that each at least compiles.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def snippets() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        blocks = re.findall(r"^( *)```python\n(.*?)^\1```", page.read_text(), flags=re.M | re.S)
        found += [
            (f"{page.relative_to(ROOT)}#{number}", textwrap.dedent(code))
            for number, (_, code) in enumerate(blocks, 1)
        ]
    return found


@pytest.mark.parametrize(("where", "code"), snippets(), ids=[w for w, _ in snippets()])
def test_a_python_snippet_compiles(where: str, code: str) -> None:
    compile(code, where, "exec")
