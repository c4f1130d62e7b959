"""Local mock servers, and the real service (`ServiceProcess`) with the calls the end-to-end
tests make against it."""

import asyncio
import base64
import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.service_process import ServiceProcess, free_port, group_alive
from tests.support import postgres_query

__all__ = ["MockServer", "RunningService", "free_port", "group_alive"]

Route = Callable[[dict[str, Any]], tuple[int, Any]]


class MockServer:
    """A local HTTP server that answers JSON by (method, path) and records every request."""

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        self.routes = routes
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                req = {
                    "method": self.command,
                    "path": self.path,
                    "body": raw,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }
                outer.requests.append(req)
                route = outer.routes.get((self.command, self.path.split("?")[0]))
                status, body = route(req) if route else (404, {"error": "no route"})
                if isinstance(body, float | int):  # a delay, then an empty JSON object
                    time.sleep(body)
                    body = {}
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a cancelled or timed-out node)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def calls(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


class RunningService(ServiceProcess):
    """`./start.sh` in `mode` on a free port (see `ServiceProcess`), started and healthy."""

    def __init__(
        self,
        workdir: Path,
        mode: str,
        *,
        database_url: str | None = None,
        seed_prefect: bool = True,
        **settings: str,
    ) -> None:
        """`database_url`: run on that database (PostgreSQL) instead of the SQLite file."""
        if database_url is not None:
            settings["DATABASE_URL"] = database_url
        super().__init__(
            workdir,
            name=f"service-{mode}",
            seed_prefect=seed_prefect,
            EXECUTION_MODE=mode,
            **settings,
        )
        self.mode, self.database_url = mode, database_url
        self.client = httpx.Client(base_url=self.url, timeout=30, trust_env=False)
        try:
            self.start(timeout=180)
        except BaseException:
            self.client.close()
            raise

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """One statement on the service's database, as the Node backend would run it (`?`
        parameters, double-quoted identifiers; the same text on SQLite and PostgreSQL)."""
        if self.database_url is not None:
            numbered = iter(range(1, query.count("?") + 1))
            query = re.sub(r"\?", lambda _: f"${next(numbered)}", query)
            return asyncio.run(postgres_query(self.database_url, query, *params))
        conn = sqlite3.connect(self.db, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in conn.execute(query, params)]
            conn.commit()
            return rows
        finally:
            conn.close()

    def prefect_url(self) -> str:
        return self.log_text().rsplit("Prefect API ready at ", 1)[1].split()[0]

    def prefect_auth(self) -> str | None:
        """The embedded Prefect API's auth string (never logged), read from the environment of
        a worker of this service's process group, as only a process of the same user can."""
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit() or os.getpgid(int(proc.name)) != self.pgid:
                    continue
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(b"PREFECT_API_AUTH_STRING="):
                    return item.split(b"=", 1)[1].decode()
        return None

    def prefect_headers(self) -> dict[str, str]:
        auth = self.prefect_auth()
        if auth is None:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}

    def _prefect(self, path: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        r = httpx.post(
            f"{self.prefect_url()}{path}", json=query, headers=self.prefect_headers(), timeout=10
        )
        r.raise_for_status()
        runs: list[dict[str, Any]] = r.json()
        return runs

    def prefect_runs(self, execution_id: str) -> list[dict[str, Any]]:
        """The Prefect flow runs tagged with this execution, read from the embedded server."""
        return self._prefect(
            "/flow_runs/filter",
            {"flow_runs": {"tags": {"all_": [f"execution:{execution_id}"]}}},
        )

    def prefect_task_runs(self, flow_run_id: str, count: int) -> list[dict[str, Any]]:
        """The task runs of one flow run, oldest first, once `count` of them are in a final
        state (task run states reach the server as events, recorded within a few seconds)."""
        query = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
        deadline = time.monotonic() + 20
        while True:
            runs = self._prefect("/task_runs/filter", query)
            final = [r for r in runs if r["state"] and r["state"]["type"] in FINAL_STATES]
            if len(final) >= count or time.monotonic() > deadline:
                return runs
            time.sleep(0.3)

    def add_workflow(self, wid: str, data: Any, name: str = "Fixture") -> None:
        """Store a workflow of org_test as the Node backend does (with its organization row:
        on PostgreSQL the Node schema has foreign keys)."""
        self.sql(
            "INSERT INTO organizations (id, name) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
            "org_test",
            "Test org",
        )
        self.sql(
            'INSERT INTO workflows (id, "organizationId", name, data) VALUES (?, ?, ?, ?) '
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, data = excluded.data",
            wid,
            "org_test",
            name,
            json.dumps(data),
        )

    def execute(self, wid: str, inputs: dict[str, Any]) -> str:
        r = self.client.post(
            "/api/workflows/execute",
            json={"workflowId": wid, "inputs": inputs, "organizationId": "org_test"},
        )
        assert r.status_code == 200, r.text
        eid: str = r.json()["executionId"]
        return eid

    def wait(self, eid: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body: dict[str, Any] = self.client.get(f"/api/executions/{eid}").json()
            if body["status"] in ("completed", "failed", "cancelled"):
                return body
            time.sleep(0.05)
        raise AssertionError(f"execution {eid} did not finish in {timeout} s")

    def row(self, eid: str) -> dict[str, Any]:
        [row] = self.sql("SELECT * FROM workflow_executions WHERE id = ?", eid)
        row["logs"] = self.sql(
            'SELECT * FROM execution_logs WHERE "executionId" = ? ORDER BY "timestamp", id', eid
        )
        [row["run"]] = self.sql('SELECT * FROM wos_executions WHERE "executionId" = ?', eid)
        for key in ("inputs", "nodeResults", "finalOutput"):
            row[key] = json.loads(row[key]) if row[key] else None
        return row

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float:
        self.client.close()
        return super().stop(sig, timeout)
