"""The API's execution functions (`api.executions`) without HTTP, on every store (the `store`
fixture: in memory, SQLite, PostgreSQL): submit, idempotency, retry and its reuse rule,
progress, cancel, the status view."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from api import executions
from api.schemas import ExecutionCreate
from database.interfaces import RunEnd, RunStart, Store
from errors import Conflict, ExecutionNotFound, GraphValidationError, UnsupportedNodeTypes
from states import ExecutionMode, ExecutionStatus

SIMPLE = {
    "nodes": [{"id": "t", "type": "trigger"}, {"id": "o", "type": "output"}],
    "connections": [{"fromNodeId": "t", "toNodeId": "o"}],
}


class Wakes:
    """Counts the wake-ups a submit sends."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def _submit(store: Store, wake: Wakes | None = None, **body: Any) -> str:
    request = ExecutionCreate.model_validate({"workflow": SIMPLE, "inputs": {}, **body})
    answer = await executions.submit(
        store, wake or Wakes(), request, default_mode=ExecutionMode.INLINE
    )
    return answer.executionId


async def _fail(store: Store, execution_id: str, node_results: dict[str, Any]) -> None:
    """Run the execution's lifecycle as a worker would, ending `failed`."""
    [claim] = await store.claim("test-owner", 1, 30)
    assert claim.execution_id == execution_id
    assert await store.start(execution_id, RunStart(3, "inline", None))
    assert await store.finish(
        execution_id,
        RunEnd(status=ExecutionStatus.FAILED, error="boom", node_results=json.dumps(node_results)),
    )


async def test_submit_queues_a_pending_execution_and_wakes_the_workers(store: Store) -> None:
    wake = Wakes()
    request = ExecutionCreate(workflow=SIMPLE, inputs={"x": 1}, organizationId="org")
    answer = await executions.submit(store, wake, request, default_mode=ExecutionMode.INLINE)
    assert answer.success is True and answer.status == "pending" and wake.count == 1
    assert answer.workflowId.startswith("inline_") and answer.workflowName is None
    row = await store.get_execution(answer.executionId)
    assert row is not None and row["status"] == "pending" and row["organizationId"] == "org"
    assert json.loads(row["inputs"]) == {"x": 1} and row["requestedMode"] == "inline"


async def test_submit_refuses_unsupported_types_and_missing_workflow(store: Store) -> None:
    bad = ExecutionCreate(workflow={"nodes": [{"id": "x", "type": "opcua"}]})
    with pytest.raises(UnsupportedNodeTypes, match=r"opcua \(node x\)"):
        await executions.submit(store, Wakes(), bad, default_mode=ExecutionMode.INLINE)
    with pytest.raises(GraphValidationError, match="workflowId is required"):
        await executions.submit(
            store, Wakes(), ExecutionCreate(), default_mode=ExecutionMode.INLINE
        )


@pytest.mark.parametrize(("sent", "stored"), [(" Prefect ", "prefect"), ("INLINE", "inline")])
async def test_submit_mode_is_normalised(store: Store, sent: str, stored: str) -> None:
    execution_id = await _submit(store, mode=sent)
    row = await store.get_execution(execution_id)
    assert row is not None and row["requestedMode"] == stored


@pytest.mark.parametrize("mode", [None, "", "  "])
async def test_submit_without_mode_takes_the_default(store: Store, mode: str | None) -> None:
    execution_id = await _submit(store, mode=mode)
    row = await store.get_execution(execution_id)
    assert row is not None and row["requestedMode"] == "inline"


def test_unknown_mode_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(ValidationError, match="'prefect' or 'inline'"):
        ExecutionCreate.model_validate({"mode": "turbo"})


@pytest.mark.parametrize("legacy", ["optimized", "Legacy", " "])
def test_the_original_services_mode_names_mean_the_default(legacy: str) -> None:
    assert ExecutionCreate.model_validate({"mode": legacy}).mode is None


async def test_idempotent_submit_answers_the_first_execution(store: Store) -> None:
    request = ExecutionCreate(workflow=SIMPLE, inputs={"a": 1}, organizationId="org")
    wake = Wakes()

    async def send(body: ExecutionCreate) -> Any:
        return await executions.submit(
            store, wake, body, default_mode=ExecutionMode.INLINE, idempotency_key="k1"
        )

    first, again = await send(request), await send(request)
    assert again.executionId == first.executionId and wake.count == 1
    assert again.message == "Execution already submitted with this Idempotency-Key"
    with pytest.raises(Conflict, match="different request body"):
        await send(request.model_copy(update={"inputs": {"a": 2}}))


async def test_retry_reuses_only_completed_nodes(store: Store) -> None:
    execution_id = await _submit(store, inputs={"n": 5}, organizationId="org", mode="prefect")
    await _fail(
        store,
        execution_id,
        {
            "t": {"success": True, "outputData": {"x": 1}},
            "o": {"success": False, "error": "bad"},
            "s": {"success": True, "skipped": True},
        },
    )
    wake = Wakes()
    answer = await executions.retry(store, wake, execution_id)
    assert answer.retryOf == execution_id and wake.count == 1
    assert answer.message == "Retry started in background" and answer.status == "pending"
    row = await store.get_execution(answer.executionId)
    assert row is not None and row["retryOf"] == execution_id
    assert row["requestedMode"] == "prefect" and json.loads(row["inputs"]) == {"n": 5}
    assert json.loads(row["nodeResults"]) == {
        "t": {"success": True, "outputData": {"x": 1}, "reusedFrom": execution_id}
    }
    scratch = await executions.retry(store, wake, execution_id, from_scratch=True)
    row = await store.get_execution(scratch.executionId)
    assert row is not None and row["nodeResults"] is None


async def test_retry_refuses_unknown_and_unfinished_executions(store: Store) -> None:
    with pytest.raises(ExecutionNotFound):
        await executions.retry(store, Wakes(), "nope")
    execution_id = await _submit(store)
    with pytest.raises(Conflict, match="is pending"):
        await executions.retry(store, Wakes(), execution_id)


def test_reusable_results_rule() -> None:
    assert executions.reusable_results(None, "e") is None
    assert executions.reusable_results("not json", "e") is None
    assert executions.reusable_results('{"a": {"success": false}}', "e") is None
    kept = executions.reusable_results('{"a": {"success": true}, "b": "x"}', "e")
    assert kept is not None and json.loads(kept) == {"a": {"success": True, "reusedFrom": "e"}}


@pytest.mark.parametrize(
    ("settled", "counts", "percentage"),
    [
        (False, (4, 1, 1, 0), 50),
        (False, (3, 1, 0, 0), 33),
        (True, (0, 0, 0, 0), 100),
        (False, (0, 0, 0, 0), 0),
        (True, (2, 2, 1, 0), 100),
        (True, (2, 1, 0, 0), 50),
    ],
)
def test_progress_arithmetic(
    settled: bool, counts: tuple[int, int, int, int], percentage: int
) -> None:
    total, completed, failed, skipped = counts
    progress = executions.progress_of(
        settled=settled, total=total, completed=completed, failed=failed, skipped=skipped
    )
    assert progress.percentage == percentage and progress.totalNodes == total


async def test_status_view_of_a_pending_execution(store: Store) -> None:
    execution_id = await _submit(store, inputs={"k": "v"})
    view = await executions.execution_public(store, execution_id)
    assert view.status == "pending" and view.inputs == {"k": "v"} and view.logs == []
    assert view.progress.totalNodes == 0 and view.progress.percentage == 0
    assert view.attempts == 0 and view.nodeResults is None
    with pytest.raises(ExecutionNotFound):
        await executions.execution_public(store, "nope")


async def test_cancel_then_cancel_again(store: Store) -> None:
    execution_id = await _submit(store)
    first = await executions.cancel(store, execution_id)
    assert first.success is True and first.previousStatus == "pending"
    again = await executions.cancel(store, execution_id)
    assert again.model_dump() == {
        "success": False,
        "executionId": execution_id,
        "message": "Cannot cancel execution with status 'cancelled'",
        "previousStatus": "cancelled",
    }
    view = await executions.execution_public(store, execution_id)
    assert view.status == "cancelled" and view.progress.percentage == 100
    with pytest.raises(ExecutionNotFound):
        await executions.cancel(store, "nope")


async def test_logs_of_an_unknown_execution(store: Store) -> None:
    with pytest.raises(ExecutionNotFound):
        await executions.execution_logs(store, "nope")
    execution_id = await _submit(store)
    logs = await executions.execution_logs(store, execution_id)
    assert logs.executionId == execution_id and logs.logs == []
