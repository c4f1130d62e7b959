"""Starts the real service with ./start.sh in a subprocess, and local mock servers (e2e tests)."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support import NODE_SCHEMA

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


class RunningService:
    """`./start.sh` on a free port with a database the Node backend created first."""

    def __init__(self, workdir: Path, mode: str, **env: str) -> None:
        self.mode = mode
        self.db = workdir / "database.sqlite"
        if not self.db.exists():
            conn = sqlite3.connect(self.db)
            conn.executescript(NODE_SCHEMA.read_text())
            conn.close()
        self.port = int(env.pop("API_PORT", 0)) or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / f"service-{mode}.log").open("ab")
        full_env = {
            **os.environ,
            "API_PORT": str(self.port),
            "DATABASE_PATH": str(self.db),
            "EXECUTION_MODE": mode,
            "PREFECT_HOME": str(workdir / "prefect"),
            "LOG_LEVEL": "INFO",
            **env,
        }
        for key in ("PREFECT_API_URL", "DATABASE_URL", "API_KEYS"):
            if key not in env:
                full_env.pop(key, None)
        self.proc = subprocess.Popen(
            [str(ROOT / "start.sh")],
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"service exited with {self.proc.returncode}; see {self.log.name}"
                )
            try:
                if self.client.get("/").json().get("status") == "running":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service did not start in {timeout} s; see {self.log.name}")

    def _prefect(self, path: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        text = Path(self.log.name).read_text()
        url = text.rsplit("Prefect API ready at ", 1)[1].split()[0]
        r = httpx.post(f"{url}{path}", json=query, timeout=10)
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
        conn = sqlite3.connect(self.db, timeout=10)
        conn.execute(
            "INSERT OR REPLACE INTO workflows (id, organizationId, name, data) VALUES (?, ?, ?, ?)",
            (wid, "org_test", name, json.dumps(data)),
        )
        conn.commit()
        conn.close()

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
        conn = sqlite3.connect(self.db, timeout=10)
        conn.row_factory = sqlite3.Row
        row = dict(
            conn.execute("SELECT * FROM workflow_executions WHERE id = ?", (eid,)).fetchone()
        )
        row["logs"] = [
            dict(r)
            for r in conn.execute(
                "SELECT * FROM execution_logs WHERE executionId = ? ORDER BY timestamp, id", (eid,)
            )
        ]
        row["run"] = dict(
            conn.execute("SELECT * FROM wos_executions WHERE executionId = ?", (eid,)).fetchone()
        )
        conn.close()
        for key in ("inputs", "nodeResults", "finalOutput"):
            row[key] = json.loads(row[key]) if row[key] else None
        return row

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float:
        """Signal the whole process group; returns how long it took to go away."""
        start = time.monotonic()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.client.close()
        self.log.close()
        return time.monotonic() - start


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
