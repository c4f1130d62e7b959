"""Every workflow of tests/fixtures driven through ./start.sh exactly as its .expected.md says,
in prefect mode (real embedded Prefect server) and in inline mode (on SQLite and PostgreSQL);
assertions on stored rows."""

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import MockServer, RunningService
from tests.support import load_fixture, postgres_database_sync

pytestmark = pytest.mark.slow

SENSORS = [
    {"sensor": "S1", "value": 42},
    {"sensor": "S2", "value": 77},
    {"sensor": "S3", "value": "91.5"},
]


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    def alerts(req: dict[str, Any]) -> tuple[int, Any]:
        return 201, {"received": len(json.loads(req["body"]))}

    server = MockServer(
        {
            ("GET", "/api/sensors"): lambda _: (200, SENSORS),
            ("GET", "/variant/api/sensors"): lambda _: (200, SENSORS[:1]),
            ("POST", "/api/alerts"): alerts,
            ("POST", "/variant/api/alerts"): alerts,
            ("GET", "/api/broken"): lambda _: (500, {"error": "boom"}),
        }
    )
    yield server
    server.close()


@pytest.fixture(
    scope="module",
    params=["prefect", "inline", pytest.param("inline-postgres", marks=pytest.mark.postgres)],
)
def svc(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mock: MockServer
) -> Iterator[RunningService]:
    """Prefect mode on SQLite is the shared prefect-mode service (conftest.py); the store's
    PostgreSQL side is the same for both modes, so it runs inline only (prefect mode on
    PostgreSQL: tests/test_cluster.py)."""
    mode, _, database = str(request.param).partition("-")
    if mode == "prefect":
        yield from _with_fixtures(request.getfixturevalue("prefect_service"), mock)
        return
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database_sync()) if database else None
        service = RunningService(tmp_path_factory.mktemp(request.param), mode, database_url=url)
        try:
            yield from _with_fixtures(service, mock)
        finally:
            took = service.stop()
        assert took < 15, f"SIGTERM to the process group took {took:.1f} s"


def _with_fixtures(service: RunningService, mock: MockServer) -> Iterator[RunningService]:
    fixtures = {
        name: load_fixture(name, mock.port)
        for name in (
            "01_threshold_branch",
            "02_spreadsheet_join_split",
            "03_http_perrow_alerts",
            "05_webhook_templated_field",
            "08_failure_isolation",
        )
    }
    for name, data in fixtures.items():
        service.add_workflow(name, data)
    inner = json.loads(json.dumps(fixtures["02_spreadsheet_join_split"]))
    for n in inner["nodes"]:
        if n["type"] == "join":
            n["config"]["joinType"] = "inner"
    service.add_workflow("02_inner", inner)
    variant = json.dumps(fixtures["03_http_perrow_alerts"]).replace("/api/", "/variant/api/")
    service.add_workflow("03_variant", json.loads(variant))
    yield service


def run(svc: RunningService, wid: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    eid = svc.execute(wid, inputs or {})
    api = svc.wait(eid)
    row = svc.row(eid)
    row["api"] = api
    assert row["run"]["mode"] == svc.mode, row["run"]
    return row


def out(row: dict[str, Any], nid: str) -> Any:
    return row["nodeResults"][nid]["outputData"]


def statuses(row: dict[str, Any], nid: str) -> list[str]:
    return [log["status"] for log in row["logs"] if log["nodeId"] == nid]


def assert_skipped(row: dict[str, Any], nid: str) -> None:
    assert row["nodeResults"][nid]["skipped"] is True
    assert "outputData" not in row["nodeResults"][nid]
    assert statuses(row, nid) == ["skipped"]


FX01 = {
    "T": "c226ee02-e5b2-4450-916f-c135f914065d",
    "MI": "bd1017be-92d2-4800-849b-340440c1b4a0",
    "CO": "3e699937-a8f3-464e-85f1-0a26108750c4",
    "AF_T": "e5113492-aa59-4b98-a400-dc8f2280b52e",
    "AF_F": "8ce4e1e9-8947-4c8b-95f9-a6a97ecb8939",
    "OUT_T": "927a4c4e-5068-4adf-85ff-91e53d64ce3b",
    "OUT_F": "8f54e06d-ed3f-4df7-9c79-522e5ad5164c",
    "CM": "a0914271-06d8-4b42-aeab-fcc016484b51",
}


def test_01_run_a_true_branch(svc: RunningService) -> None:
    row = run(svc, "01_threshold_branch")
    ids = FX01
    assert row["status"] == "completed" and row["error"] is None
    assert row["startedAt"] and row["completedAt"] and row["completedAt"].endswith("Z")
    assert out(row, ids["T"]) == {}
    assert out(row, ids["MI"]) == {"temperature": 85}
    assert out(row, ids["CO"]) == {"temperature": 85}
    assert row["nodeResults"][ids["CO"]]["conditionResult"] is True
    assert out(row, ids["AF_T"]) == {"temperature": 85, "status": "ALERT"}
    assert out(row, ids["OUT_T"]) == {"temperature": 85, "status": "ALERT"}
    assert_skipped(row, ids["AF_F"])
    assert_skipped(row, ids["OUT_F"])
    assert ids["CM"] not in row["nodeResults"] and statuses(row, ids["CM"]) == []
    assert statuses(row, ids["MI"]) == ["running", "completed"]
    assert row["finalOutput"] == row["nodeResults"]
    assert row["api"]["progress"]["totalNodes"] == 7
    assert row["api"]["progress"]["failedNodes"] == 0
    assert row["api"]["progress"]["percentage"] == 100
    assert row["currentNodeId"] == ids["OUT_T"]
    assert row["inputs"] == {}


@pytest.mark.parametrize(("value", "expected"), [("72", 72), (80, 80)])
def test_01_runs_b_c_false_branch(svc: RunningService, value: Any, expected: int) -> None:
    ids = FX01
    row = run(svc, "01_threshold_branch", {ids["MI"]: value})
    assert row["inputs"] == {ids["MI"]: value}
    assert out(row, ids["MI"]) == {"temperature": expected}
    assert row["nodeResults"][ids["CO"]]["conditionResult"] is False
    assert out(row, ids["AF_F"]) == {"temperature": expected, "status": "OK"}
    assert out(row, ids["OUT_F"]) == {"temperature": expected, "status": "OK"}
    assert_skipped(row, ids["AF_T"])
    assert_skipped(row, ids["OUT_T"])
    assert row["status"] == "completed"


JOINED = [
    {
        "order_id": "O-1001",
        "customer_id": "C1",
        "amount": "120.50",
        "name": "Widget",
        "B_name": "Acme",
        "region": "EU",
    },
    {
        "order_id": "O-1002",
        "customer_id": "C2",
        "amount": "80",
        "name": "Gadget",
        "B_name": "Globex",
        "region": "US",
    },
    {
        "order_id": "O-1003",
        "customer_id": "C9",
        "amount": "15",
        "name": "Bolt",
        "B_name": "",
        "region": "",
    },
    {
        "order_id": "",
        "customer_id": "C3",
        "amount": "",
        "name": "",
        "B_name": "Initech",
        "region": "US",
    },
]


def split_a(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("order_id", "amount", "B_name")} for r in rows]


def split_b(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("customer_id", "region")} for r in rows]


@pytest.mark.parametrize(
    ("wid", "joined"), [("02_spreadsheet_join_split", JOINED), ("02_inner", JOINED[:2])]
)
def test_02_join_and_split(svc: RunningService, wid: str, joined: list[dict[str, Any]]) -> None:
    row = run(svc, wid)
    data = load_fixture("02_spreadsheet_join_split")
    parsed = {
        n["id"]: n["config"]["parsedData"] for n in data["nodes"] if n["type"] == "excelInput"
    }
    assert row["status"] == "completed"
    for nid, rows in parsed.items():
        assert out(row, nid) == rows
    join = "144a2821-bd8c-4525-9515-b27ab58dbc51"
    split = "7ab90b56-5a73-4304-901a-d05125857229"
    assert out(row, join) == joined
    assert statuses(row, join) == ["running", "completed"]
    assert out(row, split) == split_a(joined)
    assert row["nodeResults"][split]["outputA"] == split_a(joined)
    assert row["nodeResults"][split]["outputB"] == split_b(joined)
    assert out(row, "af3eecf8-1651-4db6-be9b-9d94787e0dde") == split_a(joined)
    assert out(row, "637ba749-90f7-45ab-beb9-83e7be5d18aa") == split_b(joined)
    assert row["api"]["progress"]["completedNodes"] == 7


def test_03_http_per_row(svc: RunningService, mock: MockServer) -> None:
    before_get = len(mock.calls("GET", "/api/sensors"))
    before_post = len(mock.calls("POST", "/api/alerts"))
    row = run(svc, "03_http_perrow_alerts")
    assert row["status"] == "completed"
    over = [SENSORS[1], SENSORS[2]]
    assert out(row, "n_get_sensors") == SENSORS
    assert row["nodeResults"]["n_get_sensors"]["statusCode"] == 200
    gets = mock.calls("GET", "/api/sensors")[before_get:]
    assert len(gets) == 1 and gets[0]["body"] == b""
    assert out(row, "n_over_limit") == over
    res = row["nodeResults"]["n_over_limit"]
    assert res["conditionResult"] is True and res["trueRecords"] == over
    assert res["falseRecords"] == [SENSORS[0]]
    posts = mock.calls("POST", "/api/alerts")[before_post:]
    assert len(posts) == 1 and json.loads(posts[0]["body"]) == over
    assert posts[0]["headers"]["content-type"] == "application/json"
    assert out(row, "n_post_alerts") == {"received": 2}
    assert row["nodeResults"]["n_post_alerts"]["statusCode"] == 201
    normal = [{"sensor": "S1", "value": 42, "status": "normal"}]
    assert out(row, "n_mark_normal") == normal and out(row, "n_normal_out") == normal
    assert out(row, "n_alert_receipt") == {"received": 2}
    assert row["api"]["progress"]["completedNodes"] == 7
    assert row["api"]["progress"]["percentage"] == 100


def test_03_variant_both_branches_still_run(svc: RunningService) -> None:
    row = run(svc, "03_variant")
    res = row["nodeResults"]["n_over_limit"]
    assert res["trueRecords"] == [] and res["conditionResult"] is False
    assert out(row, "n_post_alerts") == {"received": 0}
    assert out(row, "n_normal_out") == [{"sensor": "S1", "value": 42, "status": "normal"}]


W, AF, OUT = (
    "b16ecdeb-5f84-4a60-95b1-4675cc8779e3",
    "be7d1b50-5451-4da0-ae34-e6474e040d13",
    "1775ab2e-46fa-4343-97a0-8e7818d5ec03",
)


@pytest.mark.parametrize(
    ("body", "greeted"),
    [
        (
            [{"name": "Ana", "plan": "pro"}, {"name": "Luis", "plan": "free"}],
            [
                {"name": "Ana", "plan": "pro", "greeting": "Welcome, Ana!"},
                {"name": "Luis", "plan": "free", "greeting": "Welcome, Luis!"},
            ],
        ),
        (
            {"name": "Eva", "email": "eva@example.com"},
            {"name": "Eva", "email": "eva@example.com", "greeting": "Welcome, Eva!"},
        ),
        (None, {"greeting": "Welcome, {{name}}!"}),
    ],
)
def test_05_webhook_templating(svc: RunningService, body: Any, greeted: Any) -> None:
    inputs = {} if body is None else {"_webhookData": body}
    row = run(svc, "05_webhook_templated_field", inputs)
    assert row["status"] == "completed"
    assert out(row, W) == ({} if body is None else body)
    assert out(row, AF) == greeted and out(row, OUT) == greeted
    assert row["inputs"] == inputs
    assert row["api"]["progress"]["totalNodes"] == 3
    assert statuses(row, "01370a70-a1e6-43db-a5a0-83773c05529e") == []


def test_08_failure_isolation(svc: RunningService, mock: MockServer) -> None:
    before = len(mock.calls("GET", "/api/broken"))
    row = run(svc, "08_failure_isolation")
    assert 1 <= len(mock.calls("GET", "/api/broken")) - before <= 3
    assert row["status"] == "failed" and row["completedAt"]
    assert "node_2" in row["error"]
    error_logs = [
        log for log in row["logs"] if log["nodeId"] == "node_2" and log["status"] == "error"
    ]
    assert len(error_logs) == 1 and "500" in error_logs[0]["error"]
    assert isinstance(error_logs[0]["duration"], int)
    assert_skipped(row, "node_3")
    assert_skipped(row, "node_4")
    assert out(row, "node_5") == {"batch": "B-7"} and out(row, "node_6") == {"batch": "B-7"}
    progress = row["api"]["progress"]
    assert (progress["failedNodes"], progress["totalNodes"]) == (1, 6)
    assert row["api"]["error"] == row["error"]


def test_every_log_row_is_strict_json(svc: RunningService) -> None:
    for row in svc.sql('SELECT "inputData", "outputData" FROM execution_logs'):
        for text in row.values():
            if text is not None:
                json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
