"""Model-based test: aiolocks.threadsafe.RWLock against the fairness model of test_model.py.

The thread-safe RWLock promises the in-process lock's fairness rules (API.md), so the same
reference model, commands and driver (tests/test_model.py) check it: hypothesis draws a list of
commands, actor tasks apply them to a real lock, and after every command the scheduler settles
and holders, waiters, statistics, version and the invariants must agree with the model.

Every actor is a task of one event loop (asyncio, uvloop, trio).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings

from _actors import actors
from aiolocks.threadsafe import RWLock
from test_model import _BACKENDS, ACTORS, Driver, command_lists

# One example takes a few milliseconds on one loop: 500 per backend run in about a second.
EXAMPLES = 500

# Found by this test, each a hang or a reader admitted ahead of a pending upgrade() before the fix.
UPGRADE_BEHIND_A_WAITING_WRITER = [
    ("read", 0, False),
    ("read", 0, False),
    ("upgradable", 0, False),
    ("write", 0, False),
    ("release", 0, False),
    ("upgrade", 0, False),
    ("release", 0, False),
]
READER_AHEAD_OF_A_PENDING_UPGRADE = [
    ("read", 0, False),
    ("read", 1, False),
    ("upgradable", 2, False),
    ("release", 0, False),
    ("write", 0, False),
    ("read", 3, False),
    ("upgrade", 2, False),
]


async def _run_commands(commands: list[tuple[str, int, bool]]) -> None:
    rw = RWLock()
    async with actors(*(f"actor-{i}" for i in range(ACTORS)), timeout=10) as crew:
        driver = Driver(rw, crew)  # type: ignore[arg-type]
        for command in commands:
            await driver.apply(*command)
        await driver.wind_down()


@pytest.mark.parametrize("backend", _BACKENDS)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=command_lists)
@example(commands=UPGRADE_BEHIND_A_WAITING_WRITER)
@example(commands=READER_AHEAD_OF_A_PENDING_UPGRADE)
def test_threadsafe_rwlock_matches_the_fairness_model(
    backend: tuple[str, dict[str, Any]], commands: list[tuple[str, int, bool]]
) -> None:
    name, options = backend
    anyio.run(_run_commands, commands, backend=name, backend_options=options)
