"""The claim order on every store (issue 11): priorities, aging, FIFO, rotation across
organizations, the per-organization cap, and one organization's burst of 10,000 submits."""

import asyncio
import time

from database import NewExecution, Store
from database.claim_order import PRIORITIES, ClaimPolicy
from database.schema import runs
from database.sql import SqlStore
from tests.conftest import Service

NO_AGING = ClaimPolicy(aging_s=3600)
FAILING = {
    "nodes": [{"id": "f", "type": "http", "config": {"httpUrl": "not a url", "httpMethod": "GET"}}],
    "connections": [],
}


def new(eid: str, org: str | None = "org_a", priority: str = "normal") -> NewExecution:
    return NewExecution(
        execution_id=eid,
        workflow_id="wf1",
        workflow_name="WF",
        organization_id=org,
        inputs={},
        definition='{"nodes": []}',
        mode="inline",
        priority=PRIORITIES[priority],
    )


async def submit(store: Store, *executions: NewExecution) -> None:
    """Submit in order; concurrent submits of one chunk share a group commit on SQL stores."""
    for start in range(0, len(executions), 500):
        chunk = executions[start : start + 500]
        await asyncio.gather(*(store.create_execution(e) for e in chunk))


async def claim_one(store: Store, policy: ClaimPolicy = NO_AGING) -> str | None:
    claims = await store.claim("w1", 1, 60, policy)
    return claims[0].execution_id if claims else None


async def claim_all(store: Store, n: int, policy: ClaimPolicy = NO_AGING) -> list[str]:
    order = []
    for _ in range(n):
        eid = await claim_one(store, policy)
        if eid is None:
            break
        order.append(eid)
    return order


async def backdate(store: Store, eid: str, seconds: float) -> None:
    """Make `eid` look submitted `seconds` earlier."""
    if isinstance(store, SqlStore):
        async with store.write() as conn:
            await conn.execute(
                runs.update()
                .where(runs.c.executionId == eid)
                .values(seq=runs.c.seq - int(seconds * 1e9))
            )
        return
    store.runs[eid]["seq"] -= int(seconds * 1e9)  # type: ignore[attr-defined]


async def finish(store: Store, eid: str) -> None:
    await store.mark_done(eid)


async def test_claim_order_higher_priority_first_fifo_within(store: Store) -> None:
    await submit(
        store,
        new("low1", priority="low"),
        new("norm1"),
        new("high1", priority="high"),
        new("norm2"),
        new("high2", priority="high"),
        new("low2", priority="low"),
    )
    assert await claim_all(store, 10) == ["high1", "high2", "norm1", "norm2", "low1", "low2"]


async def test_claim_order_takes_a_batch_in_order(store: Store) -> None:
    await submit(store, new("n1"), new("l1", priority="low"), new("h1", priority="high"))
    claims = await store.claim("w1", 10, 60, NO_AGING)
    assert [c.execution_id for c in claims] == ["h1", "n1", "l1"]


async def test_claim_order_aged_run_counts_one_level_higher(store: Store) -> None:
    await submit(
        store,
        new("low_old", priority="low"),
        new("norm_old"),
        new("high1", priority="high"),
        new("norm1"),
        new("low1", priority="low"),
    )
    policy = ClaimPolicy(aging_s=300)
    await backdate(store, "low_old", 301)  # low -> normal: ahead of norm1 (earlier turn)
    await backdate(store, "norm_old", 400)  # normal -> high, never above high
    order = await claim_all(store, 10, policy)
    assert order[:2] == ["norm_old", "high1"] or order[:2] == ["high1", "norm_old"]
    assert set(order[:2]) == {"norm_old", "high1"}
    assert order[2:] == ["low_old", "norm1", "low1"]


async def test_claim_order_aging_is_one_level_only(store: Store) -> None:
    await submit(store, new("low_old", priority="low"), new("high1", priority="high"))
    await backdate(store, "low_old", 10_000)
    assert await claim_all(store, 5, ClaimPolicy(aging_s=300)) == ["high1", "low_old"]


async def test_claim_order_without_aging_a_waiting_low_stays_behind(store: Store) -> None:
    await submit(store, new("low_old", priority="low"), new("norm1"))
    await backdate(store, "low_old", 200)
    assert await claim_all(store, 5, ClaimPolicy(aging_s=300)) == ["norm1", "low_old"]


async def test_claim_order_rotates_across_organizations(store: Store) -> None:
    await submit(
        store,
        *(new(f"a{i}", org="org_a") for i in range(4)),
        *(new(f"b{i}", org="org_b") for i in range(2)),
        *(new(f"n{i}", org=None) for i in range(2)),  # no org: one group of its own
    )
    order = await claim_all(store, 10)
    assert order == ["a0", "b0", "n0", "a1", "b1", "n1", "a2", "a3"]


async def test_claim_order_rotation_is_within_a_priority(store: Store) -> None:
    await submit(
        store,
        *(new(f"a{i}", org="org_a") for i in range(3)),
        new("b_low", org="org_b", priority="low"),
        new("b_high", org="org_b", priority="high"),
    )
    assert await claim_all(store, 10) == ["b_high", "a0", "a1", "a2", "b_low"]


async def test_claim_order_caps_running_per_organization(store: Store) -> None:
    await submit(
        store,
        *(new(f"a{i}", org="org_a") for i in range(5)),
        new("b0", org="org_b"),
    )
    policy = ClaimPolicy(aging_s=3600, max_per_org=2)
    first = [c.execution_id for c in await store.claim("w1", 10, 60, policy)]
    assert first == ["a0", "b0", "a1"]
    assert await store.claim("w1", 10, 60, policy) == []  # org_a runs 2: nothing more
    await finish(store, "a0")
    assert [c.execution_id for c in await store.claim("w1", 10, 60, policy)] == ["a2"]
    await finish(store, "a1")
    await finish(store, "a2")
    assert [c.execution_id for c in await store.claim("w1", 10, 60, policy)] == ["a3", "a4"]


async def test_claim_order_cap_leaves_expired_leases_claimable(store: Store) -> None:
    await submit(store, new("a0"), new("a1"))
    policy = ClaimPolicy(aging_s=3600, max_per_org=1)
    assert [c.execution_id for c in await store.claim("w1", 10, 0.05, policy)] == ["a0"]
    await asyncio.sleep(0.1)  # w1's lease on a0 expires: it is resumed, a1 still waits
    assert [c.execution_id for c in await store.claim("w2", 10, 60, policy)] == ["a0"]


async def test_claim_order_burst_of_10000_delays_another_org_by_at_most_3(store: Store) -> None:
    started = time.monotonic()
    await submit(store, *(new(f"a{i:05d}", org="org_a") for i in range(10_000)))
    submit_s = time.monotonic() - started
    assert await claim_all(store, 5) == [f"a{i:05d}" for i in range(5)]
    await submit(store, new("b_single", org="org_b"))
    order = await claim_all(store, 3)
    assert "b_single" in order, order
    # and a single submit that arrives before any claim is taken within 3 claims too
    await submit(store, new("c_single", org="org_c"))
    assert "c_single" in await claim_all(store, 3)
    assert submit_s < 120


async def test_claim_order_priority_in_the_execute_body(service: Service) -> None:
    r = await service.execute(workflow=FAILING, priority="urgent")
    assert r.status_code == 422 and "priority" in r.json()["detail"]
    assert await service.count_executions() == 0
    r = await service.execute(workflow=FAILING, priority="high")
    assert r.status_code == 200
    eid = r.json()["executionId"]
    assert (await service.wait(eid))["status"] == "failed"
    row = await service.store.get_execution(eid)
    assert row is not None and row["priority"] == PRIORITIES["high"]
    assert (await service.client.get(f"/api/executions/{eid}")).json()["priority"] == "high"
    default = (await service.execute(workflow=FAILING)).json()["executionId"]
    row = await service.store.get_execution(default)
    assert row is not None and row["priority"] == PRIORITIES["normal"]


async def test_claim_order_retry_keeps_priority_unless_given(service: Service) -> None:
    eid = (await service.execute(workflow=FAILING, priority="high")).json()["executionId"]
    await service.wait(eid)
    kept = await service.client.post(f"/api/executions/{eid}/retry")
    assert kept.status_code == 200
    row = await service.store.get_execution(kept.json()["executionId"])
    assert row is not None and row["priority"] == PRIORITIES["high"]
    given = await service.client.post(f"/api/executions/{eid}/retry", json={"priority": "low"})
    assert given.status_code == 200
    row = await service.store.get_execution(given.json()["executionId"])
    assert row is not None and row["priority"] == PRIORITIES["low"]
    bad = await service.client.post(f"/api/executions/{eid}/retry", json={"priority": 3})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], str)


async def test_claim_order_concurrent_claims_keep_the_cap(store: Store) -> None:
    """Workers claiming at once (separate connections on PostgreSQL) never fill a slot twice."""
    await submit(store, *(new(f"a{i}", org="org_a") for i in range(20)))
    policy = ClaimPolicy(aging_s=3600, max_per_org=3)
    batches = await asyncio.gather(*(store.claim(f"w{i}", 2, 60, policy) for i in range(8)))
    claimed = [c.execution_id for batch in batches for c in batch]
    assert sorted(claimed) == ["a0", "a1", "a2"]
