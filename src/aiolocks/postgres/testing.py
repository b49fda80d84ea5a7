"""Run a throwaway PostgreSQL server for tests and local development.

:class:`PostgresServer` creates a private cluster (``initdb``) in a temporary directory,
starts it on a free port of ``127.0.0.1`` and removes everything when stopped.  It needs the
PostgreSQL server binaries (``initdb``, ``pg_ctl``): on Debian/Ubuntu ``apt-get install
postgresql``, on macOS ``brew install postgresql``.  When run as root, the server runs as the
``postgres`` operating-system user (PostgreSQL refuses to run as root).

From the command line, ``python -m aiolocks.postgres.testing`` starts a server, prints its DSN
and keeps it running until Ctrl-C::

    $ python -m aiolocks.postgres.testing
    postgresql://postgres@127.0.0.1:41234/postgres

In a test suite::

    with PostgresServer.start() as server:
        async with PostgresLocks(server.dsn) as pg:
            ...

.. versionadded:: 0.1
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from types import TracebackType
from typing import final

__all__ = ["PostgresNotFoundError", "PostgresServer", "find_bindir"]

_INSTALL_HINT = (
    "install the PostgreSQL server (for example `apt-get install postgresql` or "
    "`brew install postgresql`), put its bin directory on PATH, or point the tests at an "
    "existing server with the environment variable AIOLOCKS_PG_DSN"
)


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``) were found.

    .. versionadded:: 0.1
    """


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); unknown layouts sort first
    part = os.path.basename(os.path.dirname(path))
    try:
        return tuple(int(p) for p in part.split("."))
    except ValueError:
        return (-1,)


def find_bindir() -> str:
    """Return the directory holding ``initdb`` and ``pg_ctl``.

    Looks on ``PATH`` first, then under ``/usr/lib/postgresql/*/bin`` (newest version first)
    and a few other usual places.

    Returns:
        The directory's path.

    Raises:
        PostgresNotFoundError: no directory holds both programs.

    .. versionadded:: 0.1
    """
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = os.path.dirname(os.path.realpath(initdb))
        if os.access(os.path.join(bindir, "pg_ctl"), os.X_OK):
            return bindir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), reverse=True)  # RHEL / PGDG
    candidates += ["/usr/local/pgsql/bin", "/opt/homebrew/bin", "/usr/local/bin"]
    for bindir in candidates:
        if os.access(os.path.join(bindir, "initdb"), os.X_OK) and os.access(
            os.path.join(bindir, "pg_ctl"), os.X_OK
        ):
            return bindir
    raise PostgresNotFoundError(
        f"no PostgreSQL server binaries (initdb, pg_ctl) found: {_INSTALL_HINT}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@final
class PostgresServer:
    """A private PostgreSQL server on ``127.0.0.1``, for tests and local development.

    Create it with :meth:`start`; use it as a context manager (or call :meth:`stop`) to stop it
    and delete its directory.  Not meant for production data: the cluster uses ``trust``
    authentication on the loopback interface.

    Attributes:
        dsn: a ``postgresql://`` URL for the ``postgres`` user and database.
        port: the TCP port on ``127.0.0.1``.
        directory: the directory holding the cluster (``data/``), its socket (``sock/``) and
            log (``server.log``).
        bindir: the directory of the PostgreSQL programs used.

    .. versionadded:: 0.1
    """

    __slots__ = ("_owned", "_settings", "bindir", "directory", "dsn", "port")

    def __init__(
        self, directory: str, port: int, bindir: str, settings: dict[str, str], owned: bool
    ) -> None:
        self.directory: str = directory  #: the server's data directory
        self.port: int = port  #: its TCP port on 127.0.0.1
        self.bindir: str = bindir  #: where its pg_ctl and initdb are
        self.dsn: str = f"postgresql://postgres@127.0.0.1:{port}/postgres"  #: how to connect
        self._settings = settings
        self._owned = owned

    @classmethod
    def start(
        cls,
        directory: str | None = None,
        port: int | None = None,
        *,
        fast: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> PostgresServer:
        """Create (if needed) and start a server; return once it accepts connections.

        Args:
            directory: where to keep the cluster; a new temporary directory (deleted by
                :meth:`stop`) if None.  An existing cluster in ``directory/data`` is reused.
            port: the TCP port; a free one if None.
            fast: turn off durability (``fsync``, ``synchronous_commit``,
                ``full_page_writes``) for speed.  For throwaway test servers only: a crash of
                the machine can corrupt such a cluster.
            settings: more server settings (``-c name=value``), e.g.
                ``{"deadlock_timeout": "100ms"}``.

        Returns:
            The running server.

        Raises:
            PostgresNotFoundError: no PostgreSQL binaries were found.
            RuntimeError: ``initdb`` or ``pg_ctl start`` failed (the message holds their
                output and the server log).
        """
        bindir = find_bindir()
        owned = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="aiolocks-pg-")
        directory = os.path.abspath(directory)
        all_settings = {
            "listen_addresses": "127.0.0.1",
            "max_connections": "300",
        }
        if fast:
            all_settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        all_settings.update(settings or {})
        server = cls(directory, port or _free_port(), bindir, all_settings, owned)
        try:
            server._init()
            server._start(retry_port=port is None)
        except BaseException:
            if owned:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        return server

    # -- running the programs -------------------------------------------------------------

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if _as_root():
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = dict(os.environ, LC_ALL="C", LANG="C")
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=self.directory, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"{self._log_tail()}"
            )
        return proc

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.directory, "server.log")) as f:
                return "\nserver log:\n" + "".join(f.readlines()[-20:])
        except OSError:
            return ""

    @property
    def _data(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def _sockdir(self) -> str:
        return os.path.join(self.directory, "sock")

    def _init(self) -> None:
        os.makedirs(self._sockdir, exist_ok=True)
        if _as_root():
            # PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
            import pwd

            pw = pwd.getpwnam("postgres")
            for path in (self.directory, self._sockdir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            os.chmod(self.directory, 0o700)
        if os.path.exists(os.path.join(self._data, "PG_VERSION")):
            return
        self._run(
            "initdb", "-A", "trust", "-U", "postgres", "--no-locale", "-E", "UTF8",
            "-D", self._data,
        )  # fmt: skip

    def _start(self, retry_port: bool = False) -> None:
        for attempt in range(5):
            options = [f"-p {self.port}", f"-k {self._sockdir}"]
            options += [f"-c {k}={v}" for k, v in self._settings.items()]
            proc = self._run(
                "pg_ctl", "start", "-w", "-t", "60", "-D", self._data,
                "-l", os.path.join(self.directory, "server.log"), "-o", " ".join(options),
                check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                return
            if retry_port and attempt < 4 and "could not" in self._log_tail():
                self.port = _free_port()  # someone took the port meanwhile
                self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
                continue
            raise RuntimeError(
                f"pg_ctl start failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"{self._log_tail()}"
            )

    # -- public controls --------------------------------------------------------------------

    def running(self) -> bool:
        """Return True if the server is running."""
        return self._postmaster_pid() is not None

    def restart(self) -> None:
        """Stop the server (fast shutdown: sessions are terminated) and start it again.

        Same port, same directory, same data.  Also starts a server that was killed.
        """
        if self.running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", self._data)
        self._start()

    def kill(self) -> None:
        """Kill the server and all its processes with SIGKILL (a crash).

        :meth:`restart` starts it again (with crash recovery).
        """
        pid = self._postmaster_pid()
        if pid is None:
            return
        children = _children(pid)
        for p in [pid, *children]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in [pid, *children]):
            time.sleep(0.01)
        # A killed postmaster may linger as a zombie where nobody reaps orphans (containers),
        # and then blocks the next start: its processes are gone, so its lock file can go too.
        stale = [os.path.join(self._data, "postmaster.pid")]
        stale += glob.glob(os.path.join(self._sockdir, ".s.PGSQL.*"))
        for path in stale:
            try:
                os.unlink(path)
            except OSError:
                pass

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory if :meth:`start` made it."""
        if os.path.exists(self._data) and self.running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", self._data, check=False)
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self._data, "postmaster.pid")) as f:
                pid = int(f.readline().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.dsn} in {self.directory}>"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> list[int]:
    found = []
    for entry in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.split("/")[2]))
    if not found and sys.platform != "linux":  # pragma: no cover - no /proc
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        found = [int(p) for p in out.stdout.split()]
    return found


def main() -> None:
    """Start a server, print its DSN, and stop it on Ctrl-C."""
    with PostgresServer.start() as server:
        print(server.dsn, flush=True)
        print(
            f"(data in {server.directory}; Ctrl-C stops it and deletes the data)", file=sys.stderr
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
