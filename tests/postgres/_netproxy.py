"""A loopback TCP proxy whose "network" can be cut, for the network-fault tests.

``TcpProxy(port)`` listens on ``127.0.0.1`` (a free port, ``.port``) and forwards every
connection to ``127.0.0.1:port``, from a thread of its own (it serves any event loop).
``cut()`` stops all forwarding *without closing anything*: the proxy neither reads, writes nor
accepts, so bytes stay in the kernel's buffers and new connections sit in the listen backlog,
and both ends see a silent network, as when a cable is pulled or a firewall drops packets.
``restore()`` resumes: what was queued meanwhile is delivered, as TCP retransmission would.
``close()`` closes every socket (both ends then see the connection end).  ``drop_next(n)``
accepts the next ``n`` connections and closes them at once, unanswered, as a server does while
it shuts down or starts up: the client sees "server closed the connection unexpectedly".
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType
from typing import final

#: Bytes buffered per direction before the proxy stops reading that side.
_BUFFER = 1 << 16


@final
class _Pipe:
    """One forwarded connection: client <-> upstream, a buffer per direction."""

    __slots__ = ("bufs", "eof", "shut", "socks")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.socks = (client, upstream)
        self.bufs = (bytearray(), bytearray())  # bytes read from socks[i], for the other one
        self.eof = [False, False]  # socks[i] has sent its FIN
        self.shut = [False, False]  # socks[i] was sent the FIN of the other side

    def close(self) -> None:
        for s in self.socks:
            s.close()


@final
class TcpProxy:
    """Forwards ``127.0.0.1:<self.port>`` to ``target_host:target_port``; can cut the network."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._lock = threading.Lock()
        self._cut = False
        self._closing = False
        self._drop = 0  # connections still to close unanswered (drop_next)
        self._hold_fins = False  # keep clients' sockets open after the server closes (hold_fins)
        self._pipes: list[_Pipe] = []
        self._thread = threading.Thread(target=self._run, name="netproxy", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        """Connections being forwarded now."""
        with self._lock:
            return len(self._pipes)

    def cut(self) -> None:
        """Stop forwarding; every socket stays open (a silent network)."""
        self._set(cut=True)

    def restore(self) -> None:
        """Forward again, delivering what queued up during the cut."""
        self._set(cut=False)

    def drop_next(self, n: int) -> None:
        """Close the next ``n`` connections as soon as they are accepted, unanswered."""
        with self._lock:
            self._drop = n

    def hold_fins(self) -> None:
        """From now on, forward all the server sends but not its close: a client's socket stays
        open after the server closed its side (a close still in flight)."""
        with self._lock:
            self._hold_fins = True

    @property
    def fins_held(self) -> int:
        """Connections the server closed whose bytes all reached the client, close held back."""
        with self._lock:
            return sum(1 for p in self._pipes if p.eof[1] and not p.bufs[1] and not p.shut[0])

    def close(self) -> None:
        """Stop the proxy and close every socket."""
        self._set(closing=True)
        self._thread.join(5)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _set(self, *, cut: bool | None = None, closing: bool = False) -> None:
        with self._lock:
            if cut is not None:
                self._cut = cut
            self._closing = self._closing or closing
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the forwarding thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    cut, closing = self._cut, self._closing
                if closing:
                    return
                with selectors.DefaultSelector() as sel:
                    sel.register(self._wake_r, selectors.EVENT_READ)
                    if not cut:
                        sel.register(self._listener, selectors.EVENT_READ)
                        for pipe in self._pipes:
                            for i, s in enumerate(pipe.socks):
                                events = 0
                                if not pipe.eof[i] and len(pipe.bufs[i]) < _BUFFER:
                                    events |= selectors.EVENT_READ
                                if pipe.bufs[1 - i]:
                                    events |= selectors.EVENT_WRITE
                                if events:
                                    sel.register(s, events, pipe)
                    ready = sel.select()
                for key, events in ready:
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                    elif key.fileobj is self._listener:
                        self._accept()
                    else:
                        self._pump(key.data, key.fileobj, events)  # type: ignore[arg-type]
        finally:
            with self._lock:
                pipes, self._pipes = self._pipes, []
            for pipe in pipes:
                pipe.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        with self._lock:
            drop, self._drop = self._drop > 0, max(self._drop - 1, 0)
        if drop:
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pipes.append(_Pipe(client, upstream))

    def _pump(self, pipe: _Pipe, sock: socket.socket, events: int) -> None:
        if pipe not in self._pipes:
            return  # closed earlier in this round
        i = pipe.socks.index(sock)
        try:
            if events & selectors.EVENT_READ:
                data = sock.recv(_BUFFER)
                if data:
                    pipe.bufs[i].extend(data)
                else:
                    pipe.eof[i] = True
            if events & selectors.EVENT_WRITE:
                out = pipe.bufs[1 - i]
                del out[: sock.send(out)]
            for j in (0, 1):
                if j == 1 and self._hold_fins:
                    continue
                if pipe.eof[j] and not pipe.bufs[j] and not pipe.shut[1 - j]:
                    pipe.shut[1 - j] = True
                    pipe.socks[1 - j].shutdown(socket.SHUT_WR)
            if all(pipe.eof) and not any(pipe.bufs):
                raise ConnectionResetError
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset, or both sides done: end the connection on both sides
            with self._lock:
                self._pipes.remove(pipe)
            pipe.close()
