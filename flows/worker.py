"""The execution worker process: claims queued executions from the store (the store is the queue),
runs them concurrently up to MAX_CONCURRENT_EXECUTIONS, renews their leases, watches for cancels,
and drains on SIGTERM. Run with `python -m flows.worker`."""

import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import socket

from config import Settings, get_settings
from database import open_store
from database.claim_order import ClaimPolicy
from database.interfaces import Claim, WorkerStore
from database.listen import QUEUE_CHANNEL, listen_dsn, listen_forever
from database.probes import forget
from flows.callbacks import CallbackService
from flows.heartbeat import heartbeat
from flows.retention import RetentionService
from flows.runner import PrefectProbe, Runner
from states import ExecutionMode, ExecutionStatus, Outcome
from tasks.context import open_resources
from tasks.cpu import freeze_startup_heap

logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.1
"""The idle worker's poll: for expired leases, and submits no wake-up reached (all-in-one: the API
pings WOS_WAKE_PORT with a datagram after every submit)."""
LISTENING_POLL_S = 1.0
"""The poll while LISTEN wos_queue is connected (PostgreSQL: every submit notifies it), a safety
net for expired leases and given-back runs."""
CAPPED_POLL_MAX_S = 1.0
"""The longest poll while queued work exists but none of it may be claimed (every queued
execution's organization is at MAX_CONCURRENT_PER_ORG): the poll doubles from `idle_poll_s` up
to this, so capped work costs a claim transaction a second, not ten. Any wake-up (a submit, a
run of this worker ending) claims at once."""
CANCEL_POLL_S = 0.25


class Worker:
    def __init__(self, settings: Settings, store: WorkerStore, runner: Runner) -> None:
        self.settings, self.store, self.runner = settings, store, runner
        instance = os.environ.get("WOS_INSTANCE") or socket.gethostname()
        self.owner = f"{instance}:{os.getpid()}:{secrets.token_hex(3)}"
        self.tasks: dict[str, asyncio.Task[Outcome]] = {}
        self.cancels: dict[str, asyncio.Event] = {}
        self.wake = asyncio.Event()
        self.idle_poll_s = IDLE_POLL_S
        # held by "claim + spawn" and by a lease renewal: a renewal's snapshot of `self.tasks`
        # then holds every execution this worker's committed claims gave it
        self._claiming = asyncio.Lock()
        self.policy = ClaimPolicy(settings.PRIORITY_AGING_SECONDS, settings.MAX_CONCURRENT_PER_ORG)

    @property
    def lease_s(self) -> float:
        return self.settings.LEASE_SECONDS

    async def serve(self, stop: asyncio.Event) -> None:
        """Claim and run executions until `stop` is set, then drain (see `shutdown`)."""
        helpers = [
            asyncio.create_task(self._renew_leases()),
            asyncio.create_task(self._watch_cancels()),
            asyncio.create_task(heartbeat(self.store, self.owner, self._prefect_probe())),
        ]
        logger.info("worker %s started (limit %d)", self.owner, self.settings.concurrency_limit)
        poll = self.idle_poll_s
        try:
            while not stop.is_set():
                free = self.settings.concurrency_limit - len(self.tasks)
                if free > 0 and await self._has_work():
                    claimed = await self.claim_and_spawn(free)
                    if claimed:
                        poll = self.idle_poll_s
                        continue
                    if claimed is None:
                        await asyncio.sleep(1)
                    poll = min(poll * 2, max(CAPPED_POLL_MAX_S, self.idle_poll_s))
                else:
                    poll = self.idle_poll_s
                self.wake.clear()
                waits = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self.wake.wait()),
                ]
                await asyncio.wait(waits, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
            await self.shutdown()
        finally:
            for helper in helpers:
                helper.cancel()

    def _prefect_probe(self) -> PrefectProbe | None:
        """What the heartbeat reports about Prefect (None: this worker runs inline)."""
        if self.settings.EXECUTION_MODE != ExecutionMode.PREFECT:
            return None
        return self.runner.probe

    async def _has_work(self) -> bool:
        """A cheap read first, so an idle worker polls often without taking the write lock."""
        try:
            return await self.store.has_queued()
        except Exception:  # noqa: BLE001 - a store hiccup must not kill the worker
            logger.exception("queue poll failed; retrying")
            await asyncio.sleep(1)
            return False

    async def claim_and_spawn(self, limit: int) -> int | None:
        """Claim up to `limit` executions and start them; how many, None when the claim failed."""
        async with self._claiming:
            try:
                claims = await self.store.claim(self.owner, limit, self.lease_s, self.policy)
            except Exception:  # noqa: BLE001 - a store hiccup must not kill the worker
                logger.exception("claim failed; retrying")
                return None
            for claim in claims:
                self._spawn(claim)
            return len(claims)

    def _spawn(self, claim: Claim) -> None:
        eid = claim.execution_id
        if eid in self.tasks:
            return
        if claim.attempts > 1:
            logger.info(
                "resuming execution %s (attempt %d, %d worker crash(es)%s)",
                eid,
                claim.attempts,
                claim.crash_resumes,
                f", last at node {claim.crashed_node}" if claim.crashed_node else "",
                extra={"execution_id": eid, "action": "resume"},
            )
        if claim.status == ExecutionStatus.CANCELLED:
            task = asyncio.create_task(self._done(eid))
        else:
            self.cancels[eid] = asyncio.Event()
            owned = dataclasses.replace(claim, owner=self.owner)  # its writes are fenced by it
            task = asyncio.create_task(self.runner.run(owned, self.cancels[eid]))
        self.tasks[eid] = task
        task.add_done_callback(lambda _t: self._finished(eid))

    async def _done(self, eid: str) -> Outcome:
        await self.store.mark_done(eid, self.owner)
        return Outcome.CANCELLED

    def _finished(self, eid: str) -> None:
        self.tasks.pop(eid, None)
        self.cancels.pop(eid, None)
        self.wake.set()

    async def _renew_leases(self) -> None:
        """Renew the leases of the executions running here, and only those: the store gives
        back the others this worker holds (a run that ended interrupted is resumed by a later
        claim once its lease expired)."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew_leases()
            except Exception:  # noqa: BLE001 - retried on the next tick
                logger.exception("lease renewal failed")

    async def renew_leases(self) -> None:
        """One renewal. Never concurrent with a claim: a claim committed after the snapshot of
        `self.tasks` would be given back by it, and run twice."""
        async with self._claiming:
            await self.store.renew_leases(self.owner, list(self.tasks), self.lease_s)

    async def _watch_cancels(self) -> None:
        """Cancels written straight into the row (by the API or the Node backend) stop the run."""
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            try:
                await self.check_cancels()
            except Exception:  # noqa: BLE001 - retried on the next tick
                logger.exception("cancel watch failed")

    async def check_cancels(self) -> None:
        """One tick of the cancel watch. A run may finish while the store is read: its event is
        gone by then, and the other cancels of the tick still apply."""
        for eid in await self.store.cancelled_among(list(self.cancels)):
            event = self.cancels.get(eid)
            if event is not None:
                event.set()

    async def shutdown(self) -> None:
        """Stop new nodes, give in-flight ones the grace period, then leave the rest resumable."""
        self.runner.drain.set()
        running = list(self.tasks.values())
        if running:
            logger.info(
                "draining %d execution(s) for up to %.0f s",
                len(running),
                self.settings.SHUTDOWN_GRACE_SECONDS,
            )
            _, pending = await asyncio.wait(running, timeout=self.settings.SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        await self.store.release(self.owner)
        await forget(self.store, self.owner)  # no longer counts for GET /health/ready


class _Wake(asyncio.DatagramProtocol):
    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.event.set()


async def listen_for_wakeups(worker: Worker) -> asyncio.BaseTransport | None:
    """Bind the UDP port start_service.py gave this worker; the API pings it after each submit."""
    port = os.environ.get("WOS_WAKE_PORT")
    if not port:
        return None
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Wake(worker.wake), local_addr=("127.0.0.1", int(port))
    )
    return transport


def listen_for_submits(worker: Worker, database_url: str) -> asyncio.Task[None] | None:
    """PostgreSQL: LISTEN wos_queue (notified by every submit's transaction, from any machine)
    wakes the worker; the idle poll then only backs it up."""
    dsn = listen_dsn(database_url)
    if dsn is None:
        return None
    worker.idle_poll_s = LISTENING_POLL_S

    async def listen() -> None:
        await listen_forever(dsn, QUEUE_CHANNEL, worker.wake.set, name="queue listener")

    return asyncio.create_task(listen(), name="wos-queue-listen")


async def main() -> None:
    settings = get_settings()
    store = await open_store(settings.database_url)
    resources = open_resources(settings, store)
    probe = PrefectProbe(os.environ.get("PREFECT_API_URL") or settings.PREFECT_API_URL)
    worker = Worker(
        settings, store, Runner(settings, store, resources, probe, drains_on_sigterm=True)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    wakeups = await listen_for_wakeups(worker)
    submits = listen_for_submits(worker, settings.database_url)
    callbacks_stop = asyncio.Event()  # set after the drain: a run's last events get delivered
    callbacks = asyncio.create_task(
        CallbackService(settings, store, resources.http, worker.owner).run(callbacks_stop)
    )
    pruning = asyncio.create_task(RetentionService(settings, store, worker.owner).run(stop))
    freeze_startup_heap()  # shorter garbage-collector pauses of the loop (tasks/cpu.py)
    try:
        await worker.serve(stop)
    finally:
        callbacks_stop.set()
        await callbacks
        await pruning
        if wakeups is not None:
            wakeups.close()
        if submits is not None:
            submits.cancel()
        await resources.aclose()
        await store.close()


if __name__ == "__main__":
    from start_service import configure_logging
    from tasks.redaction import install_log_redaction

    configure_logging(get_settings().LOG_LEVEL)
    install_log_redaction()  # no URL secrets in any log line, ours or Prefect's
    asyncio.run(main())
