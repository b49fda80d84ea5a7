"""A Starlette shop API: a shared price cache under an RWLock, per-user carts under a KeyedRWLock.

Run it with ``python examples/starlette_cache.py`` (serves http://127.0.0.1:8000), then::

    curl 127.0.0.1:8000/prices
    curl -X POST 127.0.0.1:8000/prices/refresh
    curl -X POST 127.0.0.1:8000/carts/alice/items -d '{"sku": "apple", "qty": 2}'
    curl 127.0.0.1:8000/carts/alice

Both locks are plain module-level globals, created before any event loop runs.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aiolocks

BASE_PRICES: dict[str, int] = {"apple": 120, "banana": 45, "cherry": 700, "durian": 1500}
UPSTREAM_DELAY = 0.002  # seconds per upstream call: the awaits a torn read would slip into

# The price cache: many concurrent readers, an occasional slow refresh that rewrites it in place.
cache_lock = aiolocks.RWLock(name="price-cache")
catalog: dict[str, Any] = {"version": 0, "prices": dict(BASE_PRICES)}

# Per-user carts: one RWLock per user id, made on first use, dropped when no request needs it.
cart_locks = aiolocks.KeyedRWLock()
carts: dict[str, dict[str, int]] = {}


async def fetch_upstream_price(sku: str, version: int) -> int:
    """Stand-in for a slow pricing service: prices drift by one cent per catalogue version."""
    await anyio.sleep(UPSTREAM_DELAY)
    return BASE_PRICES[sku] + version


async def save_cart_line(user_id: str, sku: str, qty: int) -> None:
    """Stand-in for a database write."""
    await anyio.sleep(UPSTREAM_DELAY)


async def list_prices(request: Request) -> JSONResponse:
    async with cache_lock.reader:
        snapshot = {"version": catalog["version"], "prices": dict(catalog["prices"])}
    return JSONResponse(snapshot)


async def refresh_prices(request: Request) -> JSONResponse:
    # Readers never see a half-refreshed catalogue: the writer holds the lock across every await.
    async with cache_lock.writer:
        catalog["version"] += 1
        version = catalog["version"]
        for sku in BASE_PRICES:
            catalog["prices"][sku] = await fetch_upstream_price(sku, version)
    return JSONResponse({"version": version})


async def add_to_cart(request: Request) -> JSONResponse:
    user_id: str = request.path_params["user_id"]
    try:
        body = await request.json()
        sku, qty = body["sku"], body.get("qty", 1)
    except (ValueError, TypeError, KeyError, AttributeError):
        return JSONResponse({"error": 'expected {"sku": ..., "qty": ...}'}, status_code=400)
    if not isinstance(sku, str) or sku not in BASE_PRICES:
        return JSONResponse({"error": f"unknown sku {sku!r}"}, status_code=404)
    if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= 100:
        return JSONResponse({"error": "qty must be an integer from 1 to 100"}, status_code=422)
    # Read-modify-write with an await in the middle: without the per-user lock, two concurrent
    # requests for the same user would both read the old quantity and one update would be lost.
    # Requests for different users do not wait for each other.
    async with cart_locks[user_id].writer:
        cart = carts.setdefault(user_id, {})
        new_qty = cart.get(sku, 0) + qty
        await save_cart_line(user_id, sku, new_qty)
        cart[sku] = new_qty
        items = dict(cart)
    return JSONResponse({"user": user_id, "items": items})


async def show_cart(request: Request) -> JSONResponse:
    user_id: str = request.path_params["user_id"]
    # Lock order everywhere: the user's cart first, then the price cache.
    async with cart_locks[user_id].reader, cache_lock.reader:
        items = dict(carts.get(user_id, {}))
        prices = catalog["prices"]
        total = sum(prices[sku] * qty for sku, qty in items.items())
        version = catalog["version"]
    return JSONResponse({"user": user_id, "items": items, "total": total, "version": version})


app = Starlette(
    routes=[
        Route("/prices", list_prices, methods=["GET"]),
        Route("/prices/refresh", refresh_prices, methods=["POST"]),
        Route("/carts/{user_id}", show_cart, methods=["GET"]),
        Route("/carts/{user_id}/items", add_to_cart, methods=["POST"]),
    ]
)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
