"""What the HTTP workloads run against: the real service (started like ./start.sh, one
EXECUTION_MODE per instance) and the naive-Prefect baseline app. Both expose the same API
subset; completion is detected in bulk (the service: its SQLite file, read-only; the naive app:
a bulk status route), so detection does not load the API that is being measured."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.client import RawClient

ROOT = Path(__file__).resolve().parent.parent
NODE_SCHEMA = ROOT / "tests" / "fixtures" / "node_schema.sql"
TERMINAL = ("completed", "failed", "cancelled")


def venv_python() -> str:
    candidate = ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PREFECT_API_URL",
            "DATABASE_URL",
            "API_KEYS",
            "EXECUTION_MODE",
            "PREFECT_HOME",
            "DATABASE_PATH",
            "API_PORT",
        )
    }
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    """SIGTERM the process group that `proc` leads, SIGKILL it if it lingers."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    deadline = time.monotonic() + 5  # children of the group may outlive the leader briefly
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


async def wait_http(
    client: RawClient, path: str, timeout: float, procs: list[subprocess.Popen[bytes]], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}; see {log}")
        with contextlib.suppress(Exception):
            status, _ = await client.request("GET", path)
            if status == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout} s; see {log}")


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
    """`start_service.py` via the venv python, in its own process group, with a fresh SQLite
    database and Prefect home in a temp dir: what ./start.sh runs."""

    def __init__(
        self, spec: str, env: dict[str, str] | None = None, root: Path | None = None
    ) -> None:
        """`spec` is a mode, optionally with settings: `prefect:PREFECT_TASK_NODES=network+X=Y`."""
        self.name = spec
        self.mode, _, settings = spec.partition(":")
        self.extra_env = dict(env or {})
        for item in filter(None, settings.split("+")):
            key, _, value = item.partition("=")
            self.extra_env[key.strip()] = value.strip()
        self.root = root or ROOT
        self.proc: subprocess.Popen[bytes] | None = None
        self._db: sqlite3.Connection | None = None

    async def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"wos-bench-{self.mode}-"))
        self.db_path = self.workdir / "database.sqlite"
        if NODE_SCHEMA.exists():  # the Node backend creates the database first in production
            conn = sqlite3.connect(self.db_path)
            conn.executescript(NODE_SCHEMA.read_text())
            conn.close()
        self.port = free_port()
        self.log = self.workdir / "service.log"
        env = clean_env(
            API_PORT=str(self.port),
            DATABASE_PATH=str(self.db_path),
            PREFECT_HOME=str(self.workdir / "prefect"),
            EXECUTION_MODE=self.mode,
            LOG_LEVEL="WARNING",
            **self.extra_env,
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [venv_python(), "start_service.py"],
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgids = {self.proc.pid}
        self.client = RawClient("127.0.0.1", self.port, max_conns=600)
        await wait_http(self.client, "/", 240, [self.proc], self.log)
        self._db = sqlite3.connect(
            f"file:{self.db_path}?mode=ro", uri=True, timeout=10, check_same_thread=False
        )

    def stop(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        stop_group(self.proc)

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
        self.server: subprocess.Popen[bytes] | None = None
        self.app: subprocess.Popen[bytes] | None = None
        self.extra_env = dict(env or {})

    async def start(self) -> None:
        from config import Settings
        from start_service import prefect_env

        self.workdir = Path(tempfile.mkdtemp(prefix="wos-bench-naive-"))
        self.log = self.workdir / "naive.log"
        settings = Settings(PREFECT_HOME=str(self.workdir / "prefect"))
        settings.prefect_home.mkdir(parents=True, exist_ok=True)
        prefect_port = free_port()
        api_url = f"http://127.0.0.1:{prefect_port}/api"
        with self.log.open("ab") as log:
            self.server = subprocess.Popen(
                [
                    venv_python(),
                    "-m",
                    "flows.prefect_server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(prefect_port),
                ],
                cwd=ROOT,
                env=clean_env(**prefect_env(settings, None)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgids = {self.server.pid}
        prefect_client = RawClient("127.0.0.1", prefect_port)
        await wait_http(prefect_client, "/api/health", 240, [self.server], self.log)
        await prefect_client.close()
        self.port = free_port()
        with self.log.open("ab") as log:
            self.app = subprocess.Popen(
                [
                    venv_python(),
                    "-m",
                    "uvicorn",
                    "bench.naive_prefect:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=clean_env(**prefect_env(settings, api_url), **self.extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgids.add(self.app.pid)
        self.client = RawClient("127.0.0.1", self.port, max_conns=600)
        await wait_http(self.client, "/", 120, [self.server, self.app], self.log)

    def stop(self) -> None:
        stop_group(self.app)
        stop_group(self.server)

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
