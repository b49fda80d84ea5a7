"""aiolocks.debug: snapshot/dump (always), lock-order checking and wait-for cycles (debug mode)."""

from __future__ import annotations

import gc
import io
import os
import random
import subprocess
import sys
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aiolocks
from aiolocks import Condition, DeadlockError, Lock, LockOrderError, LockOrderWarning, RWLock
from aiolocks import debug as dbg
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio

HERE = os.path.basename(__file__)


@pytest.fixture
def debug_mode() -> Iterator[None]:
    """Debug mode for one test, with a fresh record; the session's own mode is restored."""
    was_on = dbg.enabled()
    dbg.disable()
    dbg.enable()
    try:
        yield
    finally:
        dbg.disable()
        if was_on:
            dbg.enable()


def info(name: str, kind: str | None = None) -> dbg.PrimitiveInfo:
    gc.collect()  # locks of earlier tests (and backends) may linger in reference cycles
    found = [p for p in dbg.snapshot() if p.name == name and kind in (None, p.kind)]
    assert len(found) == 1, found
    return found[0]


# -- snapshot and dump, debug mode off -----------------------------------------------------------


async def test_snapshot_lists_holders_and_waiters_in_order(debug_off: None) -> None:
    lock = Lock(name="orders")
    holding = anyio.Event()
    release = anyio.Event()

    async def holder() -> None:
        async with lock:
            holding.set()
            await release.wait()

    async def waiter() -> None:
        async with lock:
            pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder, name="holder")
            await holding.wait()
            tg.start_soon(waiter, name="w1")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter, name="w2")
            await anyio.wait_all_tasks_blocked()
            p = info("orders")
            assert p.kind == "Lock"
            assert [(h.task, h.mode) for h in p.holders] == [("holder", "exclusive")]
            waiters = [(w.task, w.mode) for w in p.waiters]
            assert waiters == [("w1", "exclusive"), ("w2", "exclusive")]
            assert p.holders[0].since is None and p.holders[0].site is None  # debug mode only
            assert p.waiters[0].site is None
            assert p.contention is None
            first = p.waiters[0].waited
            assert first >= p.waiters[1].waited >= 0
            await anyio.sleep(0.01)
            assert info("orders").waiters[0].waited > first  # always measured, grows
            release.set()
    p = info("orders")
    assert p.holders == () and p.waiters == ()


async def test_snapshot_shows_rwlock_modes(debug_off: None) -> None:
    rw = RWLock(name="prices")
    reading = anyio.Event()
    done = anyio.Event()

    async def reader() -> None:
        async with rw.reader:
            reading.set()
            await done.wait()

    async def upgradable() -> None:
        async with rw.upgradable:
            await done.wait()

    async def writer() -> None:
        async with rw.writer:
            pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, name="r")
            await reading.wait()
            tg.start_soon(upgradable, name="u")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(writer, name="w")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(reader, name="r2")  # held back by the queued writer
            await anyio.wait_all_tasks_blocked()
            p = info("prices")
            assert p.kind == "RWLock"
            assert sorted((h.task, h.mode) for h in p.holders) == [
                ("r", "read"),
                ("u", "upgradable"),
            ]
            assert [(w.task, w.mode) for w in p.waiters] == [("w", "write"), ("r2", "read")]
            done.set()


async def test_snapshot_lists_condition_sleepers(debug_off: None) -> None:
    cond = Condition(name="jobs")
    async with anyio.create_task_group() as tg:

        async def sleeper() -> None:
            async with cond:
                await cond.wait()

        tg.start_soon(sleeper, name="consumer")
        with anyio.fail_after(5):
            await anyio.wait_all_tasks_blocked()
        p = info("jobs", "Condition")  # its own lock is listed as "jobs" too, kind "Lock"
        assert [(w.task, w.mode) for w in p.waiters] == [("consumer", "exclusive")]
        async with cond:
            cond.notify()


async def test_snapshot_keeps_nothing_alive(debug_off: None) -> None:
    lock = Lock(name="short-lived")
    async with lock:
        pass
    assert any(p.name == "short-lived" for p in dbg.snapshot())
    ref = weakref.ref(lock)
    del lock
    gc.collect()
    assert ref() is None
    assert not any(p.name == "short-lived" for p in dbg.snapshot())


async def test_unnamed_primitives_are_named_by_kind_and_address(debug_off: None) -> None:
    lock = Lock()
    async with lock:
        assert f"Lock at {id(lock):#x}" in [p.name for p in dbg.snapshot()]


async def test_dump_prints_holders_waiters_and_an_existing_deadlock(debug_off: None) -> None:
    a, b = Lock(name="dump-a"), Lock(name="dump-b")
    both = anyio.Event()
    count = 0

    async def take(first: Lock, second: Lock) -> None:
        nonlocal count
        async with first:
            count += 1
            if count == 2:
                both.set()
            await both.wait()
            async with second:
                pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, a, b, name="t-ab")
            tg.start_soon(take, b, a, name="t-ba")
            await both.wait()
            await anyio.wait_all_tasks_blocked()  # deadlocked: debug mode is off
            out = io.StringIO()
            dbg.dump(out)
            text = out.getvalue()
            tg.cancel_scope.cancel()
    assert "debug mode off" in text
    assert "DEADLOCK: task 't-" in text
    for part in ("dump-a", "dump-b", "'t-ab'", "'t-ba'", "held    exclusive", "waiting exclusive"):
        assert part in text, (part, text)


# -- the switch ------------------------------------------------------------------------------------


def test_enable_rejects_a_bad_on_inversion(debug_off: None) -> None:
    with pytest.raises(ValueError, match="on_inversion"):
        dbg.enable(on_inversion="explode")
    assert not dbg.enabled()


def test_disable_puts_the_original_methods_back(debug_off: None) -> None:
    originals = {
        (cls, name): cls.__dict__.get(name)
        for cls in (Lock, aiolocks.ReadLock, aiolocks.WriteLock, aiolocks.UpgradableLock)
        for name in ("__aenter__", "__aexit__", "acquire_nowait", "release")
    }
    dbg.enable()
    assert Lock.__dict__["__aenter__"] is not originals[(Lock, "__aenter__")]
    dbg.disable()
    assert not dbg.enabled()
    for (cls, name), own in originals.items():
        assert cls.__dict__.get(name) is own


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("warn", True), ("0", False)])
def test_environment_variable_switches_debug_mode_at_import(value: str, expected: bool) -> None:
    code = (
        "import aiolocks; s = aiolocks.debug._state; "
        "print(aiolocks.debug.enabled(), s and s.on_inversion)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "AIOLOCKS_DEBUG": value},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == str(expected)
    if value == "warn":
        assert out[1] == "warn"


# -- lock-order checking ---------------------------------------------------------------------------


async def test_inversion_raises_naming_both_locks_and_sites(debug_mode: None) -> None:
    a, b = Lock(name="acct-a"), Lock(name="acct-b")

    async def forward() -> None:
        async with a, b:  # order a -> b
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(forward, name="forward")
    async with b:
        with pytest.raises(LockOrderError) as err:
            async with a:  # b -> a: inverted, even though nothing deadlocked
                pass
        assert not a.locked()  # nothing acquired
        assert b.locked()
    message = str(err.value)
    assert "'acct-a'" in message and "'acct-b'" in message
    assert "task 'forward'" in message
    assert message.count(f"{HERE}:") >= 4  # both holds of each order, file:line
    assert "Where the earlier order was made" in message and "in forward" in message
    assert "Where the inversion is attempted" in message


async def test_inversion_is_found_through_a_chain_of_orders(debug_mode: None) -> None:
    a, b, c = Lock(name="A"), RWLock(name="B"), Lock(name="C")
    async with a, b.writer:
        pass
    async with b.reader, c:
        pass
    async with c:
        with pytest.raises(LockOrderError, match=r"'A'.*'C'.*then.*'B'"):
            await a.acquire()
    assert not a.locked()


async def test_read_read_inversion_is_reported_with_the_reason(debug_mode: None) -> None:
    a, b = RWLock(name="r-a"), RWLock(name="r-b")
    async with a.reader, b.reader:
        pass
    async with b.reader:
        with pytest.raises(LockOrderError, match="writer preference"):
            async with a.reader:
                pass


async def test_warn_mode_warns_once_per_pair_and_goes_on(debug_mode: None) -> None:
    dbg.enable(on_inversion="warn")
    a, b = Lock(name="w-a"), Lock(name="w-b")
    async with a, b:
        pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            async with b, a:  # acquired despite the inversion
                assert a.locked()
    hits = [w for w in caught if issubclass(w.category, LockOrderWarning)]
    assert len(hits) == 1
    assert hits[0].filename.endswith(HERE)


async def test_reentrant_and_nowait_acquisitions_record_no_order(debug_mode: None) -> None:
    a, b = RWLock(name="re-a"), Lock(name="re-b")
    async with a.writer, b, a.reader:  # re-entrant read under the write: not b -> a
        pass
    async with b:
        a.writer.acquire_nowait()  # a try-lock cannot deadlock: no order b -> a
        a.writer.release()
    async with a.reader, b:  # a -> b again: still consistent
        pass


async def test_condition_wait_keeps_the_holds_it_gives_back(debug_mode: None) -> None:
    cond = Condition(name="c")
    other = Lock(name="after-c")
    ready = anyio.Event()

    async def waiter() -> None:
        async with cond:
            ready.set()
            await cond.wait()
            async with other:  # c -> other: the hold of c is known again after wait()
                pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, name="waiter")
            await ready.wait()
            async with cond:
                cond.notify()
    async with other:
        with pytest.raises(LockOrderError):
            async with cond:
                pass


# -- wait-for cycles -------------------------------------------------------------------------------


async def test_two_task_cycle_raises_deadlock_in_the_closing_task(debug_mode: None) -> None:
    a, b = Lock(name="cy-a"), Lock(name="cy-b")
    first_in = anyio.Event()
    second_in = anyio.Event()
    errors: list[BaseException] = []

    async def t1() -> None:
        async with a:
            first_in.set()
            await second_in.wait()
            async with b:  # waits for t2; completes once t2 gives up
                pass

    async def t2() -> None:
        async with b:
            second_in.set()
            await anyio.wait_all_tasks_blocked()
            try:
                async with a:
                    pass
            except DeadlockError as exc:
                errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(t1, name="t1")
            await first_in.wait()
            tg.start_soon(t2, name="t2")
    (exc,) = errors
    message = str(exc)
    for part in ("'cy-a'", "'cy-b'", "task 't1'", "task 't2'", "would close a cycle"):
        assert part in message, (part, message)
    assert not a.locked() and not b.locked()


async def test_three_task_cycle_names_every_task_and_lock(debug_mode: None) -> None:
    locks = [Lock(name=f"ring-{i}") for i in range(3)]
    entered = [anyio.Event() for _ in range(3)]
    go = anyio.Event()
    errors: list[BaseException] = []

    async def member(i: int) -> None:
        async with locks[i]:
            entered[i].set()
            await go.wait()
            if i == 2:
                await anyio.wait_all_tasks_blocked()
            try:
                async with locks[(i + 1) % 3]:
                    pass
            except DeadlockError as exc:
                errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(member, i, name=f"m{i}")
                await entered[i].wait()
            go.set()
    assert len(errors) == 1
    message = str(errors[0])
    for i in range(3):
        assert f"'ring-{i}'" in message and f"task 'm{i}'" in message


async def test_cycle_through_a_queued_writer_is_found(debug_mode: None) -> None:
    # r holds A (read); w queues for A's write lock; t holds B and asks A (read): held back by
    # w (writer preference).  r asking B would close r -> t -> w -> r.
    a, b = RWLock(name="cw-a"), Lock(name="cw-b")
    r_in, t_in = anyio.Event(), anyio.Event()
    go = anyio.Event()
    errors: list[BaseException] = []

    async def r() -> None:
        async with a.reader:
            r_in.set()
            await go.wait()
            try:
                async with b:
                    pass
            except DeadlockError as exc:
                errors.append(exc)

    async def w() -> None:
        async with a.writer:
            pass

    async def t() -> None:
        async with b:
            t_in.set()
            async with a.reader:
                pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(r, name="r")
            await r_in.wait()
            tg.start_soon(w, name="w")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(t, name="t")
            await t_in.wait()
            await anyio.wait_all_tasks_blocked()
            go.set()
    (exc,) = errors
    message = str(exc)
    assert "queued behind task 'w'" in message
    for part in ("task 'r'", "task 't'", "task 'w'", "'cw-a'", "'cw-b'"):
        assert part in message, (part, message)


async def test_upgrade_waiting_on_a_reader_that_waits_on_us_is_a_cycle(debug_mode: None) -> None:
    dbg.enable(on_inversion="warn")  # the reader's order inverts ours: that is the point
    warnings.simplefilter("ignore", LockOrderWarning)  # pytest restores the filters after
    rw, other = RWLock(name="up"), Lock(name="up-other")
    reader_in = anyio.Event()
    errors: list[BaseException] = []

    async def reader() -> None:
        async with rw.reader:
            reader_in.set()
            async with other:  # held by the upgrader
                pass

    async with other, rw.upgradable:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader, name="reader")
                await reader_in.wait()
                await anyio.wait_all_tasks_blocked()
                try:
                    await rw.upgradable.upgrade()
                except DeadlockError as exc:
                    errors.append(exc)
                other.release()
                await other.acquire()  # let the reader through, then take it back
    (exc,) = errors
    assert "task 'reader'" in str(exc)


async def test_cycle_takes_priority_over_the_inversion_report(debug_mode: None) -> None:
    a, b = Lock(name="pri-a"), Lock(name="pri-b")
    a_in = anyio.Event()
    go = anyio.Event()
    errors: list[BaseException] = []

    async def t1() -> None:
        async with a:
            a_in.set()
            await go.wait()
            async with b:
                pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(t1, name="t1")
            await a_in.wait()
            async with b:
                go.set()
                await anyio.wait_all_tasks_blocked()  # t1 waits for b: order a -> b recorded
                try:
                    await a.acquire()  # inversion AND cycle: the cycle is reported
                except BaseException as exc:
                    errors.append(exc)
    assert type(errors[0]) is DeadlockError


async def test_contention_statistics_in_debug_mode(debug_mode: None) -> None:
    lock = Lock(name="stats")

    async def brief() -> None:
        async with lock:
            pass

    async with lock:  # 1: uncontended
        pass
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, lock:  # 2
            tg.start_soon(brief, name="brief")  # 3: waits about 10 ms
            await anyio.wait_all_tasks_blocked()
            held = info("stats").holders[0]
            await anyio.sleep(0.01)
    c = info("stats").contention
    assert c is not None
    assert (c.acquisitions, c.contended) == (3, 1)
    assert c.max_wait >= 0.009 and c.total_wait == c.max_wait
    assert held.site is not None and HERE in held.site
    assert held.since is not None


async def test_debug_snapshot_records_sites_of_holders_and_waiters(debug_mode: None) -> None:
    rw = RWLock(name="sites")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, rw.writer:
            tg.start_soon(rw.reader.acquire, name="reader")
            await anyio.wait_all_tasks_blocked()
            p = info("sites")
    assert p.holders[0].site is not None and HERE in p.holders[0].site
    assert p.waiters[0].site is not None and HERE not in p.waiters[0].site  # anyio's frame
    # the reader task exited holding its read lock: release is impossible, but the record of
    # its hold does not confuse later snapshots
    assert [h.mode for h in info("sites").holders] == ["read"]


# -- no false positives: many tasks, random cancellation, one global order -------------------------


async def test_no_false_positives_under_random_cancellation(debug_mode: None) -> None:
    rng = random.Random(7)
    locks: list[Any] = [
        RWLock(name=f"fp-rw{i}") if i % 2 else Lock(name=f"fp-l{i}") for i in range(6)
    ]

    def side(i: int) -> Any:
        lock = locks[i]
        if isinstance(lock, RWLock):
            return lock.reader if rng.random() < 0.6 else lock.writer
        return lock

    async def worker(seed: int) -> None:
        r = random.Random(seed)
        for _ in range(15):
            chosen = sorted(r.sample(range(len(locks)), r.randint(1, 3)))  # one global order
            with anyio.move_on_after(r.choice([0, 0.0005, 0.002, 1])):
                held = []
                try:
                    for i in chosen:
                        s = side(i)
                        await s.acquire()
                        held.append(s)
                        await anyio.lowlevel.checkpoint()
                finally:
                    for s in reversed(held):
                        s.release()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for n in range(60):
                tg.start_soon(worker, n)
    for lock in locks:
        check_invariants(lock)
        assert not (lock.locked() if isinstance(lock, Lock) else lock.writer.locked())


# -- the pytest plugin -----------------------------------------------------------------------------


def test_pytest_plugin_runs_the_session_in_debug_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import anyio
        import aiolocks

        def test_inversion():
            async def main():
                a, b = aiolocks.Lock(name="a"), aiolocks.Lock(name="b")
                async with a, b:
                    pass
                async with b, a:
                    pass
            anyio.run(main)

        def test_enabled():
            assert aiolocks.debug.enabled()
        """
    )
    result = pytester.runpytest_subprocess("--aiolocks-debug", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*LockOrderError: lock order inversion*"])
    plain = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "inversion")
    plain.assert_outcomes(passed=1)


async def test_keyed_tables_name_their_locks_by_key(debug_off: None) -> None:
    table = aiolocks.KeyedRWLock(name="users")
    async with table[42].writer:
        assert [h.mode for h in info("users[42]").holders] == ["write"]
        assert "'users[42]'" in repr(table[42])
    with pytest.raises(TypeError, match="name must be a str"):
        aiolocks.KeyedLock(name=3)  # type: ignore[arg-type]


async def test_snapshot_ignores_other_users_of_the_task_machinery(debug_off: None) -> None:
    # aiolocks.postgres (and other internal users) bind to event loops the same way as the
    # primitives; they must not appear in, or break, snapshot().
    class Bound:
        _loop: Any = None
        _tid = 0

        def _in_use(self) -> bool:
            return False

    from aiolocks import _backend

    keep = Bound()
    _backend.resolve_task(keep)
    assert keep not in _backend.LIVE
    dbg.snapshot()


# -- lock classes: a keyed table's entries are one lock for the order checker --------------------


async def test_keyed_table_orders_survive_entries_being_dropped(debug_mode: None) -> None:
    accounts: aiolocks.KeyedRWLock[int] = aiolocks.KeyedRWLock(name="accounts")
    audit = Lock(name="audit")
    with anyio.fail_after(5):
        async with accounts[1].writer, audit:  # accounts[*] -> audit
            pass
        gc.collect()
        assert 1 not in accounts  # the entry that taught the order is gone
        async with audit:
            with pytest.raises(LockOrderError) as err:
                async with accounts[2].reader:  # another key, inverted
                    pass
            assert not accounts[2].reader.locked()
    message = str(err.value)
    assert "RWLock 'accounts[2]' (read)" in message  # the lock being taken, by its key
    assert "the locks of KeyedRWLock 'accounts'" in message  # the order, by its class


async def test_orders_between_two_tables_hold_for_every_key(debug_mode: None) -> None:
    users: aiolocks.KeyedLock[str] = aiolocks.KeyedLock(name="users")
    carts: aiolocks.KeyedLock[str] = aiolocks.KeyedLock(name="carts")
    with anyio.fail_after(5):
        async with users["ann"], carts["ann"]:
            pass
        async with carts["bob"]:
            with pytest.raises(LockOrderError, match="the locks of KeyedLock 'users'"):
                async with users["bob"]:
                    pass


async def test_nesting_entries_of_one_table_in_key_order_is_not_reported(
    debug_mode: None,
) -> None:
    """The documented way: nest entries of one table in one fixed key order (sorted keys)."""
    accounts: aiolocks.KeyedRWLock[int] = aiolocks.KeyedRWLock(name="accounts")
    rng = random.Random(4)
    with anyio.fail_after(5):
        for _ in range(50):
            low, high = sorted(rng.sample(range(10), 2))
            async with accounts[low].writer, accounts[high].writer:
                pass
        # two entries nested both ways while they live: that is an inversion
        first, second = accounts[100], accounts[200]
        async with first.writer, second.writer:
            pass
        async with second.writer:
            with pytest.raises(LockOrderError, match=r"'accounts\[100\]'"):
                async with first.writer:
                    pass


# -- every lock named in reports -----------------------------------------------------------------


async def test_a_condition_contended_as_a_lock_is_reported_under_its_name(
    debug_off: None,
) -> None:
    cond = Condition(name="jobs")
    holding, release = anyio.Event(), anyio.Event()

    async def holder() -> None:
        async with cond:
            holding.set()
            await release.wait()

    async def contender() -> None:
        async with cond:
            pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder, name="holder")
            await holding.wait()
            tg.start_soon(contender, name="contender")
            await anyio.wait_all_tasks_blocked()
            out = io.StringIO()
            dbg.dump(out)
            release.set()
    text = out.getvalue()
    assert "Lock 'jobs'\n    held    exclusive  by task 'holder'" in text
    assert "waiting exclusive  task 'contender'" in text
    assert "Lock at 0x" not in text


async def test_a_lock_collection_and_its_guards_show_its_name() -> None:
    coll = aiolocks.LockCollection(Lock(), Lock(), name="pair")
    assert "LockCollection 'pair' of 2 lock(s)" in repr(coll)
    with anyio.fail_after(5):
        async with coll.lock(aiolocks.TaskKey.get()) as guard:
            assert "CollectionGuard of 'pair' holding 2 lock(s)" in repr(guard)
    with pytest.raises(TypeError, match="name must be a str"):
        aiolocks.LockCollection(Lock(), name=3)  # type: ignore[arg-type]
