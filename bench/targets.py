"""What the HTTP workloads run against: the real service (started like ./start.sh, one
EXECUTION_MODE per instance) and the naive-Prefect baseline app. Both expose the same API
subset; completion is detected in bulk (the service: its SQLite file, read-only; the naive app:
a bulk status route), so detection does not load the API that is being measured."""

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.client import RawClient
from tests.service_process import (
    ROOT,
    ServiceProcess,
    free_port,
    scrubbed_env,
    stop_group,
    venv_python,
)

TERMINAL = ("completed", "failed", "cancelled")
QUIET_UVICORN = ("--no-access-log", "--log-level", "warning")


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Target:
    """Common interface of the HTTP targets."""

    mode: str | None = None

    def modes_used(self) -> dict[str, Any] | None:
        return None

    async def error_of(self, eid: str) -> str | None:
        return None

    name: str
    port: int
    client: RawClient
    pgids: set[int]
    workdir: Path

    async def start(self) -> None: ...
    def stop(self) -> None: ...
    async def register_workflow(self, wid: str, data: dict[str, Any]) -> None: ...
    async def terminal(self, ids: list[str]) -> dict[str, str]: ...
    async def timestamps(self, eid: str) -> dict[str, float | None]: ...

    def submit_body(self, wid: str) -> bytes:
        return json.dumps({"workflowId": wid, "inputs": {}, "organizationId": "org_bench"}).encode()

    async def submit(self, wid: str) -> tuple[str | None, str | None]:
        """(execution id, error)."""
        status, data = await self.client.request(
            "POST", "/api/workflows/execute", self.submit_body(wid)
        )
        if status != 200:
            return None, f"HTTP {status}: {data[:200]!r}"
        return json.loads(data)["executionId"], None

    def status_path(self, eid: str) -> str:
        return f"/api/executions/{eid}"

    async def cancel(self, ids: list[str]) -> None:
        for eid in ids:
            with contextlib.suppress(Exception):
                await self.client.request("POST", f"/api/executions/{eid}/cancel", b"{}")


class ServiceTarget(Target):
    """The real service (`ServiceProcess`: start_service.py via the venv python, own process
    group, fresh database and Prefect home in a temp dir), one EXECUTION_MODE per instance."""

    def __init__(
        self, spec: str, env: dict[str, str] | None = None, root: Path | None = None
    ) -> None:
        """`spec` is a mode, optionally with settings: `prefect:PREFECT_TASK_NODES=network+X=Y`."""
        self.name = spec
        mode, _, settings = spec.partition(":")
        self.mode = mode
        self.extra_env = {**(env or {}), "EXECUTION_MODE": mode}
        for item in filter(None, settings.split("+")):
            key, _, value = item.partition("=")
            self.extra_env[key.strip()] = value.strip()
        self.root = root or ROOT
        self.service: ServiceProcess | None = None
        self._db: sqlite3.Connection | None = None

    async def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"wos-bench-{self.mode}-"))
        self.service = ServiceProcess(
            self.workdir,
            root=self.root,
            LOG_LEVEL="WARNING",
            **self.extra_env,
        )
        await asyncio.to_thread(self.service.start, 240)
        self.db_path, self.port = self.service.db, self.service.port
        self.pgids = {self.service.pgid}
        self.client = RawClient("127.0.0.1", self.port, max_conns=600)
        self._db = sqlite3.connect(
            f"file:{self.db_path}?mode=ro", uri=True, timeout=10, check_same_thread=False
        )

    def stop(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.service is not None:
            self.service.stop(timeout=20)

    async def register_workflow(self, wid: str, data: dict[str, Any]) -> None:
        conn = sqlite3.connect(self.db_path, timeout=30)
        conn.execute(
            "INSERT OR REPLACE INTO workflows (id, organizationId, name, data) VALUES (?, ?, ?, ?)",
            (wid, "org_bench", f"bench {wid}", json.dumps(data)),
        )
        conn.commit()
        conn.close()

    async def terminal(self, ids: list[str]) -> dict[str, str]:
        assert self._db is not None
        out: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT id, status FROM workflow_executions WHERE id IN ({marks}) "
                "AND status IN ('completed','failed','cancelled')",
                chunk,
            ).fetchall()
            out.update(rows)
        return out

    async def timestamps(self, eid: str) -> dict[str, float | None]:
        assert self._db is not None
        row = self._db.execute(
            "SELECT createdAt, startedAt, completedAt FROM workflow_executions WHERE id = ?", (eid,)
        ).fetchone()
        if row is None:
            return {}
        return dict(zip(("created", "started", "completed"), map(parse_iso, row), strict=True))

    def modes_used(self) -> dict[str, Any]:
        """Which mode the executions really ran in (prefect mode falls back to inline)."""
        assert self._db is not None
        rows = self._db.execute(
            "SELECT COALESCE(mode, '-'), COUNT(*), MAX(modeReason) FROM wos_executions GROUP BY 1"
        ).fetchall()
        return {
            "counts": {m: n for m, n, _ in rows},
            "fallback_reason": next((r for _, _, r in rows if r), None),
        }

    async def error_of(self, eid: str) -> str | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT error FROM workflow_executions WHERE id = ?", (eid,)
        ).fetchone()
        return row[0] if row else None


class NaiveTarget(Target):
    """bench/naive_prefect.py under uvicorn + the embedded Prefect server (`python -m
    flows.prefect_server`) that the bench starts for it."""

    name = "naive-prefect"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.extra_env = dict(env or {})

    def _spawn(self, args: list[str], env: dict[str, str]) -> None:
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [venv_python(), "-m", *args],
                cwd=ROOT,
                env=scrubbed_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.pgids.add(proc.pid)

    async def _wait_healthy(self, client: RawClient, path: str, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if any(proc.poll() is not None for proc in self.procs):
                raise RuntimeError(f"a process exited; see {self.log}")
            with contextlib.suppress(Exception):
                if (await client.request("GET", path))[0] == 200:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout} s; see {self.log}")

    async def start(self) -> None:
        from config import Settings
        from start_service import prefect_env

        self.workdir = Path(tempfile.mkdtemp(prefix="wos-bench-naive-"))
        self.log = self.workdir / "naive.log"
        self.pgids = set()
        home = str(self.workdir / "prefect")
        settings = Settings(_env_file=None, PREFECT_HOME=home)  # type: ignore[call-arg]
        settings.prefect_home.mkdir(parents=True, exist_ok=True)
        prefect_port = free_port()
        host = ["--host", "127.0.0.1", "--port"]
        self._spawn(["flows.prefect_server", *host, str(prefect_port)], prefect_env(settings, None))
        prefect_client = RawClient("127.0.0.1", prefect_port)
        try:
            await self._wait_healthy(prefect_client, "/api/health", 240)
        finally:
            await prefect_client.close()
        self.port = free_port()
        app_env = prefect_env(settings, f"http://127.0.0.1:{prefect_port}/api")
        self._spawn(
            ["uvicorn", "bench.naive_prefect:app", *host, str(self.port), *QUIET_UVICORN],
            {**app_env, **self.extra_env, "LOG_LEVEL": "WARNING"},
        )
        self.client = RawClient("127.0.0.1", self.port, max_conns=600)
        await self._wait_healthy(self.client, "/", 120)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc, timeout=20)

    async def register_workflow(self, wid: str, data: dict[str, Any]) -> None:
        client = RawClient("127.0.0.1", self.port, timeout=300)
        try:
            status, body = await client.request(
                "PUT", f"/bench/workflows/{wid}", json.dumps(data).encode()
            )
        finally:
            await client.close()
        if status != 200:
            raise RuntimeError(f"naive app refused workflow {wid}: {status} {body[:200]!r}")

    async def terminal(self, ids: list[str]) -> dict[str, str]:
        status, data = await self.client.json("POST", "/bench/status", {"ids": ids})
        if status != 200 or not isinstance(data, dict):
            return {}
        return {k: v["status"] for k, v in data.items() if v["status"] in TERMINAL}

    async def timestamps(self, eid: str) -> dict[str, float | None]:
        status, data = await self.client.json("POST", "/bench/status", {"ids": [eid]})
        row = data.get(eid, {}) if isinstance(data, dict) else {}
        return {
            "created": row.get("createdAt"),
            "started": row.get("startedAt"),
            "completed": row.get("completedAt"),
        }

    async def error_of(self, eid: str) -> str | None:
        status, data = await self.client.json("POST", "/bench/status", {"ids": [eid]})
        return data.get(eid, {}).get("error") if isinstance(data, dict) else None

    async def cancel(self, ids: list[str]) -> None:
        with contextlib.suppress(Exception):
            await self.client.request("POST", "/bench/cancel-all", b"{}")
