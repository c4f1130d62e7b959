"""dataVisualization (contract §4.21): passthrough + widget extras, PNG rendering with matplotlib,
and the route that serves the stored PNGs (in-process app, real lifespan)."""

import json
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from config import get_settings
from errors import NodeConfigError
from tasks.context import RunContext
from tasks.visualization import (
    NOT_CONFIGURED,
    VisualizationConfig,
    data_visualization,
    image_path,
    safe_id,
)
from tests.conftest import MakeResources

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SALES = [
    {"month": "Jan", "sales": 120, "costs": 80},
    {"month": "Feb", "sales": 95.5, "costs": 70},
    {"month": "Mar", "sales": "140", "costs": 90},
    {"month": "Apr", "sales": 180, "costs": 60},
]
BAR = {
    "type": "bar",
    "title": "Monthly sales",
    "description": "Sales per month",
    "data": SALES,
    "xAxisKey": "month",
    "dataKey": "sales",
    "colors": ["#8884d8", "#82ca9d"],
}


@pytest.fixture
def viz_ctx(make_resources: MakeResources, tmp_path: Path) -> Any:
    """`viz_ctx(node_id="n1")`: a RunContext whose IMAGE_DIR is `tmp_path / "images"`."""

    def make(node_id: str = "n1", execution_id: str = "exec_test") -> RunContext:
        resources = make_resources(IMAGE_DIR=str(tmp_path / "images"))
        return RunContext(
            execution_id=execution_id,
            workflow_id="wf",
            organization_id="org",
            inputs={},
            node_id=node_id,
            node_type="dataVisualization",
            node_label="Chart",
            resources=resources,
        )

    return make


async def run(ctx: RunContext, config: dict[str, Any], data: Any = None) -> dict[str, Any]:
    return await data_visualization(VisualizationConfig.model_validate(config), data, ctx)


def png_size(png: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", png[16:24])
    return width, height


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"generatedWidget": BAR, "visualizationPrompt": "sales by month"},
            "Visualization: Monthly sales",
        ),
        ({"generatedWidget": {"type": "pie"}}, "Visualization: pie"),
        ({"visualizationPrompt": "a chart"}, NOT_CONFIGURED),
        ({}, NOT_CONFIGURED),
        ({"generatedWidget": json.dumps(BAR)}, "Visualization: Monthly sales"),
    ],
)
@pytest.mark.parametrize("data", [SALES, {"a": 1}, None, []])
async def test_visualization_is_a_passthrough_with_widget_extras(
    viz_ctx: Any, tmp_path: Path, config: dict[str, Any], message: str, data: Any
) -> None:
    result = await run(viz_ctx(), config, data)
    assert result["success"] is True
    assert result["outputData"] == data
    assert result["widget"] == config.get("generatedWidget")
    assert result["prompt"] == config.get("visualizationPrompt")
    assert result["message"] == message
    assert "image" not in result
    assert not (tmp_path / "images").exists()


WIDGETS = {
    "bar": BAR,
    "bar-multi": {**BAR, "dataKey": None, "dataKeys": ["sales", "costs"]},
    "column": {**BAR, "type": "column"},
    "line": {**BAR, "type": "line", "colors": None},
    "line-gaps": {**BAR, "type": "line", "data": [*SALES, {"month": "May", "sales": None}]},
    "area": {**BAR, "type": "area", "dataKeys": ["sales", "costs"]},
    "pie": {
        "type": "pie",
        "title": "Share",
        "data": SALES,
        "nameKey": "month",
        "dataKey": "sales",
        "colors": ["red", "#00ff00", "tab:blue", "C3"],
    },
    "donut": {"type": "donut", "data": SALES, "xAxisKey": "month", "dataKey": "costs"},
    "doughnut": {"type": "Doughnut", "data": SALES, "xAxisKey": "month", "dataKey": "costs"},
    "scatter": {
        "type": "scatter",
        "title": "Costs vs sales",
        "data": SALES,
        "xAxisKey": "costs",
        "dataKey": "sales",
    },
    "many-points": {
        "type": "line",
        "xAxisKey": "t",
        "dataKey": "v",
        "data": [{"t": f"2024-01-01T{h % 24:02d}", "v": h * 1.5} for h in range(200)],
    },
}


@pytest.mark.parametrize("name", list(WIDGETS))
async def test_visualization_renders_each_chart_type_to_png(
    viz_ctx: Any, tmp_path: Path, name: str
) -> None:
    result = await run(viz_ctx(), {"generatedWidget": WIDGETS[name], "renderImage": True}, SALES)
    assert result["outputData"] == SALES
    image = result["image"]
    assert image["url"] == "/api/executions/exec_test/images/n1.png"
    stored = tmp_path / "images" / "exec_test_n1.png"
    png = stored.read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert (image["width"], image["height"], image["bytes"]) == (800, 500, len(png))
    assert png_size(png) == (800, 500)
    assert len(png) > 10_000  # axes, labels and marks drawn, not an empty canvas
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["exec_test_n1.png"]


async def test_visualization_plots_the_input_records_when_the_widget_has_no_data(
    viz_ctx: Any, tmp_path: Path
) -> None:
    widget = {"type": "line", "title": "From input", "xAxisKey": "month", "dataKey": "sales"}
    config = {
        "generatedWidget": widget,
        "renderImage": "true",
        "imageFormat": "PNG",
        "imageWidth": 640,
        "imageHeight": 360,
    }
    result = await run(viz_ctx(node_id="chart-1"), config, SALES)
    png = (tmp_path / "images" / "exec_test_chart-1.png").read_bytes()
    assert png_size(png) == (640, 360) == (result["image"]["width"], result["image"]["height"])
    one = await run(viz_ctx(node_id="chart-2"), config, {"month": "Jan", "sales": 3})
    assert one["outputData"] == {"month": "Jan", "sales": 3}
    assert (tmp_path / "images" / "exec_test_chart-2.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize(
    ("config", "data", "field"),
    [
        ({"generatedWidget": {**BAR, "type": "radar"}}, None, "generatedWidget.type"),
        ({"generatedWidget": {**BAR, "type": None}}, None, "generatedWidget.type"),
        ({"generatedWidget": {**BAR, "xAxisKey": None}}, None, "generatedWidget.xAxisKey"),
        ({"generatedWidget": {**BAR, "dataKey": ""}}, None, "generatedWidget.dataKey"),
        ({"generatedWidget": {**BAR, "xAxisKey": "day"}}, None, "generatedWidget.xAxisKey 'day'"),
        ({"generatedWidget": {**BAR, "dataKey": "profit"}}, None, "generatedWidget.dataKey"),
        ({"generatedWidget": {**BAR, "dataKeys": ["sales", 3]}}, None, "generatedWidget.dataKeys"),
        (
            {"generatedWidget": {**BAR, "dataKeys": ["sales", "nope"]}},
            None,
            "generatedWidget.dataKeys 'nope'",
        ),
        (
            {"generatedWidget": {**BAR, "data": [*SALES, {"month": "May", "sales": "lots"}]}},
            None,
            "generatedWidget.dataKey 'sales': record 4",
        ),
        (
            {"generatedWidget": {**BAR, "data": [{"month": "Jan", "sales": True}]}},
            None,
            "generatedWidget.dataKey 'sales'",
        ),
        (
            {"generatedWidget": {**BAR, "colors": ["#8884d8", "not-a-colour"]}},
            None,
            "generatedWidget.colors",
        ),
        ({"generatedWidget": {**BAR, "colors": {"a": 1}}}, None, "generatedWidget.colors"),
        ({"generatedWidget": {**BAR, "data": "month,sales"}}, None, "generatedWidget.data"),
        ({"generatedWidget": {**BAR, "data": [1, 2]}}, None, r"generatedWidget.data\[0\]"),
        ({"generatedWidget": {**BAR, "data": []}}, None, "generatedWidget.data is empty"),
        ({"generatedWidget": {**BAR, "data": None}}, [1], r"input\[0\]"),
        ({"generatedWidget": {**BAR, "data": None}}, "text", "generatedWidget.data is empty"),
        (
            {"generatedWidget": {**WIDGETS["pie"], "data": [{"month": "Jan", "sales": -1}]}},
            None,
            "generatedWidget.dataKey 'sales'",
        ),
        ({"generatedWidget": {**WIDGETS["pie"], "nameKey": None}}, None, "generatedWidget.nameKey"),
        (
            {"generatedWidget": {**WIDGETS["scatter"], "xAxisKey": "month"}},
            None,
            "generatedWidget.xAxisKey 'month'",
        ),
        ({"generatedWidget": "{not json"}, None, "generatedWidget"),
        ({"generatedWidget": ["bar"]}, None, "generatedWidget"),
        ({}, None, "generatedWidget is not configured"),
        ({"generatedWidget": BAR, "imageFormat": "svg"}, None, "imageFormat"),
        ({"generatedWidget": BAR, "imageWidth": 50}, None, "imageWidth"),
        ({"generatedWidget": BAR, "imageHeight": 9000}, None, "imageHeight"),
    ],
)
async def test_visualization_bad_widget_names_the_field(
    viz_ctx: Any, tmp_path: Path, config: dict[str, Any], data: Any, field: str
) -> None:
    with pytest.raises(NodeConfigError, match=field):
        await run(viz_ctx(), {**config, "renderImage": True}, data)
    images = tmp_path / "images"
    assert not images.exists() or list(images.iterdir()) == []


async def test_visualization_refuses_a_node_id_unfit_for_a_file_name(viz_ctx: Any) -> None:
    with pytest.raises(NodeConfigError, match="Node id '../x'"):
        await run(viz_ctx(node_id="../x"), {"generatedWidget": BAR, "renderImage": True})


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("exec_1", True),
        ("a1b2c3d4e5f6a7b8", True),
        ("node-17.x", True),
        ("..", False),
        (".hidden", False),
        ("a/b", False),
        ("a\\b", False),
        ("a..b", False),
        ("", False),
        ("x" * 129, False),
        ("sp ace", False),
        ("é", False),
    ],
)
def test_safe_id(value: str, ok: bool) -> None:
    assert safe_id(value) is ok


@pytest.fixture
async def client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process (real lifespan) with IMAGE_DIR = `tmp_path / "images"`."""
    from tests.support import node_backend_sqlite

    db = tmp_path / "db.sqlite"
    node_backend_sqlite(db)
    monkeypatch.setenv("DATABASE_PATH", str(db))
    monkeypatch.setenv("IMAGE_DIR", str(tmp_path / "images"))
    monkeypatch.setenv("EXECUTION_MODE", "inline")
    monkeypatch.delenv("API_KEYS", raising=False)
    get_settings.cache_clear()
    from api_service import app

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http
    get_settings.cache_clear()


async def test_image_route_serves_the_rendered_png(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    settings = get_settings()
    path = image_path(settings, "abc123", "node-1")
    assert path == (tmp_path / "images" / "abc123_node-1.png").resolve()
    path.parent.mkdir(parents=True)
    path.write_bytes(PNG_SIGNATURE + b"rest-of-png")
    r = await client.get("/api/executions/abc123/images/node-1.png")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content == PNG_SIGNATURE + b"rest-of-png"


async def test_debug_node_run_renders_and_the_route_serves_it(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/nodes/execute",
        json={
            "nodeId": "viz1",
            "nodeType": "dataVisualization",
            "inputData": SALES,
            "node": {"config": {"generatedWidget": BAR, "renderImage": True}},
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True, body
    output = body["output"]
    assert output["outputData"] == SALES and output["widget"] == BAR
    image = output["image"]
    # the call's own run id (api.single_runs), never a shared one
    assert re.fullmatch(
        r"/api/executions/single_node-[0-9a-f]{16}-[0-9a-f]{32}/images/viz1.png", image["url"]
    )
    served = await client.get(image["url"])
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content.startswith(PNG_SIGNATURE) and len(served.content) == image["bytes"]
    assert png_size(served.content) == (image["width"], image["height"]) == (800, 500)


async def test_image_route_missing_image_is_404_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/executions/abc123/images/nothing.png")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "No image for node nothing in execution abc123"}


@pytest.mark.parametrize(
    "url",
    [
        "/api/executions/%2E%2E/images/secret.png",
        "/api/executions/..%2F..%2Fsecret/images/x.png",
        "/api/executions/abc/images/..%2F..%2Fsecret.png",
        "/api/executions/abc/images/%2E%2E.png",
        "/api/executions/.hidden/images/x.png",
        "/api/executions/a%5Cb/images/x.png",
        "/api/executions/abc/images/x%00.png",
    ],
)
async def test_image_route_refuses_path_traversal(
    client: httpx.AsyncClient, tmp_path: Path, url: str
) -> None:
    (tmp_path / "secret.png").write_bytes(PNG_SIGNATURE + b"secret")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "..png").write_bytes(PNG_SIGNATURE + b"dots")
    r = await client.get(url)
    assert r.status_code in (404, 422)
    assert isinstance(r.json()["detail"], str)
    assert b"secret" not in r.content and b"dots" not in r.content


async def test_image_route_needs_the_api_key_when_keys_are_set(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEYS", "k1")
    get_settings.cache_clear()
    r = await client.get("/api/executions/abc123/images/nothing.png")
    assert r.status_code == 401 and "detail" in r.json()
    r = await client.get("/api/executions/abc123/images/nothing.png", headers={"X-API-Key": "k1"})
    assert r.status_code == 404
