"""The PNGs rendered by dataVisualization nodes (`renderImage`), served from IMAGE_DIR."""

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from api import single_runs
from api.deps import API_KEY, CallerDep, SettingsDep, StoreDep
from api.schemas import API_ERRORS, error_responses
from tasks.visualization import image_path

router = APIRouter(
    prefix="/api/executions", tags=["images"], dependencies=[API_KEY], responses=API_ERRORS
)


@router.get(
    "/{execution_id}/images/{node_id}.png",
    response_model=None,
    responses={
        200: {"content": {"image/png": {}}, "description": "The PNG"},
        **error_responses(404),
    },
)
async def get_node_image(
    execution_id: str, node_id: str, settings: SettingsDep, store: StoreDep, caller: CallerDep
) -> Response:
    """The chart a dataVisualization node rendered in this execution (or `POST
    /api/nodes/execute` call); 404 when there is none (and, for an organization key, when the
    execution or call is not of its org)."""
    path = image_path(settings, execution_id, node_id)
    if path is None:
        return JSONResponse(
            {"detail": "Invalid execution or node id: use letters, digits, '_', '-' and '.' only"},
            422,
        )
    if single_runs.is_single_run(execution_id):
        foreign = not single_runs.visible_to(execution_id, caller.organization)
    else:
        foreign = (
            caller.organization is not None
            and await store.get_execution(execution_id, caller.organization) is None
        )
    if foreign or not path.is_file():
        return JSONResponse(
            {"detail": f"No image for node {node_id} in execution {execution_id}"}, 404
        )
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})
