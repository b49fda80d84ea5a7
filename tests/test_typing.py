"""The public API as type checkers see it: tests/typing/user_code.py under mypy --strict and
pyright strict.  Each checker must pass it, which also proves every mistake marked there with
``# type: ignore`` is caught (both report an ignore that is not needed).

The checkers come with the ``lint`` extra; without them these tests skip, unless
``AIOLOCKS_REQUIRE_TYPECHECKERS`` is set (CI sets it), which turns a skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

USER_CODE = Path(__file__).parent / "typing" / "user_code.py"


def _checker(module: str) -> list[str]:
    found = shutil.which(module, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("AIOLOCKS_REQUIRE_TYPECHECKERS"):
            pytest.fail(f"{module} is not installed (pip install -e '.[lint]')")
        pytest.skip(f"{module} is not installed (pip install -e '.[lint]')")
    return [found]


def _run(command: list[str]) -> None:
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=USER_CODE.parent
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_user_code_passes_mypy_strict() -> None:
    _run([*_checker("mypy"), "--strict", "--cache-dir", os.devnull, str(USER_CODE)])


def test_user_code_passes_pyright_strict() -> None:
    _run([*_checker("pyright"), "--pythonpath", sys.executable, str(USER_CODE)])
