"""``python -m aiolocks``, the README's first command: the whole pitch, fast, on both backends."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest


def _demo(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "AIOLOCKS_DEBUG"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "aiolocks", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, time.perf_counter() - start


@pytest.mark.parametrize(
    ("args", "backend"),
    [((), "asyncio"), (("trio",), "trio"), (("--backend", "trio"), "trio")],
)
def test_demo_shows_the_pitch_quickly(args: tuple[str, ...], backend: str) -> None:
    proc, elapsed = _demo(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert out.startswith(f"aiolocks demo on {backend}\n")
    # without aiolocks the scenarios hang (bounded by a timeout); with it they complete
    assert out.count("HANGS (cancelled after 0.3 s)") == 2
    assert "aiolocks.RWLock (re-entrant per task):    completes" in out
    assert "aiolocks.LockCollection(first, second):  completes" in out
    # the whole DeadlockError message, not a truncated one
    message = " ".join(line.strip() for line in out.split("DeadlockError: ", 1)[1].splitlines())
    assert "..." not in out
    assert "Release the read lock first, or take rw.upgradable and call upgrade()" in message
    assert "order: reader-1 reads -> reader-2 reads -> writer writes -> late-reader reads" in out
    assert "RWLock 'orders'" in out and "held    write      by task 'refresh'" in out
    assert out.count("waiting read       task 'request-") == 2
    assert out.rstrip().splitlines()[-1].startswith("All good.")
    assert all(len(line) <= 88 for line in out.splitlines())
    assert elapsed < 3, f"the demo took {elapsed:.1f} s"


def test_demo_refuses_two_different_backends() -> None:
    proc, _ = _demo("asyncio", "--backend", "trio")
    assert proc.returncode == 2
    assert "two backends given" in proc.stderr
