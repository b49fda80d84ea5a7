"""``pytest --aiolocks-debug``: run a test session in aiolocks' debug mode.

The ``pytest11`` entry point registers this module in every pytest session of every
environment where aiolocks is installed, also in projects that never use it.  So it lives
outside the ``aiolocks`` package (importing ``aiolocks.anything`` would import the whole
package first) and imports nothing of aiolocks until ``--aiolocks-debug`` or
``--aiolocks-debug-warn`` is given.  Then lock-order inversions fail the test that makes them
(:class:`aiolocks.LockOrderError`), or warn with ``--aiolocks-debug-warn``, and a wait that
would deadlock raises :class:`aiolocks.DeadlockError` instead of hanging the suite.

``AIOLOCKS_DEBUG`` is not read here: aiolocks reads it when it is imported, and warns about a
value it does not understand.
"""

from __future__ import annotations

from typing import Any

__all__ = ["pytest_addoption", "pytest_configure", "pytest_unconfigure"]


def pytest_addoption(parser: Any) -> None:
    """Add ``--aiolocks-debug`` and ``--aiolocks-debug-warn``."""
    group = parser.getgroup("aiolocks")
    group.addoption(
        "--aiolocks-debug",
        action="store_true",
        default=False,
        help="run the session in aiolocks debug mode: lock-order inversions raise "
        "LockOrderError, and a wait that would close a cycle raises DeadlockError",
    )
    group.addoption(
        "--aiolocks-debug-warn",
        action="store_true",
        default=False,
        help="as --aiolocks-debug, but lock-order inversions warn (LockOrderWarning)",
    )


def pytest_configure(config: Any) -> None:
    """Switch debug mode on for the session when asked."""
    mode = None
    if config.getoption("aiolocks_debug", False):
        mode = "raise"
    if config.getoption("aiolocks_debug_warn", False):
        mode = "warn"
    if mode:
        from aiolocks import debug

        debug.enable(on_inversion=mode)
        config._aiolocks_debug = True


def pytest_unconfigure(config: Any) -> None:
    """Switch it off again at the end of the session."""
    if getattr(config, "_aiolocks_debug", False):
        from aiolocks import debug

        debug.disable()
