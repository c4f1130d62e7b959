"""The dashboard in a real headless browser: Debian's Chromium driven by Playwright for Python
(never a browser Playwright downloads), against the real service (`./start.sh`) with API keys.

An organization key is typed into the page; its list shows its org's executions only and
picks up a new one without a reload; a slow node turns completed on the execution's page
without a reload; an execution is cancelled, then retried, from its page. Screenshots are kept in
tests/artifacts/. Under CI=true a missing browser fails the test; elsewhere it is skipped."""

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import MockServer, RunningService

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).parent / "artifacts"
SERVICE_KEY, ORG_KEY = "browser-service-key", "browser-org-key"
SLOW_S, HANG_S = 8.0, 60.0
WAIT_MS = 30_000
XSS_LABEL = '<img src=x onerror="window.__xss = 1">'
"""A workflow author's label is text on the page, never markup."""


def browser_or_skip() -> Any:
    """Playwright's sync API, or a skip (a failure under CI) naming what is missing."""
    missing = []
    try:
        from playwright import sync_api
    except ImportError:
        missing.append("the playwright package (pip install -r requirements-dev.txt)")
    if not CHROMIUM.exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)
    return sync_api


def workflow(url: str) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "t", "type": "trigger", "label": "Start"},
            {"id": "h", "type": "http", "label": "Slow call", "config": {"httpUrl": url}},
            {
                "id": "a",
                "type": "addField",
                "label": XSS_LABEL,
                "config": {"addFieldName": "ok", "addFieldValue": "y"},
            },
            {"id": "o", "type": "output", "label": "Result"},
        ],
        "connections": [
            {"fromNodeId": "t", "toNodeId": "h"},
            {"fromNodeId": "h", "toNodeId": "a"},
            {"fromNodeId": "a", "toNodeId": "o"},
        ],
    }


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright (skipped, or failed under CI, without one)."""
    sync_api = browser_or_skip()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RunningService]:
    svc = RunningService(tmp_path, "inline", API_KEYS=f"{SERVICE_KEY}, {ORG_KEY}@org_test")
    svc.client.headers["X-API-Key"] = SERVICE_KEY
    try:
        yield svc
    finally:
        svc.stop()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")  # noqa: T201 (the artifact's path, for whoever runs the test)
    return path


def test_dashboard_live_list_node_completion_and_cancel(
    browser: Any, service: RunningService
) -> None:
    from playwright.sync_api import expect

    mock = MockServer(
        {("GET", "/slow"): lambda _: (200, SLOW_S), ("GET", "/hang"): lambda _: (200, HANG_S)}
    )
    try:
        service.add_workflow("wf_slow", workflow(f"http://127.0.0.1:{mock.port}/slow"), "Slow")
        service.add_workflow("wf_hang", workflow(f"http://127.0.0.1:{mock.port}/hang"), "Hang")
        other = service.client.post(
            "/api/workflows/execute",
            json={"workflow": workflow("http://127.0.0.1:9/"), "organizationId": "org_other"},
        ).json()["executionId"]
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        run_dashboard(expect, page, service, other)
    finally:
        mock.close()


def test_the_prefect_link_opens_the_flow_run(browser: Any, prefect_service: RunningService) -> None:
    """In prefect mode (no keys) an execution's page links to its flow run in the Prefect UI."""
    from playwright.sync_api import expect

    svc = prefect_service
    quick = {
        "nodes": [{"id": "t", "type": "trigger"}, {"id": "o", "type": "output"}],
        "connections": [{"fromNodeId": "t", "toNodeId": "o"}],
    }
    svc.add_workflow("wf_quick", quick, "Quick")
    eid = svc.execute("wf_quick", {})
    final = svc.wait(eid)
    assert final["status"] == "completed" and final["prefectUrl"], final
    page = browser.new_page(viewport={"width": 1400, "height": 700})
    page.goto(f"{svc.url}/dashboard#/executions/{eid}")
    expect(page.locator('g.node[data-node-id="o"]')).to_have_attribute(
        "data-state", "completed", timeout=WAIT_MS
    )
    link = page.locator("#prefect-link")
    expect(link).to_be_visible()
    expect(link).to_have_attribute("href", final["prefectUrl"])
    shot(page, "prefect-link")
    with page.expect_popup() as opened:
        link.click()
    popup = opened.value
    popup.wait_for_load_state()
    assert popup.url.startswith(final["prefectUrl"])
    expect(popup.locator("body")).to_be_attached()


LAYOUT = """() => {
  const c = (f, t) => ({fromNodeId: f, toNodeId: t});
  const nodes = ["a", "b", "c", "d", "e", "x", "y"].map((id) => ({id}));
  const edges = [c("a", "b"), c("a", "c"), c("b", "d"), c("c", "d"), c("d", "e"), c("a", "e"),
                 c("x", "y"), c("y", "x"), c("e", "ghost")];
  const {positions, width, height} = WOS.graph.layout(nodes, edges);
  return {positions: Object.fromEntries(positions), width, height};
}"""


def check_layout(page: Any) -> None:
    """The page's layered layout: every node right of its parents (the longest path decides),
    siblings apart, a cycle and a dangling connection placed without hanging."""
    laid = page.evaluate(LAYOUT)
    pos = {k: (v["x"], v["y"]) for k, v in laid["positions"].items()}
    assert set(pos) == set("abcdexy")
    assert pos["a"][0] < pos["b"][0] == pos["c"][0] < pos["d"][0] < pos["e"][0]
    assert pos["b"][1] != pos["c"][1] and len(set(pos.values())) == len(pos)
    assert all(0 <= x < laid["width"] and 0 <= y < laid["height"] for x, y in pos.values())


def run_dashboard(expect: Any, page: Any, service: RunningService, other: str) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{service.url}/dashboard")
    expect(page.locator("#key-view")).to_be_visible(timeout=WAIT_MS)
    check_layout(page)
    page.fill("#key-input", ORG_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#list-view")).to_be_visible()
    expect(page.locator("#count-running")).to_have_text("0", timeout=WAIT_MS)
    live = page.locator("#live")
    expect(live).to_have_attribute("data-mode", "live", timeout=WAIT_MS)  # GET /api/events
    page.evaluate("window.__sameDocument = true")  # gone after any reload

    slow = service.execute("wf_slow", {})
    row = page.locator(f'tr[data-execution-id="{slow}"]')
    expect(row).to_be_visible(timeout=WAIT_MS)  # arrived live
    expect(row).to_contain_text("Slow")
    expect(page.locator(f'tr[data-execution-id="{other}"]')).to_have_count(0)  # org_other's
    row.locator("a").click()
    node = page.locator('g.node[data-node-id="h"]')
    expect(node).to_have_attribute("data-state", "running", timeout=WAIT_MS)
    expect(live).to_have_attribute("data-mode", "live")  # the execution's event stream
    shot(page, "running")
    expect(node).to_have_attribute("data-state", "completed", timeout=WAIT_MS)
    expect(page.locator("#execution-status")).to_have_attribute(
        "data-status", "completed", timeout=WAIT_MS
    )
    node.click()
    details = page.locator("#node-details")
    expect(details).to_contain_text("Slow call")
    expect(details.locator("pre.output")).to_contain_text('"statusCode": 200')
    expect(page.locator('#timeline .lane[data-node-id="h"]')).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True
    page.locator('g.node[data-node-id="a"]').click()
    expect(details.locator("h2")).to_have_text(XSS_LABEL)
    assert page.evaluate("window.__xss") is None
    node.click()
    shot(page, "completed")

    hang = service.execute("wf_hang", {})
    page.evaluate(f"location.hash = '#/executions/{hang}'")
    hang_node = page.locator('g.node[data-node-id="h"]')
    expect(hang_node).to_have_attribute("data-state", "running", timeout=WAIT_MS)
    cancel = page.locator("#cancel-button")
    expect(cancel).to_be_enabled()
    started = time.monotonic()
    cancel.click()
    expect(page.locator("#execution-status")).to_have_attribute(
        "data-status", "cancelled", timeout=WAIT_MS
    )
    assert time.monotonic() - started < HANG_S / 2
    assert service.wait(hang, timeout=30)["status"] == "cancelled"
    shot(page, "cancelled")

    page.locator("#retry-button").click()  # opens the new execution
    expect(page.locator("#execution-id")).not_to_have_text(hang, timeout=WAIT_MS)
    retried = page.locator("#execution-id").inner_text()
    assert service.client.get(f"/api/executions/{retried}").json()["retryOf"] == hang
    expect(page.locator('g.node[data-node-id="t"]')).to_have_attribute(
        "data-state", "completed", timeout=WAIT_MS
    )  # adopted from the cancelled run
    assert service.client.post(f"/api/executions/{retried}/cancel").json()["success"] is True
    assert page.evaluate("window.__sameDocument") is True

    page.evaluate("location.hash = '#/'")
    expect(page.locator(f'tr[data-execution-id="{hang}"] .status-cell')).to_have_text(
        "cancelled", timeout=WAIT_MS
    )
    shot(page, "list")
    page.select_option("#filter-status", "completed")
    page.click("#filters button[type=submit]")
    expect(page.locator("#execution-rows tr")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator(f'tr[data-execution-id="{slow}"]')).to_be_visible()
    assert "status=completed" in page.url

    # an execution the Node backend ran itself: no graph, its logs still make a timeline
    service.sql(
        'INSERT INTO workflow_executions (id, "workflowId", "organizationId", status, '
        '"createdAt", "startedAt", "completedAt") VALUES (?, ?, ?, ?, ?, ?, ?)',
        *("node_run", "wf_slow", "org_test", "completed"),
        *("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z"),
    )
    service.sql(
        'INSERT INTO execution_logs (id, "executionId", "nodeId", "nodeType", "nodeLabel", '
        'status, duration, "timestamp") VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
        *("log1", "node_run", "n1", "http", "Node-side call", "completed", 120),
        "2026-01-01T00:00:01.000Z",
    )
    page.evaluate("location.hash = '#/executions/node_run'")
    expect(page.locator("#graph")).to_contain_text("not run by this service", timeout=WAIT_MS)
    expect(page.locator('#timeline .lane[data-node-id="n1"]')).to_contain_text("Node-side call")
    assert errors == []
