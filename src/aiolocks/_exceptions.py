"""The exceptions aiolocks raises besides anyio's own (``WouldBlock``, ``BrokenResourceError``)."""

from __future__ import annotations

__all__ = ["DeadlockError", "LockLostError", "LockOrderError", "LockOrderWarning", "TaskKeyError"]


class DeadlockError(RuntimeError):
    """An acquisition that could never succeed, raised at once instead of hanging.

    Raised for a read-to-write upgrade of an :class:`~aiolocks.RWLock`, for a
    non-reentrant lock re-acquired by the task that holds it, and (in debug mode) for a
    wait that would close a cycle of tasks waiting on each other.

    .. versionadded:: 0.1
    """


class TaskKeyError(RuntimeError):
    """Misuse of a task key: the key is in use, or belongs to another task.

    .. versionadded:: 0.1
    """


class LockLostError(RuntimeError):
    """A hold that was lost while its task still believed it held the lock.

    Only locks that live outside the process can be lost: an :mod:`aiolocks.postgres` lock
    whose server session was terminated, or whose server restarted or became unreachable. The
    holder learns of it at the latest when it releases the lock or leaves ``async with``.

    .. versionadded:: 0.1
    """


class LockOrderError(RuntimeError):
    """Debug mode: an acquisition inverted a lock order that was seen before.

    Taking B while holding A records the order A->B; taking A while holding B later (in any
    task) could deadlock one day, even if it did not this time. The message names both locks,
    the site where the earlier order was made and the site of the inversion.
    See :func:`aiolocks.debug.enable`.

    .. versionadded:: 0.1
    """


class LockOrderWarning(RuntimeWarning):
    """Debug mode with ``on_inversion="warn"``: the warning form of :class:`LockOrderError`.

    .. versionadded:: 0.1
    """
