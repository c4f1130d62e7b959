"""The worker's queue: concurrency limit, submission order, pending rows wait in the store."""

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import flows.worker as worker_module
from config import Settings
from database import NewExecution, open_store
from database.interfaces import Claim, RunEnd, RunStart, Store
from flows.graph import parse_workflow
from flows.runner import PrefectProbe, Runner
from flows.worker import Worker
from states import ExecutionMode, ExecutionStatus, Outcome
from tasks.context import open_resources
from tests.e2e import MockServer


@pytest.fixture
def slow() -> Iterator[MockServer]:
    server = MockServer({("GET", "/slow"): lambda _: (200, 0.2)})
    yield server
    server.close()


async def test_limit_and_submission_order(tmp_path: Path, slow: MockServer) -> None:
    settings = Settings(
        _env_file=None,
        DATABASE_PATH=str(tmp_path / "db.sqlite"),  # type: ignore[call-arg]
        EXECUTION_MODE="inline",
        MAX_CONCURRENT_EXECUTIONS=2,
    )
    store = await open_store(settings.database_url)
    resources = open_resources(settings, store)
    definition = parse_workflow(
        {
            "nodes": [
                {
                    "id": "h",
                    "type": "http",
                    "config": {"httpUrl": f"http://127.0.0.1:{slow.port}/slow"},
                }
            ]
        }
    ).model_dump_json()
    ids = [f"e{i}" for i in range(6)]
    for eid in ids:
        await store.create_execution(
            NewExecution(
                execution_id=eid,
                workflow_id="w",
                workflow_name=None,
                organization_id=None,
                inputs={},
                definition=definition,
                mode="inline",
            )
        )
    worker = Worker(settings, store, Runner(settings, store, resources, PrefectProbe(None)))
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    peak, rows = 0, []
    for _ in range(300):
        rows, _total = await store.list_executions("w", 10)  # one consistent snapshot
        peak = max(peak, sum(1 for r in rows if r["status"] == "running"))
        if all(r["status"] == "completed" for r in rows):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await serving
    await resources.aclose()
    await store.close()
    assert [r["status"] for r in rows] == ["completed"] * 6
    assert peak == 2
    started = [r["startedAt"] for r in sorted(rows, key=lambda r: r["id"])]
    assert started == sorted(started)  # pending executions start in submission order


class InterruptedOnce:
    """A runner whose first run of an execution ends interrupted without a drain (Prefect failed
    around it); later runs complete it."""

    def __init__(self, store: Store) -> None:
        self.store, self.drain = store, asyncio.Event()
        self.attempts: list[int] = []

    async def run(self, claim: Claim, cancel: asyncio.Event) -> Outcome:
        self.attempts.append(claim.attempts)
        if len(self.attempts) == 1:
            return Outcome.INTERRUPTED
        eid = claim.execution_id
        await self.store.start(eid, RunStart(0, ExecutionMode.INLINE, None))
        await self.store.finish(
            eid, RunEnd(status=ExecutionStatus.COMPLETED, error=None, node_results="{}")
        )
        return Outcome.COMPLETED


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
async def test_interrupted_run_is_reclaimed_once_its_lease_expires(
    tmp_path: Path, backend: str
) -> None:
    """Bug 5: the worker renews the leases of what it runs, not of everything it ever claimed."""
    settings = Settings(
        _env_file=None,
        DATABASE_PATH=str(tmp_path / "db.sqlite"),  # type: ignore[call-arg]
        EXECUTION_MODE="inline",
        LEASE_SECONDS=0.6,
    )
    store = await open_store("memory:" if backend == "memory" else settings.database_url)
    await store.create_execution(
        NewExecution(
            execution_id="e1",
            workflow_id="w",
            workflow_name=None,
            organization_id=None,
            inputs={},
            definition="{}",
            mode="inline",
        )
    )
    runner = InterruptedOnce(store)
    worker = Worker(settings, store, runner)  # type: ignore[arg-type]
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    for _ in range(150):
        row = await store.get_execution("e1")
        if row is not None and row["status"] == ExecutionStatus.COMPLETED:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await serving
    await store.close()
    assert runner.attempts == [1, 2]


async def test_cancel_watch_survives_a_run_finishing_meanwhile(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug 4: a run that finished while the store was read has no cancel event any more; the
    other cancels of the same tick still apply and nothing is logged as a failure."""
    monkeypatch.setattr(worker_module, "CANCEL_POLL_S", 0.01)

    class RacingStore:
        calls = 0

        async def cancelled_among(self, execution_ids: list[str]) -> list[str]:
            ids = list(execution_ids)
            self.calls += 1
            if self.calls > 1:
                return []
            worker._finished(ids[0])  # that run ended while this read was in flight
            return ids

    worker = Worker(Settings(_env_file=None), RacingStore(), None)  # type: ignore[arg-type, call-arg]
    first, second = asyncio.Event(), asyncio.Event()
    worker.cancels = {"e1": first, "e2": second}
    watching = asyncio.create_task(worker._watch_cancels())
    await asyncio.sleep(0.1)
    watching.cancel()
    assert second.is_set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class SlowRenewals:
    """A store whose lease renewals take a while after their snapshot of the running ids (like
    a write waiting for the lock), so a claim can commit in between."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def renew_leases(self, owner: str, running: list[str], lease_s: float) -> None:
        snapshot = list(running)
        await asyncio.sleep(0.1)
        await self.store.renew_leases(owner, snapshot, lease_s)


class Blocking:
    """A runner whose runs last until the test ends."""

    def __init__(self) -> None:
        self.drain, self.release = asyncio.Event(), asyncio.Event()

    async def run(self, claim: Claim, cancel: asyncio.Event) -> Outcome:
        await self.release.wait()
        return Outcome.COMPLETED


async def test_a_claim_during_a_renewal_keeps_its_lease() -> None:
    """A claim that commits while a renewal with the older snapshot of the running ids is in
    flight is not given back by it (it would run on two workers)."""
    store = await open_store("memory:")
    await store.create_execution(
        NewExecution(
            execution_id="e1",
            workflow_id="w",
            workflow_name=None,
            organization_id=None,
            inputs={},
            definition="{}",
            mode="inline",
        )
    )
    runner = Blocking()
    worker = Worker(Settings(_env_file=None), SlowRenewals(store), runner)  # type: ignore[arg-type, call-arg]
    renewing = asyncio.create_task(worker.renew_leases())
    await asyncio.sleep(0.01)  # the renewal took its snapshot: nothing runs here yet
    assert await worker.claim_and_spawn(5) == 1
    await renewing
    assert list(worker.tasks) == ["e1"]
    assert await store.claim("another:worker", 5, 30) == []
    runner.release.set()
    await asyncio.gather(*worker.tasks.values())


async def test_capped_queue_backs_off_and_a_wake_claims_at_once(tmp_path: Path) -> None:
    """Queued work that may not be claimed (its org at MAX_CONCURRENT_PER_ORG) must not cost a
    claim transaction every idle poll: the poll doubles up to CAPPED_POLL_MAX_S; a wake-up (a
    submit, a run ending) still claims at once."""
    settings = Settings(
        _env_file=None,
        DATABASE_PATH=str(tmp_path / "db.sqlite"),  # type: ignore[call-arg]
        EXECUTION_MODE="inline",
    )
    store = await open_store(settings.database_url)
    resources = open_resources(settings, store)
    claims: list[float] = []
    loop = asyncio.get_running_loop()

    async def has_queued() -> bool:
        return True

    async def claim(*_args: object, **_kwargs: object) -> list[Claim]:
        claims.append(loop.time())
        return []

    store.has_queued = has_queued  # type: ignore[method-assign]
    store.claim = claim  # type: ignore[method-assign]
    worker = Worker(settings, store, Runner(settings, store, resources, PrefectProbe(None)))
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    await asyncio.sleep(2.5)
    polled = len(claims)
    # 0.1 s polls would claim ~25 times; doubling to 1 s: 0.2+0.4+0.8+1.0 -> about 5
    assert 3 <= polled <= 8, claims
    while len(claims) == polled:  # right after a poll: the next one is 1 s away
        await asyncio.sleep(0.01)
    woke = loop.time()
    worker.wake.set()
    while len(claims) == polled + 1 and loop.time() - woke < 2:
        await asyncio.sleep(0.01)
    assert claims[-1] - woke < 0.5, claims
    stop.set()
    await serving
    await resources.aclose()
    await store.close()
