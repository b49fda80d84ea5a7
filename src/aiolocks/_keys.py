"""``aiolocks.TaskKey``: one key per task, needed to lock a collection (happylock's ThreadKey)."""

from __future__ import annotations

from typing import Any, final
from weakref import WeakKeyDictionary, ref

from ._backend import current_task, task_name
from ._exceptions import TaskKeyError

__all__ = ["TaskKey"]

# One key per task, kept only as long as the task lives.
_KEYS: WeakKeyDictionary[Any, TaskKey] = WeakKeyDictionary()


@final
class TaskKey:
    """The current task's key: what a :class:`~aiolocks.LockCollection` needs to lock.

    A task has exactly one key.  While a guard opened with it is alive, the key is *in use*:
    any other locking with it raises :class:`~aiolocks.TaskKeyError` at once.  So a task can
    never hold some locks of a collection while it waits for others (no hold-and-wait), which
    removes one of the four conditions a deadlock needs; the collection's global order removes
    another.  The idea comes from the Rust crate happylock (``ThreadKey``).

    Get it with :meth:`TaskKey.get`; it cannot be made directly.

    Example::

        key = TaskKey.get()
        async with LockCollection(a.writer, b.writer).lock(key):
            ...

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_in_use", "_name", "_task")

    def __init__(self, task: Any) -> None:
        self._task = ref(task)
        self._name = task_name(task)
        self._in_use = False

    @classmethod
    def get(cls) -> TaskKey:
        """Return the current task's key (the same object every time within one task).

        Raises:
            RuntimeError: not called from an asyncio or trio task.
        """
        task = current_task()
        key = _KEYS.get(task)
        if key is None:
            key = _KEYS[task] = cls(task)
        return key

    @property
    def in_use(self) -> bool:
        """True while a guard opened with this key is alive."""
        return self._in_use

    def __repr__(self) -> str:
        state = "in use" if self._in_use else "free"
        return f"<aiolocks.TaskKey of task {self._name!r}, {state}>"

    def _claim(self) -> None:
        """Mark the key in use for a new guard (checks the task and nested use)."""
        task = current_task()
        if self._task() is not task:
            raise TaskKeyError(
                f"{self!r} belongs to another task; this task is {task_name(task)!r}: "
                "get this task's own key with TaskKey.get()"
            )
        if self._in_use:
            raise TaskKeyError(
                f"{self!r}: a guard opened with this key is still alive. Locking more while "
                "holding a collection is how lock-order deadlocks start: put every lock this "
                "task needs into one LockCollection, or release the guard first"
            )
        self._in_use = True

    def _check_owner(self, what: str) -> None:
        """Refuse (``RuntimeError``) unless the calling task is the key's: only the task that
        opened a guard may release it, as only a lock's holder may release the lock."""
        task = current_task()
        if self._task() is not task:
            raise RuntimeError(
                f"cannot {what} from task {task_name(task)!r}: only the task that took it "
                f"({self._name!r}) may release it (nothing was released)"
            )
