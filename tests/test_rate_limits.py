"""Rate limits (issue 11): RATE_LIMITS on submits (429 + Retry-After, per key vs per org, shared
through Redis between API instances) and NODE_RATE_LIMITS (a node waits for its slot; a cancel
or the node's timeout ends the wait)."""

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from api.rate_limits import open_submit_limits
from config import Settings, get_settings
from errors import NodeTimeout
from models import NodeDef
from rate_limits import (
    NodeLimits,
    RateLimitSettingError,
    open_storage,
    parse_limits,
    parse_node_limits,
)
from tasks.context import Resources, open_resources
from tasks.run_node import run_attempt
from tests.conftest import MakeCtx, Service
from tests.service_process import ROOT, free_port, scrubbed_env
from tests.support import node_backend_sqlite, require_server

REDIS_URL = "redis://127.0.0.1:6379/0"
SIMPLE = {
    "nodes": [
        {"id": "t", "type": "trigger"},
        {"id": "m", "type": "manualInput", "config": {"manualInputVarName": "n"}},
    ],
    "connections": [{"fromNodeId": "t", "toNodeId": "m"}],
}
memory_service = pytest.mark.parametrize("service", ["memory"], indirect=True)


@pytest.fixture
def redis() -> str:
    require_server("Redis", "127.0.0.1", 6379)
    return REDIS_URL


def use_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return get_settings()


def restart_limits(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """What the API's lifespan does at start, with these settings."""
    from api_service import app

    app.state.submit_limits = open_submit_limits(use_settings(monkeypatch, **env))


def test_rate_limit_settings_are_validated() -> None:
    assert [str(i) for i in parse_limits("100/second;5000/hour")] == [
        "100 per 1 second",
        "5000 per 1 hour",
    ]
    assert parse_node_limits("llm=60/minute,1000/day; sendSMS=10/second").keys() == {
        "llm",
        "sendSMS",
    }
    for name, value, says in [
        ("RATE_LIMITS", "100 per fortnight", "100/second;5000/hour"),
        ("NODE_RATE_LIMITS", "llm:60/minute", "<nodeType>=<limit>"),
        ("NODE_RATE_LIMITS", "llm=sixty", "cannot read"),
        ("REDIS_URL", "http://127.0.0.1:6379", "redis://"),
    ]:
        with pytest.raises(ValidationError) as info:
            Settings(_env_file=None, **{name: value})  # type: ignore[arg-type]
        assert name in str(info.value) and says in str(info.value)


def test_unknown_node_type_in_node_rate_limits_refuses_to_start() -> None:
    settings = Settings(_env_file=None, NODE_RATE_LIMITS="llm=60/minute;sendSMSS=1/second")  # type: ignore[call-arg]
    with pytest.raises(RateLimitSettingError, match="unknown node types: sendSMSS"):
        open_resources(settings)


@memory_service
async def test_submits_over_the_limit_are_429_with_retry_after(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    restart_limits(monkeypatch, RATE_LIMITS="2/minute;100/hour")
    for _ in range(2):
        r = await service.execute(workflow=SIMPLE, organizationId="org_a")
        assert r.status_code == 200
    over = await service.execute(workflow=SIMPLE, organizationId="org_a")
    assert over.status_code == 429
    assert "Rate limit exceeded for this organization" in over.json()["detail"]
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert await service.count_executions() == 2  # nothing queued for the refused submit
    # without keys the limit is per organization: another org (and no org) still submit
    assert (await service.execute(workflow=SIMPLE, organizationId="org_b")).status_code == 200
    assert (await service.execute(workflow=SIMPLE)).status_code == 200


@memory_service
async def test_with_keys_the_limit_is_per_key(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    restart_limits(
        monkeypatch, RATE_LIMITS="1/minute", API_KEYS="key-one@org_a, key-two@org_a, svc-key"
    )

    async def submit(key: str, **body: Any) -> int:
        r = await service.client.post(
            "/api/workflows/execute", json={"workflow": SIMPLE, **body}, headers={"X-API-Key": key}
        )
        if r.status_code == 429:
            assert "for this API key" in r.json()["detail"] and r.headers["Retry-After"]
        return r.status_code

    assert await submit("key-one") == 200
    assert await submit("key-one") == 429
    assert await submit("key-two") == 200  # same organization, its own key: its own window
    assert await submit("svc-key", organizationId="org_a") == 200
    assert await submit("svc-key", organizationId="org_b") == 429  # a key's, whatever the org


@memory_service
async def test_redis_shares_the_submit_limit_between_api_instances(
    service: Service, monkeypatch: pytest.MonkeyPatch, redis: str
) -> None:
    org = f"org_{secrets.token_hex(4)}"  # a fresh window in the shared Redis
    restart_limits(monkeypatch, RATE_LIMITS="3/minute", REDIS_URL=redis)
    other_replica = open_submit_limits(get_settings())  # its own Redis connections
    assert (await service.execute(workflow=SIMPLE, organizationId=org)).status_code == 200
    for _ in range(2):
        assert (await other_replica.check(key_id=None, organization=org)).allowed
    refused = await other_replica.check(key_id=None, organization=org)
    assert not refused.allowed and 1 <= refused.retry_after_s <= 60
    over = await service.execute(workflow=SIMPLE, organizationId=org)
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1


@memory_service
async def test_unreachable_redis_limits_in_the_process_memory(
    service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down: the limits hold per process (not not at all), and the submit never fails."""
    restart_limits(monkeypatch, RATE_LIMITS="2/minute", REDIS_URL="redis://127.0.0.1:9/0")
    for _ in range(2):
        assert (await service.execute(workflow=SIMPLE)).status_code == 200
    over = await service.execute(workflow=SIMPLE)
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    assert caplog.text.count("rate limit store unreachable") == 1  # logged once a minute


async def test_an_unanswering_redis_is_given_up_on_within_its_timeout() -> None:
    """A Redis that accepts connections but never answers (a partition, a hung server) costs a
    node or submit REDIS_TIMEOUT_S once, then the process's own windows count."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    try:
        node = NodeLimits(
            parse_node_limits("addField=1/minute"), open_storage(f"redis://127.0.0.1:{port}/0")
        )
        started = time.monotonic()
        await asyncio.wait_for(node.wait("addField"), 10)
        assert time.monotonic() - started < 5
        for _ in range(50):  # the next calls go straight to memory (REDIS_RETRY_S)
            started = time.monotonic()
            assert await node.take([parse_limits("1000/minute")[0]], "other") == 0
            assert time.monotonic() - started < 0.5
        with pytest.raises(TimeoutError):  # the memory window is full now
            await asyncio.wait_for(node.wait("addField"), 1.5)
    finally:
        silent.close()


def limited(resources: Resources, text: str, redis_url: str | None = None) -> Resources:
    resources._node_limits = NodeLimits(parse_node_limits(text), open_storage(redis_url))
    return resources


async def timed_runs(ctx_of: Iterator[Any], node: NodeDef, n: int) -> list[float]:
    started, ends = time.monotonic(), []
    for _ in range(n):
        await run_attempt(node, {}, next(ctx_of))
        ends.append(time.monotonic() - started)
    return ends


ADD_FIELD = NodeDef.model_validate(
    {"id": "a", "type": "addField", "config": {"fieldName": "x", "fieldValue": "1"}}
)


async def test_a_node_waits_for_its_slot(make_ctx: MakeCtx, resources: Resources) -> None:
    ctx = make_ctx("addField", resources=limited(resources, "addField=2/second"))
    ends = await timed_runs(iter(lambda: ctx, None), ADD_FIELD, 3)
    assert ends[1] < 0.5 and ends[2] >= 0.8, ends  # the third waited for the window


async def test_node_slots_are_shared_through_redis(
    make_ctx: MakeCtx, make_resources: Any, redis: str
) -> None:
    node_type = "addField"
    key = f"addField={1}/second"
    first = limited(make_resources(), key, redis)
    second = limited(make_resources(), key, redis)  # another worker process
    # a fresh window: the namespace is shared, so wait out any earlier run's slot first
    await first.node_limits.wait(node_type)
    started = time.monotonic()
    await run_attempt(ADD_FIELD, {}, make_ctx(node_type, resources=second))
    assert time.monotonic() - started >= 0.7  # the other worker's slot was taken


async def test_cancel_stops_the_wait_at_once(make_ctx: MakeCtx, resources: Resources) -> None:
    ctx = make_ctx("addField", resources=limited(resources, "addField=1/minute"))
    await run_attempt(ADD_FIELD, {}, ctx)
    waiting = asyncio.create_task(run_attempt(ADD_FIELD, {}, ctx))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    started = time.monotonic()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert time.monotonic() - started < 0.2


async def test_the_wait_is_bounded_by_the_node_timeout(
    make_ctx: MakeCtx, resources: Resources
) -> None:
    ctx = make_ctx("addField", resources=limited(resources, "addField=1/minute"))
    await run_attempt(ADD_FIELD, {}, ctx)
    slow = NodeDef.model_validate({**ADD_FIELD.model_dump(), "config": {"timeoutMs": 300}})
    started = time.monotonic()
    with pytest.raises(NodeTimeout):
        await run_attempt(slow, {}, ctx)
    assert 0.25 <= time.monotonic() - started < 2


@pytest.fixture
def node_limited_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before the `service` fixture opens the worker's resources."""
    monkeypatch.setenv("NODE_RATE_LIMITS", "manualInput=1/minute")


@memory_service
async def test_cancelling_an_execution_whose_node_waits(
    node_limited_env: None, service: Service
) -> None:
    first = (await service.execute(workflow=SIMPLE)).json()["executionId"]
    assert (await service.wait(first))["status"] == "completed"
    second = (await service.execute(workflow=SIMPLE)).json()["executionId"]
    for _ in range(100):  # its manualInput node is waiting for the next minute's slot
        body = (await service.client.get(f"/api/executions/{second}")).json()
        if body["currentNodeId"] == "m":
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert body["status"] == "running"
    started = time.monotonic()
    cancel = await service.client.post(f"/api/executions/{second}/cancel")
    assert cancel.json()["success"] is True
    assert (await service.wait(second, timeout=5))["status"] == "cancelled"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"NODE_RATE_LIMITS": "llm=60/minute;nosuchType=1/second"}, "unknown node types"),
        ({"RATE_LIMITS": "lots/second"}, "RATE_LIMITS: cannot read 'lots/second'"),
    ],
)
def test_bad_rate_limit_settings_stop_start_up(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    """Exit status 1 with a message naming the setting; nothing is started."""
    db = tmp_path / "db.sqlite"
    node_backend_sqlite(db)
    done = subprocess.run(
        [sys.executable, "start_service.py"],
        cwd=ROOT,
        env=scrubbed_env(
            API_PORT=str(free_port()), DATABASE_PATH=str(db), EXECUTION_MODE="inline", **env
        ),
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert done.returncode == 1, done.stderr
    assert says in done.stderr and "started api" not in done.stderr, done.stderr


@pytest.mark.slow
def test_two_real_api_instances_share_the_submit_limit(tmp_path: Path, redis: str) -> None:
    """Two services (./start.sh, each its own API process) with one Redis: the submits of one
    organization count in one window whichever instance takes them."""
    import httpx

    from tests.service_process import ServiceProcess

    org = f"org_{secrets.token_hex(4)}"
    settings = {"EXECUTION_MODE": "inline", "RATE_LIMITS": "3/minute", "REDIS_URL": redis}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        ServiceProcess(tmp_path / "a", name="a", **settings) as a,
        ServiceProcess(tmp_path / "b", name="b", **settings) as b,
    ):

        def submit(svc: ServiceProcess) -> httpx.Response:
            body = {"workflow": SIMPLE, "organizationId": org}
            return httpx.post(f"{svc.url}/api/workflows/execute", json=body, timeout=30)

        assert [submit(s).status_code for s in (a, a, b)] == [200, 200, 200]
        for svc in (b, a):
            over = submit(svc)
            assert over.status_code == 429, over.text
            assert int(over.headers["Retry-After"]) >= 1
