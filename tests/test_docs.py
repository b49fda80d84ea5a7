"""Every complete example in the README and docs/ runs, on asyncio and on trio.

A complete example is a ```python block that runs itself with ``anyio.run(main)``. In docs/,
every ```python block must be one: a fragment that cannot run is shown as ```text or ```pycon.
The README's tour is run the same way (its fragments, if any, are not checked).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_PAGES = sorted(DOCS.rglob("*.md"))
PAGES = [ROOT / "README.md", *DOC_PAGES]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


EXAMPLES = [
    pytest.param(code, id=f"{_name(page)}:{n}")
    for page in PAGES
    for n, code in enumerate(_blocks(page), 1)
    if "anyio.run(main" in code
]


def test_the_docs_have_runnable_examples() -> None:
    assert len(EXAMPLES) >= 5


def test_every_python_block_in_docs_is_a_complete_example() -> None:
    fragments = [
        f"{_name(page)}: python block {n} does not end with anyio.run(main)"
        for page in DOC_PAGES
        for n, code in enumerate(_blocks(page), 1)
        if code.rstrip().splitlines()[-1:] != ["anyio.run(main)"]
    ]
    assert not fragments, "\n".join(fragments)


def test_every_docs_page_is_in_the_nav() -> None:
    mkdocs_yml = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = mkdocs_yml[mkdocs_yml.index("\nnav:") :]
    missing = [
        page.relative_to(DOCS).as_posix()
        for page in DOC_PAGES
        if page.relative_to(DOCS).as_posix() not in nav
    ]
    assert not missing, missing


def test_the_api_reference_covers_every_public_name() -> None:
    import aiolocks

    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    missing = [name for name in aiolocks.__all__ if f"::: aiolocks.{name}\n" not in reference]
    assert not missing, missing


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
