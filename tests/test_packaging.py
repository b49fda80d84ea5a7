"""What users see before any lock is taken: optional extras and the declared Python versions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_postgres_without_psycopg_says_which_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # as if psycopg were not installed\n"
        "try:\n"
        "    import aiolocks.postgres\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "    print(type(exc.__cause__).__name__, exc.__cause__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    message, cause = proc.stdout.splitlines()
    assert "pip install 'aiolocks[postgres]'" in message
    assert message.startswith("aiolocks.postgres needs psycopg 3")
    assert cause.startswith("ModuleNotFoundError") and "psycopg" in cause


def test_python_versions_agree_across_metadata_ci_and_docs() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'requires-python = ">=3.10"' in pyproject
    assert 'target-version = "py310"' in pyproject
    classifiers = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    assert classifiers == ["3.10", "3.11", "3.12", "3.13", "3.14"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "for v in 3.10 3.12 3.13; do" in ci  # 3.11 is the main run; 3.14 is not installable
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "CPython 3.10, 3.11, 3.12 and 3.13" in readme
    assert "3.9" not in readme
