"""Instrumented methods swapped into the lock classes, and the originals swapped back.

The diagnostics layers (debug mode, OpenTelemetry metrics) cost nothing while off because they
are not in the classes at all: switching one on wraps the methods its plan names and sets the
wrappers on the classes; switching it off puts back exactly what the classes held.  Several
layers compose: each rebuild wraps the original method in every active layer, the layer with
the lower ``order`` innermost, whatever order they were switched on in, so any of them can be
switched off at any time and the others stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._backend import READY

__all__ = ["Plan", "Wrap", "install", "release_on_exit", "uninstall"]

#: Makes the instrumented method from the method below it and the plan's ``mode`` string.
Wrap = Callable[[Callable[..., Any], str], Callable[..., Any]]
#: What a layer instruments: ``(class, method name, wrap, mode)`` entries.
Plan = list[tuple[type, str, Wrap, str]]

_MISSING = object()
_layers: dict[int, Plan] = {}  # order -> plan of the active layer
# (class, name) -> (what the class's own dict held before any layer, the method it resolved to)
_originals: dict[tuple[type, str], tuple[Any, Any]] = {}


def install(order: int, plan: Plan) -> None:
    """Switch on the layer ``order`` (its plan replaces any earlier one of the same order)."""
    _layers[order] = plan
    _rebuild()


def uninstall(order: int) -> None:
    """Switch off the layer ``order``; the classes hold what the other layers need."""
    if _layers.pop(order, None) is not None:
        _rebuild()


def _rebuild() -> None:
    wanted: dict[tuple[type, str], list[tuple[Wrap, str]]] = {}
    for order in sorted(_layers):
        for cls, name, wrap, mode in _layers[order]:
            wanted.setdefault((cls, name), []).append((wrap, mode))
    for key in wanted.keys() - _originals.keys():
        cls, name = key
        _originals[key] = (cls.__dict__.get(name, _MISSING), getattr(cls, name))
    for key in list(_originals):
        cls, name = key
        own, method = _originals[key]
        if key not in wanted:
            del _originals[key]
            if own is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
            continue
        for wrap, mode in wanted[key]:
            inner = method
            method = wrap(inner, mode)
            method.__name__ = name
            method.__qualname__ = f"{cls.__qualname__}.{name}"
            method.__doc__ = inner.__doc__
            method.__wrapped__ = inner  # type: ignore[attr-defined]
        setattr(cls, name, method)


def release_on_exit(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """``__aexit__`` through ``release()``: the originals' fast path would bypass the
    instrumented ``release()`` (for the in-process locks, whose ``__aexit__`` is synchronous)."""

    def __aexit__(self: Any, *exc_info: Any) -> Any:
        self.release()
        return READY

    return __aexit__
