"""The worker's heartbeat: every HEARTBEAT_S it records in the store that it is alive and what
its Prefect probe says, which `GET /health/ready` reads (`database/probes.py`)."""

import asyncio
import logging

from database.interfaces import WorkerStore
from database.probes import beat
from flows.runner import PrefectProbe

logger = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
"""How often a worker says it is alive; the readiness probe wants one within 3 beats."""


async def heartbeat(store: WorkerStore, owner: str, probe: PrefectProbe | None) -> None:
    """Beat until cancelled (`probe` None: the worker runs inline). A failed beat is logged and
    retried on the next tick."""
    while True:
        try:
            prefect = None
            if probe is not None:
                ok, why = await probe.available()
                prefect = "ok" if ok else why
            await beat(store, owner, prefect)
        except Exception:  # noqa: BLE001 - the next beat retries; the probe reports the gap
            logger.exception("heartbeat failed")
        await asyncio.sleep(HEARTBEAT_S)
