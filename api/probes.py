"""The readiness checks of `GET /health/ready`: store reachable, schema ready, Prefect reachable
(or the inline fallback, which this service always allows), and a worker heartbeat seen
recently. Each check has its own time limit, so a probe answers within a few seconds."""

import asyncio
import time
from collections.abc import Awaitable

from pydantic import BaseModel

from config import Settings
from database.probes import heartbeats_since, missing_tables, ping
from flows.heartbeat import HEARTBEAT_S
from states import ExecutionMode
from tasks.redaction import redact_url

CHECK_TIMEOUT_S = 3.0
WORKER_RECENT_S = 3 * HEARTBEAT_S
"""A worker counts as alive when its last heartbeat is at most this old."""


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    """`GET /health/ready`: every check, ready or not (503 also carries `detail`)."""

    status: str
    checks: dict[str, Check]
    detail: str | None = None
    """The failing checks' reasons (only when not ready)."""


class Liveness(BaseModel):
    status: str


def _failed(exc: BaseException) -> Check:
    text = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
    return Check(ok=False, detail=redact_url(text)[:300])


async def _timed(check: Awaitable[Check]) -> Check:
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - a failing check is the answer, not an error
        return _failed(exc)


async def _store(store: object) -> Check:
    await ping(store)
    return Check(ok=True, detail="reachable")


async def _schema(store: object) -> Check:
    missing = await missing_tables(store)
    if missing:
        return Check(ok=False, detail="missing tables: " + ", ".join(missing))
    return Check(ok=True, detail="ready")


async def _workers_and_prefect(store: object, settings: Settings) -> tuple[Check, Check]:
    beats = await heartbeats_since(store, time.time() - WORKER_RECENT_S)
    if beats:
        workers = Check(ok=True, detail=f"{len(beats)} worker(s) seen in {WORKER_RECENT_S:.0f} s")
    else:
        workers = Check(ok=False, detail=f"no worker heartbeat in the last {WORKER_RECENT_S:.0f} s")
    if settings.EXECUTION_MODE != ExecutionMode.PREFECT:
        return workers, Check(ok=True, detail="not used (EXECUTION_MODE=inline)")
    reports = [b.prefect for b in beats if b.prefect is not None]
    if not reports:
        return workers, Check(ok=True, detail="unknown (no worker has probed it yet)")
    if "ok" in reports:
        return workers, Check(ok=True, detail="reachable")
    return workers, Check(
        ok=True, detail=f"unreachable ({reports[0]}); executions fall back to inline"
    )


async def readiness(store: object, settings: Settings) -> Readiness:
    """Run every check; `status` is "ready" when all passed, else "not ready" with `detail`."""
    store_check, schema_check = await asyncio.gather(_timed(_store(store)), _timed(_schema(store)))
    try:
        workers, prefect = await asyncio.wait_for(
            _workers_and_prefect(store, settings), CHECK_TIMEOUT_S
        )
    except Exception as exc:  # noqa: BLE001 - reported as failing checks
        workers = prefect = _failed(exc)
    checks = {"store": store_check, "schema": schema_check, "prefect": prefect, "workers": workers}
    failing = [f"{name}: {check.detail}" for name, check in checks.items() if not check.ok]
    if failing:
        return Readiness(status="not ready", checks=checks, detail="; ".join(failing))
    return Readiness(status="ready", checks=checks)
