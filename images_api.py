"""The PNGs rendered by dataVisualization nodes (`renderImage`), served from IMAGE_DIR."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, Response

from config import Settings, settings_dependency
from tasks.visualization import image_path

router = APIRouter(tags=["images"])


@router.get(
    "/api/executions/{execution_id}/images/{node_id}.png",
    response_model=None,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_node_image(
    execution_id: str,
    node_id: str,
    settings: Annotated[Settings, Depends(settings_dependency)],
) -> Response:
    """The chart a dataVisualization node rendered in this execution; 404 when there is none."""
    path = image_path(settings, execution_id, node_id)
    if path is None:
        return JSONResponse(
            {"detail": "Invalid execution or node id: use letters, digits, '_', '-' and '.' only"},
            422,
        )
    if not path.is_file():
        return JSONResponse(
            {"detail": f"No image for node {node_id} in execution {execution_id}"}, 404
        )
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})
