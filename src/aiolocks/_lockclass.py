"""Lock classes (the Linux kernel lockdep's idea): locks that diagnostics treat as one.

The entries of a keyed table form one class: the lock-order checker learns "``accounts[*]``
before ``ledger``" from any key, and keeps it after the entries are dropped; metrics report the
entries under the table's name.  The table's pin dict, which every entry refers to already,
carries the class, so making an entry costs nothing more.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LockClass", "Pins", "class_of"]


class LockClass:
    """The entries of one keyed table."""

    __slots__ = ("__weakref__", "kind", "name")

    def __init__(self, kind: str, name: str | None) -> None:
        self.kind = kind  # the table's class name: "KeyedLock" or "KeyedRWLock"
        self.name = name  # the table's name=, if any

    def __repr__(self) -> str:
        named = f" {self.name!r}" if self.name else f" at {id(self):#x}"
        return f"the locks of {self.kind}{named}"


class Pins(dict[int, Any]):
    """A keyed table's pinned locks, by id (see ``_keyed.py``), and their lock class."""

    __slots__ = ("lock_class",)

    def __init__(self, lock_class: LockClass) -> None:
        super().__init__()
        self.lock_class = lock_class


def class_of(prim: object) -> LockClass | None:
    """The lock class of ``prim`` (a lock, or an RWLock) if a keyed table made it."""
    pins = getattr(getattr(prim, "_rv", prim), "_pins", None)
    return pins.lock_class if isinstance(pins, Pins) else None
