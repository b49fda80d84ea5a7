"""The exceptions aiolocks raises besides anyio's own (``WouldBlock``, ``BrokenResourceError``)."""

from __future__ import annotations

__all__ = ["DeadlockError", "TaskKeyError"]


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
