"""Issue 9, measured bounds, against the real service (`./start.sh`, Prefect mode) in both
`PREFECT_TASK_NODES` modes: while the hostile cases run (all at once), `GET /` answers within
1 s, each execution ends within a minute (failed naming its limit, or completed), and the
service's process tree grows by less than 2 GiB; a workflow exactly at the submit limits
(1,000 nodes, 5,000 connections) runs to completion. The measured numbers are printed
(`pytest -s`)."""

import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import RunningService
from tests.test_security_runtime import xlsx

pytestmark = pytest.mark.slow

MiB = 1 << 20
GET_ROOT_MAX_S = 1.0
CASE_MAX_S = 60.0
LIMITS_WORKFLOW_MAX_S = 180.0
RSS_GROWTH_MAX = 2 << 30
BODY_BYTES = 60 * MiB  # over the default HTTP_MAX_RESPONSE_BYTES (50 MB)


class BigBody:
    """A local server whose `GET /big` streams `BODY_BYTES` without a Content-Length."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                chunk = b"x" * (256 * 1024)
                try:
                    for _ in range(BODY_BYTES // len(chunk)):
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the service cut the body at its limit

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def edge(source: str, target: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"e{n}", "fromNodeId": source, "toNodeId": target, **extra}


def chain_doubling() -> dict[str, Any]:
    """Two parallel connections between each pair of 40 nodes: rows double at every step."""
    nodes = [{"id": "n0", "type": "webhook", "config": {"webhookData": [0] * 10}}]
    edges = []
    for i in range(1, 41):
        nodes.append({"id": f"n{i}", "type": "output", "config": {}})
        edges += [edge(f"n{i - 1}", f"n{i}", 2 * i), edge(f"n{i - 1}", f"n{i}", 2 * i + 1)]
    return {"nodes": nodes, "connections": edges}


def fan_in() -> dict[str, Any]:
    """5,000 connections from one node into one node (each delivers its payload)."""
    nodes = [
        {
            "id": "src",
            "type": "webhook",
            "config": {"webhookData": [{"row": i} for i in range(10)]},
        },
        {"id": "sink", "type": "output", "config": {}},
    ]
    return {"nodes": nodes, "connections": [edge("src", "sink", i) for i in range(5000)]}


def at_submit_limits() -> dict[str, Any]:
    """1,000 nodes, 5,000 connections: a chain where each node hears from up to five before it
    (objects merge, so nothing grows)."""
    nodes: list[dict[str, Any]] = [{"id": "n0", "type": "webhook", "config": {"webhookData": {}}}]
    edges: list[dict[str, Any]] = []
    for i in range(1, 1000):
        nodes.append({"id": f"n{i}", "type": "output", "config": {}})
        for back in range(1, min(i, 5) + 1):
            edges.append(edge(f"n{i - back}", f"n{i}", len(edges)))
    while len(edges) < 5000:
        edges.append(edge("n998", "n999", len(edges)))
    return {"nodes": nodes, "connections": edges}


def single(node: dict[str, Any], data: Any = None, root: str = "webhook") -> dict[str, Any]:
    """`root` (a webhook carrying `data`, or a trigger) → `node` → output."""
    source = {"id": "in", "type": root, "config": {"webhookData": data} if data else {}}
    nodes = [source, {"id": "x", **node}, {"id": "out", "type": "output", "config": {}}]
    return {"nodes": nodes, "connections": [edge("in", "x", 0), edge("x", "out", 1)]}


def cases(body_port: int) -> dict[str, tuple[dict[str, Any], str, str | None]]:
    """name → (workflow, final status, text the error must contain)."""
    sheet = xlsx([["name", "value"], ["a", 1], ["b", 2]], dimension="A1:XFD1048576")
    huge = {"v": "1" * MiB + "x", "url": "http://u:p@" + "h" * MiB + "?token=t", "name": "n"}
    return {
        "1 MB number string": (
            single({"type": "manualInput", "config": {"manualInputVarValue": "9" * MiB}}),
            "completed",
            None,
        ),
        "rows doubling at every step": (chain_doubling(), "failed", "MAX_NODE_OUTPUT_ROWS"),
        "xlsx declaring A1:XFD1048576": (
            single(
                {
                    "type": "excelInput",
                    "config": {"fileContent": base64.b64encode(sheet).decode()},
                },
                root="trigger",
            ),
            "completed",
            None,
        ),
        "http body over HTTP_MAX_RESPONSE_BYTES": (
            single(
                {"type": "http", "config": {"httpUrl": f"http://127.0.0.1:{body_port}/big"}},
                root="trigger",
            ),
            "failed",
            "HTTP_MAX_RESPONSE_BYTES",
        ),
        "5,000 connections into one node": (fan_in(), "completed", None),
        "template over a huge input": (
            single(
                {
                    "type": "addField",
                    "config": {"addFieldName": "t", "addFieldValue": "{{name}}" + "{" * MiB},
                },
                [{"name": f"r{i}"} for i in range(500)],
            ),
            "failed",
            "MAX_NODE_OUTPUT_BYTES",
        ),
        "regexes over huge strings": (
            single(
                {
                    "type": "condition",
                    "config": {
                        "conditionField": "v",
                        "conditionOperator": "greaterThan",
                        "conditionValue": "5",
                        "processingMode": "perRow",
                    },
                },
                [huge, huge],
            ),
            "completed",
            None,
        ),
    }


def tree_rss(pgid: int) -> int:
    """Resident bytes of every process in the group `pgid` (shared pages counted per process)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


@dataclass
class Monitor:
    """Polls `GET /` (latency) and the service's process tree (RSS) until stopped."""

    svc: RunningService
    root_max_s: float = 0.0
    root_polls: int = 0
    rss_base: int = 0
    rss_max: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "Monitor":
        self.rss_base = self.rss_max = tree_rss(self.svc.pgid)
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._root, self._rss)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _root(self) -> None:
        with httpx.Client(base_url=self.svc.url, timeout=10, trust_env=False) as client:
            while not self._stop.wait(0.2):
                started = time.perf_counter()
                try:
                    status = client.get("/").status_code
                except httpx.HTTPError as exc:
                    self.failures.append(f"GET / failed: {exc!r}")
                    continue
                self.root_max_s = max(self.root_max_s, time.perf_counter() - started)
                self.root_polls += 1
                if status != 200:
                    self.failures.append(f"GET / answered {status}")

    def _rss(self) -> None:
        while not self._stop.wait(0.1):
            self.rss_max = max(self.rss_max, tree_rss(self.svc.pgid))

    @property
    def growth(self) -> int:
        return self.rss_max - self.rss_base


def run_to_end(svc: RunningService, wid: str, timeout: float) -> tuple[dict[str, Any], float]:
    """Execute `wid` and poll its status as a client does; (final body, seconds to the end)."""
    started = time.monotonic()
    eid = svc.execute(wid, {})
    with httpx.Client(base_url=svc.url, timeout=30, trust_env=False) as client:
        while time.monotonic() - started < timeout:
            body: dict[str, Any] = client.get(f"/api/executions/{eid}").json()
            if body["status"] in ("completed", "failed", "cancelled"):
                return body, time.monotonic() - started
            time.sleep(0.25)
    raise AssertionError(f"{wid}: execution {eid} did not end within {timeout:g} s")


@pytest.fixture(scope="module")
def body_server() -> Iterator[BigBody]:
    server = BigBody()
    yield server
    server.close()


@pytest.fixture(scope="module", params=["all", "network"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    workdir = tmp_path_factory.mktemp(f"hostile-{request.param}")
    svc = RunningService(workdir, "prefect", PREFECT_TASK_NODES=request.param)
    try:
        yield svc
    finally:
        svc.stop()


def report(text: str) -> None:
    print(f"\n[hostile] {text}")  # noqa: T201 (the measured bounds, for the README)


def test_hostile_cases_end_quickly_while_the_service_answers(
    service: RunningService, body_server: BigBody
) -> None:
    table = cases(body_server.port)
    for name, (workflow, _, _) in table.items():
        service.add_workflow(name, workflow)
    started = time.monotonic()
    with Monitor(service) as monitor, ThreadPoolExecutor(len(table)) as pool:
        ends = pool.map(lambda n: run_to_end(service, n, 120), table)
        runs = dict(zip(table, ends, strict=True))
    mode = service.settings["PREFECT_TASK_NODES"]
    for name, (body, seconds) in runs.items():
        report(f"{mode}: {name}: {body['status']} in {seconds:.1f} s")
    report(
        f"{mode}: all cases in {time.monotonic() - started:.1f} s; GET / max "
        f"{monitor.root_max_s * 1000:.0f} ms over {monitor.root_polls} polls; process tree RSS "
        f"{monitor.rss_base / MiB:.0f} MiB -> max {monitor.rss_max / MiB:.0f} MiB "
        f"(+{monitor.growth / MiB:.0f} MiB)"
    )
    for name, (_, status, error) in table.items():
        body, seconds = runs[name]
        assert body["status"] == status, (name, body.get("error"))
        assert body["mode"] == "prefect", (name, body.get("modeReason"))
        if error is not None:
            assert error in (body.get("error") or ""), (name, body.get("error"))
        assert seconds < CASE_MAX_S, f"{name} took {seconds:.1f} s"
    assert monitor.failures == []
    assert monitor.root_polls > 10
    assert monitor.root_max_s < GET_ROOT_MAX_S
    assert monitor.growth < RSS_GROWTH_MAX


def test_a_workflow_at_the_submit_limits_completes(service: RunningService) -> None:
    workflow = at_submit_limits()
    assert (len(workflow["nodes"]), len(workflow["connections"])) == (1000, 5000)
    service.add_workflow("limits", workflow)
    with Monitor(service) as monitor:
        body, seconds = run_to_end(service, "limits", LIMITS_WORKFLOW_MAX_S + 60)
    mode = service.settings["PREFECT_TASK_NODES"]
    report(
        f"{mode}: 1,000 nodes / 5,000 connections: {body['status']} in {seconds:.1f} s; GET / "
        f"max {monitor.root_max_s * 1000:.0f} ms; RSS +{monitor.growth / MiB:.0f} MiB"
    )
    assert body["status"] == "completed", body.get("error")
    assert body["mode"] == "prefect", body.get("modeReason")
    assert body["nodeResults"]["n999"]["outputData"] == {}
    assert seconds < LIMITS_WORKFLOW_MAX_S
    assert monitor.failures == []
    assert monitor.root_max_s < GET_ROOT_MAX_S
