"""`GET /health/live` and `GET /health/ready`: no key needed, every check reported, 503 with
the failing checks' reasons (no worker heartbeat, missing schema, unreachable store)."""

import asyncio
import time
from pathlib import Path

import pytest

from api.probes import readiness
from config import Settings, get_settings
from database import open_store
from database.probes import beat, forget, heartbeats_since
from tests.conftest import Service
from tests.service_process import free_port
from tests.support import node_backend_sqlite


async def _ready(service: Service, status: int, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = await service.client.get("/health/ready")
        if r.status_code == status or time.monotonic() > deadline:
            assert r.status_code == status, r.text
            body: dict = r.json()
            return body
        await asyncio.sleep(0.05)


async def test_live_answers_without_a_key(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEYS", "k1")
    get_settings.cache_clear()
    r = await service.client.get("/health/live")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert (await service.client.get("/api/executions/x")).status_code == 401


async def test_ready_once_a_worker_beats(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "k1")  # no key needed either
    get_settings.cache_clear()
    body = await _ready(service, 200)
    assert body["status"] == "ready"
    assert body["detail"] is None
    checks = body["checks"]
    assert set(checks) == {"store", "schema", "prefect", "workers"}
    assert all(check["ok"] for check in checks.values()), checks
    assert checks["prefect"]["detail"] == "not used (EXECUTION_MODE=inline)"
    assert checks["workers"]["detail"].startswith("1 worker(s) seen")


async def test_not_ready_without_a_worker_heartbeat(service: Service) -> None:
    await _ready(service, 200)
    for found in await heartbeats_since(service.store, 0):
        await forget(service.store, found.owner)  # as a worker that stopped does
    body = await _ready(service, 503)
    assert body["status"] == "not ready"
    assert body["detail"] == "workers: no worker heartbeat in the last 15 s"
    assert body["checks"]["workers"]["ok"] is False
    assert body["checks"]["store"]["ok"] and body["checks"]["schema"]["ok"]


async def test_an_old_heartbeat_does_not_count(service: Service) -> None:
    await _ready(service, 200)
    for found in await heartbeats_since(service.store, 0):
        await forget(service.store, found.owner)
    await beat(service.store, "gone:1:abc", None)
    assert [b.owner for b in await heartbeats_since(service.store, time.time() - 5)] == [
        "gone:1:abc"
    ]
    assert await heartbeats_since(service.store, time.time() + 1) == []


async def test_prefect_check_reports_the_workers_probe(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, EXECUTION_MODE="prefect")  # type: ignore[call-arg]
    store = await open_store(node_backend_sqlite(tmp_path / "db.sqlite"))
    try:
        await beat(store, "w:1:a", "ConnectError: refused")
        answer = await readiness(store, settings)
        assert answer.status == "ready"  # the fallback to inline is always allowed
        prefect = answer.checks["prefect"]
        assert prefect.ok
        assert (
            prefect.detail == "unreachable (ConnectError: refused); executions fall back to inline"
        )
        await beat(store, "w:2:b", "ok")
        assert (await readiness(store, settings)).checks["prefect"].detail == "reachable"
    finally:
        await store.close()


async def test_not_ready_when_the_schema_is_missing(tmp_path: Path) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    store = await open_store(f"sqlite:///{tmp_path / 'empty.sqlite'}", create=False)
    try:
        answer = await readiness(store, settings)
    finally:
        await store.close()
    assert answer.status == "not ready"
    assert answer.checks["store"].ok
    assert not answer.checks["schema"].ok
    assert answer.checks["schema"].detail == (
        "missing tables: workflow_executions, execution_logs, wos_executions, execution_events, "
        "wos_workers"
    )
    assert answer.detail is not None and answer.detail.startswith("schema: missing tables")


async def test_not_ready_when_the_store_is_unreachable() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/none"  # nothing listens there
    store = await open_store(url, create=False)
    started = time.monotonic()
    try:
        answer = await readiness(store, settings)
    finally:
        await store.close()
    assert time.monotonic() - started < 10
    assert answer.status == "not ready"
    for name in ("store", "schema", "workers"):
        assert not answer.checks[name].ok, name
    assert "Connect" in answer.checks["store"].detail or "refused" in answer.checks["store"].detail
