"""Every complete example in the README and docs/ runs, on asyncio and on trio.

A complete example is a ```python block that runs itself with ``anyio.run(main)``. In docs/,
every ```python block must be one: a fragment that cannot run is shown as ```text or ```pycon.
The README's tour is run the same way (its fragments, if any, are not checked).
"""

from __future__ import annotations

import importlib
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


@pytest.mark.parametrize(
    "module",
    [
        "aiolocks",
        "aiolocks.debug",
        "aiolocks.telemetry",
        "aiolocks.postgres",
        "aiolocks.postgres.testing",
    ],
)
def test_the_api_reference_covers_every_public_name(module: str) -> None:
    public = importlib.import_module(module).__all__
    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    missing = [name for name in public if f"::: {module}.{name}\n" not in reference]
    assert not missing, missing


# Code panes of the docs site show about 88 columns; the generated benchmark report is exempt.
CODE_WIDTH = 88
FENCE = re.compile(r"^ *```")


def test_code_lines_fit_the_code_pane() -> None:
    too_wide = []
    for page in PAGES:
        if page.is_relative_to(DOCS / "benchmarks"):
            continue
        in_code = False
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if FENCE.match(line):
                in_code = not in_code
            elif in_code and len(line) > CODE_WIDTH:
                too_wide.append(f"{_name(page)}:{n}: {len(line)} columns")
    assert not too_wide, "\n".join(too_wide)


@pytest.mark.parametrize(
    "page",
    [
        "docs/index.md",
        "docs/lock.md",
        "docs/rwlock.md",
        "docs/condition.md",
        "docs/optimistic.md",
        "docs/collections.md",
        "examples/README.md",
    ],
)
def test_multi_worker_deployments_are_pointed_to_aiolocks_postgres(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    assert "--workers" in text
    assert "`aiolocks.postgres`" in text and "postgres.md)" in text


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
