"""Shared fixtures: every behavioural test runs on asyncio, asyncio+uvloop and trio."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest_plugins = ["pytester"]

_BACKENDS: list[Any] = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("trio", {}), id="trio"),
]
if sys.platform != "win32":
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is in the test extra
        pass
    else:
        _BACKENDS.insert(1, pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"))


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def debug_off() -> Iterator[None]:
    """Debug mode off for one test; the session's own mode (``--aiolocks-debug``) is restored."""
    from aiolocks import debug

    was_on = debug.enabled()
    debug.disable()
    try:
        yield
    finally:
        if was_on:
            debug.enable()


@pytest.fixture
def metrics() -> Iterator[Any]:
    """aiolocks instrumented for one test, into an in-memory reader (a ``_metrics.Metrics``)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from _metrics import Metrics
    from aiolocks.telemetry import AiolocksInstrumentor

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor = AiolocksInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        yield Metrics(reader)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
