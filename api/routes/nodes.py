"""`POST /api/nodes/execute`: run one node synchronously (debug); nothing is stored but the
chart a dataVisualization node renders, under the call's own run id (`api.single_runs`)."""

import asyncio
import json
from pathlib import Path

from fastapi import APIRouter

from api import single_runs
from api.deps import API_KEY, CallerDep, ResourcesDep, StoreDep
from api.json_body import JsonBodyRoute
from api.schemas import (
    API_ERRORS,
    NodeExecute,
    NodeRunFailed,
    NodeRunResult,
    NodeRunSucceeded,
    error_responses,
)
from jsonutil import dump_json
from models import NodeDef
from tasks.context import Resources, RunContext
from tasks.run_node import check_node_limits, run_with_retries

router = APIRouter(
    prefix="/api/nodes",
    tags=["nodes"],
    dependencies=[API_KEY],
    responses=API_ERRORS,
    route_class=JsonBodyRoute,
)


@router.post("/execute", response_model=NodeRunResult, responses=error_responses(400))
async def execute_node(
    body: NodeExecute, resources: ResourcesDep, store: StoreDep, caller: CallerDep
) -> NodeRunResult:
    """A node that fails (unknown type included) is answered 200 `success: false`; a config over
    the per-node limits (retries, retryDelayMs, timeoutMs) is refused with 422. It acts for an
    organization key's org; with a service key, for the org of its stored `workflowId` (else
    for none)."""
    check_node_limits(body.node.get("config"))
    organization = caller.organization
    if organization is None and body.workflowId:
        workflow = await store.get_workflow(body.workflowId)
        organization = None if workflow is None else workflow["organizationId"]
    return await run_single_node(body, resources, organization)


async def run_single_node(
    body: NodeExecute, resources: Resources, organization: str | None = None
) -> NodeRunResult:
    """Run the node with its retries and timeout, outside any execution, for `organization`,
    under a run id of its own (a rendered chart's URL names it; only that org may read it)."""
    try:
        node = NodeDef.model_validate({**body.node, "id": body.nodeId, "type": body.nodeType})
        ctx = RunContext(
            execution_id=single_runs.new_run_id(organization),
            workflow_id=body.workflowId,
            organization_id=organization,
            inputs={},
            node_id=node.id,
            node_type=node.type,
            node_label=node.display_label,
            resources=resources,
        )
        output = await run_with_retries(node, body.inputData, ctx)
        if isinstance(output, dict) and output.get("image"):
            image_dir = Path(resources.settings.IMAGE_DIR).expanduser().resolve()
            await asyncio.to_thread(single_runs.prune_images, image_dir)
    except Exception as exc:  # noqa: BLE001 - answered as success:false, like the original
        return NodeRunFailed(
            success=False,
            nodeId=body.nodeId,
            nodeType=body.nodeType,
            error=str(exc),
            message="Node execution failed",
        )
    return NodeRunSucceeded(
        success=True,
        nodeId=body.nodeId,
        nodeType=body.nodeType,
        output=json.loads(dump_json(output)),
        message="Node executed successfully",
    )
