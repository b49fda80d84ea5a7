"""aiolocks.debug.dump_on_signal: a real uvicorn server that deadlocks, dumped on SIGUSR1.

The app (``tests/_deadlock_app.py``) runs in a subprocess under uvicorn on a loopback port with
``AIOLOCKS_DUMP_SIGNAL=USR1``; a real HTTP client deadlocks two of its handlers; the test then
sends the signal and reads the dump from the server's log, and checks that the server still
answers.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import aiolocks.debug

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 20.0


def _loops() -> list[str]:
    loops = ["asyncio"]
    if sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None:
        loops.append("uvloop")
    return loops


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(what: str, check: object, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {DEADLINE:.0f} s; server log:\n{_read(log)}")
        time.sleep(0.05)


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def get(self, path: str, timeout: float = 5.0) -> httpx.Response:
        # trust_env=False: no proxy from the environment between us and the loopback server
        return httpx.get(self.url + path, timeout=timeout, trust_env=False)


@pytest.fixture(params=_loops())
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="aiolocks-dump-") as directory:
        log = Path(directory) / "server.log"
        env = dict(os.environ, AIOLOCKS_DUMP_SIGNAL="USR1", PYTHONUNBUFFERED="1")
        env.pop("AIOLOCKS_DEBUG", None)  # the dump must work without debug mode
        cmd = [
            sys.executable, "-m", "uvicorn", "--app-dir", "tests", "_deadlock_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--loop", request.param,
            "--no-access-log", "--timeout-graceful-shutdown", "1",
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        srv = Server(proc, f"http://127.0.0.1:{port}", log)
        try:

            def serving() -> bool:
                assert proc.poll() is None, f"uvicorn exited:\n{_read(log)}"
                try:
                    return srv.get("/ping", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait_for("uvicorn serving", serving, log)
            yield srv
        finally:
            proc.kill()
            proc.wait(10)


def test_signal_dumps_the_deadlocked_handlers_and_the_server_keeps_serving(
    server: Server,
) -> None:
    hung: list[BaseException] = []

    def request(path: str) -> None:
        try:
            server.get(path, timeout=DEADLINE + 10)
        except httpx.HTTPError as exc:  # the server is killed at the end: expected
            hung.append(exc)

    clients = [threading.Thread(target=request, args=(p,)) for p in ("/transfer", "/audit")]
    for c in clients:
        c.start()
    _wait_for(
        "the two handlers deadlocked",
        lambda: server.get("/state").json() == {"accounts": 1, "ledger": 1},
        server.log,
    )

    os.kill(server.proc.pid, signal.SIGUSR1)
    _wait_for("the dump", lambda: "in audit" in _read(server.log), server.log)
    dump = _read(server.log)
    start = dump.index("aiolocks: dump on SIGUSR1")
    dump = dump[start:]
    print(dump)
    assert f"(pid {server.proc.pid})" in dump
    assert "aiolocks: 2 primitive(s) in use" in dump
    (cycle,) = [line for line in dump.splitlines() if line.startswith("DEADLOCK: ")]
    assert "waits for Lock 'accounts' (exclusive), held (exclusive) by task" in cycle
    assert "waits for Lock 'ledger' (exclusive), held (exclusive) by task" in cycle
    assert "Lock 'accounts'\n    held    exclusive  by task" in dump
    assert "Lock 'ledger'\n    held    exclusive  by task" in dump
    # each handler's await stack, down to the line where it waits
    app = str(REPO / "tests" / "_deadlock_app.py")
    assert f'File "{app}", line' in dump
    assert "in transfer\n      async with ledger:" in dump
    assert "in audit\n      async with accounts:" in dump
    assert "holds Lock 'accounts' (exclusive), waits for Lock 'ledger' (exclusive)" in dump
    assert "holds Lock 'ledger' (exclusive), waits for Lock 'accounts' (exclusive)" in dump

    # the server still serves, and a second signal dumps again
    assert server.get("/ping").text == "pong"
    os.kill(server.proc.pid, signal.SIGUSR1)
    _wait_for("a second dump", lambda: _read(server.log).count("DEADLOCK: ") == 2, server.log)
    assert server.get("/ping").text == "pong"
    assert server.proc.poll() is None
    server.proc.kill()
    for c in clients:
        c.join(DEADLINE)
    assert len(hung) == 2


# -- the function itself -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [signal.SIGKILL, signal.SIGSTOP, 0, 10_000])
def test_uncatchable_signals_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="not a signal that can be caught"):
        aiolocks.debug.dump_on_signal(bad)


def test_a_signal_number_is_required() -> None:
    with pytest.raises(TypeError, match=r"signal number \(signal.SIGUSR1\)"):
        aiolocks.debug.dump_on_signal("USR1")  # type: ignore[arg-type]


def test_only_the_main_thread_can_install_it() -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            aiolocks.debug.dump_on_signal(signal.SIGUSR2)
        except ValueError as exc:
            errors.append(exc)

    t = threading.Thread(target=install)
    t.start()
    t.join(5)
    assert len(errors) == 1
    assert "main thread" in str(errors[0])


@pytest.mark.parametrize(
    ("value", "installed"),
    [("USR1", True), ("SIGUSR2", True), ("usr1", True), (str(int(signal.SIGUSR1)), True),
     ("", False), ("NOPE", False), ("KILL", False)],
)  # fmt: skip
def test_environment_variable_installs_it_at_import(value: str, installed: bool) -> None:
    code = (
        "import signal, aiolocks._dump as d\n"
        "print(sorted(signal.Signals(s).name for s in d._files))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "AIOLOCKS_DUMP_SIGNAL": value},
        capture_output=True,
        text=True,
        check=True,
    )
    names = eval(proc.stdout)
    if installed:
        expected = "SIG" + value.upper().removeprefix("SIG") if not value.isdigit() else "SIGUSR1"
        assert names == [expected]
        assert proc.stderr == ""
    else:
        assert names == []
        if value:
            assert "AIOLOCKS_DUMP_SIGNAL=" in proc.stderr
            assert "USR1" in proc.stderr  # what to write instead


def test_every_loop_of_the_process_is_dumped_on_its_own_thread() -> None:
    """trio in the main thread, an asyncio (uvloop) loop in a thread, a blocked loop, and a
    thread-safe lock shared by plain threads."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_dump_loops_script.py")],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exited normally"
    out = proc.stderr
    print(out)
    assert "aiolocks: dump on SIGUSR2" in out
    assert "3 loop(s)" in out
    sections = out.split("=== ")[1:]
    trio_dump = next(s for s in sections if s.startswith("trio run"))
    assert "RWLock 'trio-rw'\n    held    read" in trio_dump
    assert "waiting write" in trio_dump
    assert "in reader\n      await trio.to_thread.run_sync(done.wait)" in trio_dump
    assert "in writer\n      async with rw.writer:" in trio_dump
    loop_dump = next(s for s in sections if "thread-lock" in s)
    assert "Lock 'thread-lock'\n    held    exclusive" in loop_dump
    assert "'MainThread'" not in loop_dump  # printed from the loop's own thread
    shared = next(s for s in sections if s.startswith("shared by threads"))
    assert "threadsafe.Lock 'shared-lock'\n    held    exclusive" in shared
    assert "waiting exclusive" in shared
    blocked = next(s for s in sections if "did not run the dump within" in s)
    assert "in main\n      done.wait()  # a synchronous wait" in blocked


FORKED = """
import asyncio, os, signal, sys
import aiolocks, aiolocks.debug

aiolocks.debug.dump_on_signal(signal.SIGUSR1)  # before the fork, as gunicorn --preload does
pid = os.fork()
if pid == 0:
    lock = aiolocks.Lock(name="in-the-worker")

    async def main():
        async def holder():
            async with lock:
                await asyncio.sleep(3)

        async def waiter():
            async with lock:
                pass

        tasks = [asyncio.create_task(holder()), asyncio.create_task(waiter())]
        await asyncio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    print("child", os.getpid(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_worker_dumps_on_the_signal() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    (child,) = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("child")]
    assert f"aiolocks: dump on SIGUSR1 (pid {child})" in proc.stderr
    assert "Lock 'in-the-worker'\n    held    exclusive" in proc.stderr
