"""`GET /metrics`: Prometheus' text format, every process of this machine summed (`metrics`).
It needs a service key when API_KEYS is set, unless METRICS_PUBLIC=true; it is left out of the
OpenAPI document (it is not JSON)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from starlette.exceptions import HTTPException

from api.deps import SettingsDep, StoreDep, authenticate
from database.probes import queued_count
from metrics import CONTENT_TYPE, PRIORITIES, exposition

router = APIRouter(tags=["health"])


async def metrics_reader(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    """A service key (or no keys configured, or METRICS_PUBLIC): organization keys are refused,
    the metrics cover every organization."""
    if settings.METRICS_PUBLIC:
        return
    caller = await authenticate(authorization, x_api_key)
    if not caller.is_service:
        raise HTTPException(403, "GET /metrics needs a service key, not an organization key")


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_reader)])
async def metrics(store: StoreDep) -> Response:
    depth = {priority: 0 for priority in PRIORITIES}
    depth["normal"] = await queued_count(store)
    return Response(exposition(depth), media_type=CONTENT_TYPE)
