"""Every complete example in the README and docs/ runs, on asyncio and on trio.

A complete example is a ```python block that runs itself with ``anyio.run(main)``; fragments
(blocks without it) are illustrations inside prose and are not run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [
    pytest.param(code, id=f"{page.name}:{n}")
    for page in PAGES
    for n, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S), 1)
    if "anyio.run(main" in code
]


def test_the_docs_have_runnable_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code: str, backend: str) -> None:
    code = re.sub(r"anyio\.run\(main\)", f"anyio.run(main, backend={backend!r})", code)
    code = code.replace(
        'anyio.run(main)  # or backend="trio"', f"anyio.run(main, backend={backend!r})"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
