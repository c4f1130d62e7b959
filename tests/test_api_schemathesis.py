"""A property-based run of the API from its own OpenAPI document (schemathesis) against the real
service: generated requests, valid and invalid, to every route but the event streams; no answer
may be a server error, an undocumented status or content type, or a body the schema refuses, and
no request the schema refuses may be accepted."""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

import api_service
from tests.e2e import RunningService

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 100
"""Per operation and service (valid and invalid requests together): 16 operations on two
services in a minute or two."""
STREAMS = r"/events$"
"""Server-Sent Event routes answer forever (until the execution ends); the WebSocket routes are
not in the document."""
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
]
"""Besides answers matching the document: a request the schema refuses is refused (4xx).
Not `positive_data_acceptance`: some rules are not in the schema (a cursor must be one the
service handed out, ids of a chart's path are [A-Za-z0-9_.-], a callback URL is http(s))."""
SIMPLE = {
    "nodes": [
        {"id": "a", "type": "addField", "config": {"fieldName": "x", "fieldValue": "1"}},
        {"id": "b", "type": "addField", "config": {"fieldName": "y", "fieldValue": "2"}},
    ],
    "connections": [{"fromNodeId": "a", "toNodeId": "b"}],
}


KEY = "schemathesis-key"


@dataclass(frozen=True)
class Api:
    service: RunningService
    known: dict[str, str]
    """Path parameters naming things that exist (a stored workflow, its run, a node of it)."""
    headers: dict[str, str]
    """What a valid request sends (the key, when the service requires one)."""


@pytest.fixture(scope="module", params=["open", "keys"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The real service, inline (no Prefect), with no route to anywhere outside the machine, and
    a stored workflow with one run so the id-taking routes also answer found things; without
    API_KEYS, and with a service key and an organization key (generated keys are refused)."""
    keys = request.param == "keys"
    settings = {"API_KEYS": f"{KEY}, org-{KEY}@org_test"} if keys else {}
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    svc = RunningService(tmp, "inline", OUTBOUND_ALLOW_PRIVATE="false", **settings)
    headers = {"X-API-Key": KEY} if keys else {}
    svc.client.headers.update(headers)
    try:
        svc.add_workflow("wf_st", SIMPLE, "Schemathesis")
        r = svc.client.post("/api/workflows/execute", json={"workflowId": "wf_st"})
        assert r.status_code == 200, r.text
        eid = r.json()["executionId"]
        svc.wait(eid)
        yield Api(svc, {"workflow_id": "wf_st", "execution_id": eid, "node_id": "a"}, headers)
    finally:
        svc.stop()
        svc.client.close()


Operation = APIOperation[Any, Any, Any, Any]
SCHEMA = schemathesis.openapi.from_dict(api_service.app.openapi()).exclude(path_regex=STREAMS)


def operations() -> list[Operation]:
    """Every operation of the document (an operation schemathesis cannot read fails here)."""
    found: list[Operation] = []
    for result in SCHEMA.get_all_operations():
        if not isinstance(result, Ok):
            raise result.err()
        found.append(result.ok())
    return found


OPERATIONS = operations()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method.upper()} {op.path}")
def test_api_answers_match_its_openapi_schema(api: Api, operation: Operation) -> None:
    """Valid and invalid requests (`MAX_EXAMPLES` in all) to one operation; a third are valid
    ones about the stored workflow and its run, with the key when one is needed."""
    session = requests.Session()
    session.trust_env = False
    names = re.findall(r"{(\w+)}", operation.path)
    found = {name: api.known[name] for name in names if name in api.known}
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
        operation.as_strategy(GenerationMode.POSITIVE, path_parameters=found, headers=api.headers),
    )

    @given(case=cases)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=api.service.url, session=session, checks=CHECKS, timeout=30)

    try:
        run()
    finally:
        session.close()
