"""``aiolocks.debug.dump_on_signal``: Go's SIGQUIT goroutine dump, for the locks of a process.

On the signal, every event loop of the process that uses aiolocks primitives prints
``aiolocks.debug.dump()`` of its own primitives, the wait-for cycles among them, and the await
stack of every task holding or waiting for one.

Why it is safe at any moment: a signal handler runs in the main thread between two bytecodes,
possibly in the middle of a lock operation, so the handler does not look at any lock.  It notes
which event loop the main thread is running (a thread-local read) and writes one byte to a
pipe.  A watcher thread wakes up on it and asks each event loop to print its dump *on that
loop* (``loop.call_soon_threadsafe``, ``TrioToken.run_sync_soon``), between two steps of its
tasks, where every lock is in a consistent state.  A loop that does not run the request within
a few seconds is blocked (a synchronous call that never returns, a busy loop): the watcher
then prints that loop thread's Python stack instead, which shows where.
"""

from __future__ import annotations

import asyncio
import linecache
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

from . import _introspect
from ._backend import LIVE, TRIO, task_name

__all__ = ["dump_on_signal"]

#: How long a loop has to run its dump before the watcher reports it blocked (seconds).
ANSWER_WITHIN = 3.0
#: At most this many frames of each task's await stack, innermost last.
STACK_FRAMES = 8

#: The default signal: SIGUSR1 (POSIX); Windows has none, so there SIGBREAK (Ctrl+Break).
SIGUSR1 = int(getattr(signal, "SIGUSR1", 0) or getattr(signal, "SIGBREAK", 21))

_lock = threading.Lock()  # guards the set-up below (never taken in the signal handler)
_files: dict[int, TextIO | None] = {}  # signal number -> where its dumps go (None: stderr)
_previous: dict[int, Any] = {}  # signal number -> the Python handler ours replaced
_trio_tokens: dict[int, Any] = {}  # thread id -> TrioToken of a trio run that asked for dumps
_pending: list[tuple[int, Any, Any]] = []  # (signum, main thread's asyncio loop, trio token)
_pipe: tuple[int, int] | None = None
_watcher: threading.Thread | None = None


def dump_on_signal(signum: int = SIGUSR1, *, file: TextIO | None = None) -> None:
    """Print the lock state of every event loop of the process when ``signum`` arrives.

    For each event loop (asyncio loops in any thread, uvloop included, and trio) whose tasks
    use aiolocks primitives, prints :func:`dump` of its primitives (holders, waiters, wait
    times, and any cycle of tasks waiting on each other), then the await stack of every task
    that holds or waits for one: ``kill -USR1 <pid>`` on a hung service shows who waits for
    whom, and where.  The dump runs on each loop, never inside the signal handler, so it is
    safe at any moment; a loop too blocked to run it gets its thread's stack printed instead.
    A Python handler that was installed for ``signum`` before is still called.

    The environment variable ``AIOLOCKS_DUMP_SIGNAL`` (``USR1``, ``SIGUSR2``, a number; read
    when aiolocks is imported) does the same with ``file=sys.stderr``.

    Under gunicorn, whose workers use SIGUSR1 to reopen their log files, choose another signal
    (``AIOLOCKS_DUMP_SIGNAL=USR2``) and send it to a worker's pid, never to the master (for
    which USR2 means "upgrade").  uvicorn handles INT and TERM only.  A trio run in a thread
    other than the main thread is dumped if it called ``dump_on_signal()`` itself.

    Args:
        signum: the signal (``signal.SIGUSR1`` by default).
        file: where to print (``sys.stderr``, looked up at each dump, by default).

    Raises:
        TypeError: ``signum`` is not a signal number (write ``signal.SIGUSR1``).
        ValueError: ``signum`` is not a signal that can be caught (SIGKILL, SIGSTOP, an
            unknown number), or this is not the main thread (Python delivers signals there:
            call it at start-up).

    Example::

        import signal
        import aiolocks.debug

        aiolocks.debug.dump_on_signal(signal.SIGUSR1)   # then: kill -USR1 <pid>

    .. versionadded:: 0.1
    """
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"signum must be a signal number (signal.SIGUSR1), not {signum!r}")
    uncatchable = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP") if hasattr(signal, n)}
    catchable = set(signal.valid_signals()) - uncatchable
    if signum not in catchable:
        raise ValueError(
            f"dump_on_signal: {signum!r} is not a signal that can be caught; use one a process "
            "is free to define, such as signal.SIGUSR1 or signal.SIGUSR2"
        )
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(
            "dump_on_signal() must be called from the main thread (Python runs signal handlers "
            "there): call it at start-up, or set AIOLOCKS_DUMP_SIGNAL=USR1"
        )
    token = _current_trio_token()
    with _lock:
        if token is not None:
            _trio_tokens[threading.get_ident()] = token
        _start_watcher()
        previous = signal.signal(signum, _on_signal)
        if previous is not _on_signal:
            _previous[signum] = previous
        _files[signum] = file


def _current_trio_token() -> Any:
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:  # not inside trio.run
        return None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Schedules, never walks lock state: the main thread may be in the middle of a lock
    # operation right now.  A list append and a write to a pipe are safe here.
    loop = asyncio._get_running_loop()
    _pending.append((signum, loop, _current_trio_token()))
    pipe = _pipe
    if pipe is not None:
        try:
            os.write(pipe[1], b"\0")
        except OSError:  # the pipe is full: a wake-up is pending already
            pass
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)


def _start_watcher() -> None:
    global _pipe, _watcher
    if _watcher is not None and _watcher.is_alive():
        return
    if _pipe is None:
        r, w = os.pipe()
        os.set_blocking(w, False)
        _pipe = (r, w)
    _watcher = threading.Thread(
        target=_watch, args=(_pipe[0],), name="aiolocks-dump-on-signal", daemon=True
    )
    _watcher.start()


def _after_fork_in_child() -> None:
    # A forked worker (gunicorn --preload) inherits the handler but not the watcher thread.
    global _pipe, _watcher, _lock
    _lock = threading.Lock()
    _pending.clear()
    _trio_tokens.clear()
    if _files:
        if _pipe is not None:
            for fd in _pipe:
                os.close(fd)
        _pipe, _watcher = None, None
        _start_watcher()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _watch(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 512):
                return
        except OSError:
            return
        while _pending:
            signum, main_loop, main_token = _pending.pop(0)
            try:
                _dump_everywhere(signum, main_loop, main_token)
            except Exception as exc:  # never let the watcher die: the next signal needs it
                _write(signum, f"aiolocks: the dump on signal failed: {exc!r}")


def _write(signum: int, text: str) -> None:
    file = _files.get(signum)
    out = sys.stderr if file is None else file
    try:
        out.write(text + "\n")  # one write: the loops' threads may print at the same time
        out.flush()
    except Exception:  # a closed stream: nowhere to report to
        pass


def _live() -> list[Any]:
    for _ in range(10):
        try:
            return list(LIVE)
        except RuntimeError:  # the set changed size while another thread used it: again
            time.sleep(0.001)
    return []


def _dump_everywhere(signum: int, main_loop: Any, main_token: Any) -> None:
    """In the watcher thread: ask every loop for its dump, and wait for each answer."""
    live = _live()
    shared = [prim for prim in live if not hasattr(prim, "_loop")]  # aiolocks.threadsafe
    live = [prim for prim in live if hasattr(prim, "_loop")]  # bound to one loop
    loops: list[Any] = [] if main_loop is None else [main_loop]
    for prim in live:
        loop = prim._loop
        if loop is not None and loop is not TRIO and all(loop is not x for x in loops):
            loops.append(loop)
    tokens = dict(_trio_tokens)
    if main_token is not None:
        tokens[threading.main_thread().ident or 0] = main_token
    try:
        name: object = signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        name = signum
    head = f"aiolocks: dump on {name} (pid {os.getpid()}): {len(loops) + len(tokens)} loop(s)"
    trio_threads = {prim._tid for prim in live if prim._loop is TRIO}
    unknown = sorted(trio_threads - set(tokens))
    if unknown:
        head += (
            f"; trio runs in thread(s) {unknown} use aiolocks but are not reachable: call "
            "dump_on_signal() inside them"
        )
    _write(signum, head)
    if shared:  # they guard their state with their own critical sections: read them from here
        _write(signum, _dump_shared(shared))
    asked = []
    for loop in loops:
        if not loop.is_closed():
            thread = getattr(loop, "_thread_id", None)
            asked.append(
                _ask(signum, f"asyncio event loop {loop!r}", thread, loop.call_soon_threadsafe)
            )
    for thread, token in tokens.items():
        asked.append(_ask(signum, f"trio run in thread {thread}", thread, token.run_sync_soon))
    deadline = time.monotonic() + ANSWER_WITHIN
    for done, what, thread in filter(None, asked):
        if not done.wait(max(0.0, deadline - time.monotonic())):
            _write(signum, _blocked(what, thread))


def _ask(
    signum: int, what: str, thread: int | None, schedule: Callable[..., Any]
) -> tuple[threading.Event, str, int | None] | None:
    """Schedule the dump on a loop; None if it cannot run any more (closed, finished)."""
    done = threading.Event()

    def on_the_loop() -> None:
        try:
            _write(signum, _dump_here(what))
        finally:
            done.set()

    try:
        schedule(on_the_loop)
    except Exception:
        return None
    return done, what, thread


def _blocked(what: str, thread: int | None) -> str:
    frame = sys._current_frames().get(thread) if thread is not None else None
    text = (
        f"=== {what}: did not run the dump within {ANSWER_WITHIN:.0f} s; it is blocked, or "
        "very busy"
    )
    if frame is None:
        return text
    stack = []
    f: FrameType | None = frame
    while f is not None:
        stack.append(f)
        f = f.f_back
    return text + ". Its thread is at (innermost last):\n" + _format(stack[::-1][-STACK_FRAMES:])


def _dump_shared(shared: list[Any]) -> str:
    """From the watcher thread: the primitives shared by threads and loops (no stacks: their
    tasks run on other threads' loops, which print them if they hold bound locks too)."""
    from . import debug

    lines = ["=== shared by threads and event loops (aiolocks.threadsafe)"]
    return "\n".join(lines + debug._dump_lines(shared))


def _dump_here(what: str) -> str:
    """On the loop itself: the dump of its primitives and the stacks of their tasks."""
    from . import debug

    here = threading.get_ident()
    mine = []
    for prim in _live():
        loop = getattr(prim, "_loop", None)  # None: a thread-safe one, in _dump_shared
        if loop is TRIO:
            if prim._tid == here:
                mine.append(prim)
        elif loop is not None and loop is asyncio._get_running_loop():
            mine.append(prim)
    lines = [f"=== {what}, thread {threading.current_thread().name!r}"]
    lines += debug._dump_lines(mine)
    tasks: dict[int, tuple[Any, list[str]]] = {}
    for prim in mine:
        label = debug._describe(prim)
        for task, mode in _introspect.holders(prim):
            tasks.setdefault(id(task), (task, []))[1].append(f"holds {label} ({mode})")
        for waiter, mode in _introspect.waiters(prim):
            tasks.setdefault(id(waiter.task), (waiter.task, []))[1].append(
                f"waits for {label} ({mode})"
            )
    if tasks:
        lines.append("await stacks of the tasks involved (innermost call last):")
    hidden = (*debug._machinery(), debug._PACKAGE)  # the event loops' frames and ours
    for task, roles in tasks.values():
        roles.sort(key=lambda role: not role.startswith("holds"))
        lines.append(f"  task {task_name(task)!r}: {', '.join(roles)}")
        frames = [f for f in _await_frames(task) if not f.f_code.co_filename.startswith(hidden)]
        lines.append(_format(frames[-STACK_FRAMES:], indent="    "))
    return "\n".join(lines)


def _await_frames(task: Any) -> list[FrameType]:
    """The frames a suspended task's await chain goes through, outermost first."""
    coro = task.get_coro() if hasattr(task, "get_coro") else getattr(task, "coro", None)
    frames = []
    while coro is not None:
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "gi_frame", None)
            or getattr(coro, "ag_frame", None)
        )
        if frame is None:  # finished, or an awaitable without frames (a future): the end
            break
        frames.append(frame)
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )
    return frames


def _format(frames: list[FrameType], indent: str = "    ") -> str:
    out = []
    for f in frames:
        code = f.f_code
        out.append(f'{indent}File "{code.co_filename}", line {f.f_lineno}, in {code.co_name}')
        source = linecache.getline(code.co_filename, f.f_lineno).strip()
        if source:
            out.append(f"{indent}  {source}")
    return "\n".join(out) if out else f"{indent}(no Python frames)"


def _from_environment(value: str) -> None:
    # Called once, when aiolocks is imported.  As AIOLOCKS_DEBUG: a value we do not understand
    # warns instead of raising, so that a typo in a diagnostics switch breaks no program.
    import warnings

    text = value.strip()
    if not text:
        return
    upper = text.upper()
    try:
        signum = (
            int(text)
            if text.isdigit()
            else signal.Signals[upper if upper.startswith("SIG") else "SIG" + upper]
        )
        dump_on_signal(signum)
    except (KeyError, ValueError, TypeError) as exc:
        reason = f"{text!r} is not a signal name" if isinstance(exc, KeyError) else str(exc)
        warnings.warn(
            f"AIOLOCKS_DUMP_SIGNAL={value!r} is not used, so no dump on a signal: {reason}. "
            "Write a signal name such as USR1 or SIGUSR2 (or its number), or leave it empty",
            RuntimeWarning,
            stacklevel=3,
        )
