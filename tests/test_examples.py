"""The examples run and stay correct under real concurrency.

``examples/starlette_cache.py`` is served by a real uvicorn server on a loopback port (in a
thread, with its own asyncio event loop) and hammered with concurrent httpx requests; a control
run of the same app with do-nothing lock stand-ins shows that the checks do catch torn reads and
lost updates. ``examples/trio_pipeline.py`` is run as a script and its summary checked.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from aiolocks._introspect import check_invariants

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
USERS = ("alice", "bob", "carol", "dave")
_module_ids = itertools.count()


def load_example(name: str) -> ModuleType:
    """A fresh copy of ``examples/<name>.py`` (its own globals: locks, cache, carts)."""
    spec = importlib.util.spec_from_file_location(
        f"_aiolocks_example_{name}_{next(_module_ids)}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- do-nothing stand-ins for the control runs ---------------------------------------------------


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class NoRWLock:
    reader = writer = _NoLock()


class NoKeyedRWLock:
    def __getitem__(self, key: object) -> NoRWLock:
        return NoRWLock()


# --- a real server on a loopback port ------------------------------------------------------------


def _server_loops() -> list[str]:
    loops = ["asyncio"]
    if sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None:
        loops.append("uvloop")
    return loops


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the httpx client; the server runs its own loop in its own thread


@pytest.fixture
def shop() -> ModuleType:
    return load_example("starlette_cache")


@pytest.fixture(params=_server_loops())
def shop_url(request: pytest.FixtureRequest, shop: ModuleType) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        shop.app,
        loop=request.param,
        lifespan="off",
        ws="none",
        log_config=None,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 5
        # uvicorn exposes no event for "listening"; poll its flag, with a deadline.
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during startup"
            assert time.monotonic() < deadline, "uvicorn did not start within 5 s"
            time.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not shut down within 5 s"


def _client(base_url: str) -> httpx.AsyncClient:
    # trust_env=False: no proxy from the environment may sit between us and the loopback server.
    return httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=10)


# --- the workload --------------------------------------------------------------------------------

N_READS, N_REFRESHES, ADDS_PER_USER = 60, 20, 30  # 60 + 20 + 4 * 30 = 200 requests


class Outcome:
    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.snapshots: list[dict[str, Any]] = []
        self.refresh_versions: list[int] = []
        self.expected: dict[str, dict[str, int]] = {user: {} for user in USERS}
        self.carts: dict[str, dict[str, Any]] = {}


def is_torn(snapshot: dict[str, Any], base_prices: dict[str, int]) -> bool:
    """Every price in one snapshot must come from the catalogue version the snapshot reports."""
    version = snapshot["version"]
    return any(price != base_prices[sku] + version for sku, price in snapshot["prices"].items())


async def run_workload(base_url: str, base_prices: dict[str, int], seed: int) -> Outcome:
    """200 concurrent requests: price reads, price refreshes and cart updates for four users."""
    rng = random.Random(seed)
    outcome = Outcome()
    skus = sorted(base_prices)
    requests: list[tuple[str, str, dict[str, Any] | None]] = []
    requests += [("GET", "/prices", None)] * N_READS
    requests += [("POST", "/prices/refresh", None)] * N_REFRESHES
    for user in USERS:
        for _ in range(ADDS_PER_USER):
            # two SKUs per user, so many requests hit the same (user, sku) line concurrently
            sku, qty = rng.choice(skus[:2]), rng.randint(1, 3)
            cart = outcome.expected[user]
            cart[sku] = cart.get(sku, 0) + qty
            requests.append(("POST", f"/carts/{user}/items", {"sku": sku, "qty": qty}))
    rng.shuffle(requests)

    async def send(client: httpx.AsyncClient, method: str, path: str, body: Any) -> None:
        response = await client.request(method, path, json=body)
        outcome.statuses.append(response.status_code)
        if path == "/prices":
            outcome.snapshots.append(response.json())
        elif path == "/prices/refresh":
            outcome.refresh_versions.append(response.json()["version"])

    with anyio.fail_after(10):
        async with _client(base_url) as client:
            async with anyio.create_task_group() as tg:
                for method, path, body in requests:
                    tg.start_soon(send, client, method, path, body)
            for user in USERS:  # after the storm: read each cart back
                response = await client.get(f"/carts/{user}")
                outcome.statuses.append(response.status_code)
                outcome.carts[user] = response.json()
            final = await client.get("/prices")
            outcome.statuses.append(final.status_code)
            outcome.snapshots.append(final.json())
    return outcome


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_starlette_cache_under_concurrent_requests_is_never_torn_and_loses_no_update(
    shop: ModuleType, shop_url: str
) -> None:
    outcome = await run_workload(shop_url, shop.BASE_PRICES, seed=1)

    assert outcome.statuses == [200] * (N_READS + N_REFRESHES + len(USERS) * ADDS_PER_USER + 5)
    torn = [s for s in outcome.snapshots if is_torn(s, shop.BASE_PRICES)]
    assert torn == [], f"{len(torn)} torn price snapshots, e.g. {torn[0]}"
    assert sorted(outcome.refresh_versions) == list(range(1, N_REFRESHES + 1))
    assert outcome.snapshots[-1]["version"] == N_REFRESHES
    for user in USERS:
        cart = outcome.carts[user]
        assert cart["items"] == outcome.expected[user], f"lost update in {user}'s cart"
        assert cart["version"] == N_REFRESHES
        assert cart["total"] == sum(
            (shop.BASE_PRICES[sku] + N_REFRESHES) * qty for sku, qty in cart["items"].items()
        )
    # the module-level locks are idle again and internally consistent
    stats = shop.cache_lock.statistics()
    assert stats.readers == stats.readers_waiting == stats.writers_waiting == 0
    assert stats.writer is None
    assert stats.version == 2 * N_REFRESHES
    gc.collect()  # an idle per-user lock is freed by the collector (lock and views form a cycle)
    assert len(shop.cart_locks) == 0, "the KeyedRWLock kept idle per-user locks alive"
    check_invariants(shop.cache_lock)


@pytest.mark.anyio
async def test_starlette_cache_without_locks_tears_reads_and_loses_updates(
    shop: ModuleType, shop_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: the same app and checks with do-nothing locks fail, so the test above can fail."""
    monkeypatch.setattr(shop, "cache_lock", NoRWLock())  # handlers look locks up at call time
    monkeypatch.setattr(shop, "cart_locks", NoKeyedRWLock())
    torn = lost = 0
    for attempt in range(3):  # bounded retries: interleaving is likely, not guaranteed
        shop.catalog.update(version=0, prices=dict(shop.BASE_PRICES))
        shop.carts.clear()
        outcome = await run_workload(shop_url, shop.BASE_PRICES, seed=attempt)
        assert set(outcome.statuses) == {200}
        torn += sum(is_torn(s, shop.BASE_PRICES) for s in outcome.snapshots)
        lost += sum(outcome.carts[u]["items"] != outcome.expected[u] for u in USERS)
        if torn and lost:
            break
    assert torn > 0, "no torn snapshot without the RWLock: the workload does not interleave"
    assert lost > 0, "no lost update without the KeyedRWLock: the workload does not interleave"


@pytest.mark.anyio
async def test_starlette_cache_rejects_bad_cart_requests_without_touching_the_cart(
    shop_url: str,
) -> None:
    with anyio.fail_after(5):
        async with _client(shop_url) as client:
            unknown = await client.post("/carts/alice/items", json={"sku": "kiwi", "qty": 1})
            bad_qty = await client.post("/carts/alice/items", json={"sku": "apple", "qty": 0})
            not_json = await client.post("/carts/alice/items", content=b"apple please")
            cart = await client.get("/carts/alice")
    assert unknown.status_code == 404
    assert bad_qty.status_code == 422
    assert not_json.status_code == 400
    assert cart.json() == {"user": "alice", "items": {}, "total": 0, "version": 0}


def test_trio_pipeline_script_processes_every_job_with_consistent_snapshots() -> None:
    pipeline = load_example("trio_pipeline")  # for its constants; main() only runs as a script
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "trio_pipeline.py")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    produced = pipeline.N_PRODUCERS * pipeline.JOBS_PER_PRODUCER
    assert f"jobs: produced {produced}, processed {produced}\n" in out
    total = pipeline.expected_total()
    assert f"table: total {total} (expected {total})\n" in out
    depth = re.search(r"buffer: max depth (\d+) \(capacity (\d+)\)", out)
    assert depth is not None
    assert 1 <= int(depth[1]) <= int(depth[2]) == pipeline.CAPACITY
    audits = re.search(r"audits: (\d+) consistent, (\d+) torn", out)
    dashboard = re.search(r"dashboard: (\d+) consistent, (\d+) torn", out)
    assert audits is not None
    assert dashboard is not None
    assert int(audits[1]) > 0, "the auditors never ran alongside the workers"
    assert int(dashboard[1]) > 0, "the dashboard never ran alongside the workers"
    assert (audits[2], dashboard[2]) == ("0", "0")
    assert out.rstrip().endswith("OK")
