"""Every route's real answers, success and errors, validated against the app's own
`/openapi.json`: a response model that lies about an answer fails here."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

import api_service
from api.deps import get_store
from config import get_settings
from tasks.visualization import image_path
from tests.conftest import Service
from tests.test_api import SIMPLE
from tests.test_versions import add_version

PNG = b"\x89PNG\r\n\x1a\nrest"


class OpenApi:
    """Looks up the documented answer of an operation and validates a real one against it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.seen: set[tuple[str, str, int]] = set()

    def check(self, r: httpx.Response, path: str) -> None:
        method = r.request.method.lower()
        responses = self.spec["paths"][path][method]["responses"]
        documented = responses.get(str(r.status_code))
        assert documented is not None, f"{method} {path}: {r.status_code} is not documented"
        media = r.headers["content-type"].split(";")[0]
        assert media in documented["content"], f"{method} {path} {r.status_code}: {media}"
        if media == "application/json":
            self.validate(r.json(), documented["content"][media]["schema"])
        self.seen.add((method, path, r.status_code))

    def validate(self, value: Any, schema: dict[str, Any]) -> None:
        """Validate with `$ref`s resolved in the document's components (OpenAPI 3.1 schemas are
        JSON Schema 2020-12)."""
        root = {**schema, "components": self.spec["components"]}
        jsonschema.Draft202012Validator(root).validate(value)


@pytest.fixture
async def openapi(service: Service) -> OpenApi:
    r = await service.client.get("/openapi.json")
    assert r.status_code == 200
    return OpenApi(r.json())


@asynccontextmanager
async def failing_client() -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app whose store raises on every call (the app answers 500)."""

    class Broken:
        def __getattr__(self, name: str) -> Any:
            async def fail(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("store is down")

            return fail

    async def broken() -> Any:
        return Broken()

    api_service.app.dependency_overrides[get_store] = broken
    transport = httpx.ASGITransport(app=api_service.app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        api_service.app.dependency_overrides.clear()


async def test_every_answer_matches_the_openapi_schema(
    service: Service,
    openapi: OpenApi,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    c, check = service.client, openapi.check
    check(await c.get("/"), "/")

    await service.add_workflow("wf1", SIMPLE, name="Simple")
    execute, history = "/api/workflows/execute", "/api/workflows/{workflow_id}/executions"
    r = await service.execute(workflowId="wf1", inputs={"m": "3"}, organizationId="org_test")
    check(r, execute)
    eid = r.json()["executionId"]
    await service.wait(eid)
    check(await c.get("/health/live"), "/health/live")
    check(await c.get("/health/ready"), "/health/ready")  # the worker has beaten by now
    check(await service.execute(workflowId="nope"), execute)
    check(await service.execute(inputs="x"), execute)
    keyed = {"Idempotency-Key": "k"}
    check(await c.post(execute, json={"workflow": SIMPLE}, headers=keyed), execute)
    check(await c.post(execute, json={"workflow": {}}, headers=keyed), execute)
    check(await c.get("/api/workflows/wf1/executions"), history)
    check(await c.get("/api/workflows/nope/executions"), history)
    check(await c.get("/api/workflows/wf1/executions?limit=0"), history)
    versions = "/api/workflows/{workflow_id}/versions"
    await add_version(service.store, "wf1", 1, SIMPLE, published=True)
    check(await c.get("/api/workflows/wf1/versions"), versions)
    check(await c.get("/api/workflows/nope/versions"), versions)
    check(await c.get("/api/workflows/wf1/versions/1"), versions + "/{version}")
    check(await c.get("/api/workflows/wf1/versions/9"), versions + "/{version}")
    check(await c.get("/api/workflows/wf1/versions/x"), versions + "/{version}")
    check(await c.get("/api/workflows/wf1/versions/diff?from=1&to=draft"), versions + "/diff")
    check(await c.get("/api/workflows/wf1/versions/diff?from=1&to=9"), versions + "/diff")
    check(await c.get("/api/workflows/wf1/versions/diff?from=x&to=1"), versions + "/diff")

    one, logs = "/api/executions/{execution_id}", "/api/executions/{execution_id}/logs"
    cancel, retry = one + "/cancel", one + "/retry"
    check(await c.get(f"/api/executions/{eid}"), one)
    check(await c.get("/api/executions/nope"), one)
    check(await c.get(f"/api/executions/{eid}/logs"), logs)
    check(await c.get("/api/executions/nope/logs"), logs)
    check(await c.post(f"/api/executions/{eid}/cancel"), cancel)
    check(await c.post("/api/executions/nope/cancel"), cancel)
    check(await c.post(f"/api/executions/{eid}/retry"), retry)
    check(await c.post("/api/executions/nope/retry"), retry)
    stream = "/api/executions/{execution_id}/events"  # ended: the whole stream is answered
    check(await c.get(f"/api/executions/{eid}/events"), stream)
    check(await c.get("/api/executions/nope/events"), stream)
    check(await c.get(f"/api/executions/{eid}/events?types=bogus"), stream)
    check(await c.get("/api/events?types=bogus"), "/api/events")
    listed, graph = "/api/executions", "/api/executions/{execution_id}/workflow"
    check(await c.get("/api/executions?limit=1"), listed)
    check(await c.get("/api/executions?status=bogus"), listed)
    check(await c.get(f"/api/executions/{eid}/workflow"), graph)
    check(await c.get("/api/executions/nope/workflow"), graph)
    pending = (await service.execute(workflow=SIMPLE)).json()["executionId"]
    check(await c.post(f"/api/executions/{pending}/cancel"), cancel)
    check(await c.post(f"/api/executions/{pending}/retry", json={"fromScratch": True}), retry)
    check(await c.post(f"/api/executions/{pending}/retry", json={"fromScratch": "x"}), retry)

    node = "/api/nodes/execute"
    base = {"nodeId": "n1", "inputData": {"a": 1}}
    add = {"id": "n1", "config": {"addFieldName": "b", "addFieldValue": "2"}}
    check(await c.post(node, json={**base, "nodeType": "addField", "node": add}), node)
    check(await c.post(node, json={**base, "nodeType": "opcua", "node": {}}), node)
    check(await c.post(node, json=base), node)

    image = "/api/executions/{execution_id}/images/{node_id}.png"
    monkeypatch.setenv("IMAGE_DIR", str(tmp_path / "images"))
    get_settings.cache_clear()
    path = image_path(get_settings(), "e1", "n1")
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG)
    check(await c.get("/api/executions/e1/images/n1.png"), image)
    check(await c.get("/api/executions/e1/images/n2.png"), image)
    check(await c.get("/api/executions/e%20/images/n2.png"), image)

    async with failing_client() as failing:
        check(await failing.get("/api/executions/x"), one)
        check(await failing.get("/health/ready"), "/health/ready")  # 503: the store fails
        check(await failing.post(execute, json={"workflowId": "wf1"}), execute)

    monkeypatch.setenv("MAX_REQUEST_BYTES", "1024")
    get_settings.cache_clear()
    check(await service.execute(workflow=SIMPLE, inputs={"x": "y" * 2000}), execute)
    monkeypatch.setenv("API_KEYS", "k1")
    get_settings.cache_clear()
    check(await c.get("/api/executions/x"), one)

    paths = openapi.spec["paths"]
    operations = {(method, path) for path in paths for method in paths[path]}
    assert operations == {(m, p) for m, p, _ in openapi.seen}
    statuses = {s for _, _, s in openapi.seen}
    assert statuses == {200, 401, 404, 409, 413, 422, 500, 503}


async def test_the_schema_check_catches_a_lying_answer(service: Service, openapi: OpenApi) -> None:
    schema = openapi.spec["paths"]["/api/executions/{execution_id}/cancel"]["post"]
    answer = schema["responses"]["200"]["content"]["application/json"]["schema"]
    good = {"success": True, "executionId": "e", "message": "m", "previousStatus": "pending"}
    openapi.validate(good, answer)
    for bad in ({**good, "success": "yes"}, {k: v for k, v in good.items() if k != "message"}):
        with pytest.raises(jsonschema.ValidationError):
            openapi.validate(bad, answer)


async def test_error_answers_are_documented_as_a_string_detail(openapi: OpenApi) -> None:
    for path, operations in openapi.spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorDetail"}, (
                        method,
                        path,
                        status,
                    )
