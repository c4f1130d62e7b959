"""`GET /metrics`: Prometheus' text format, every process of this machine summed (`metrics`).
It needs a service key when API_KEYS is set, unless METRICS_PUBLIC=true; it is left out of the
OpenAPI document (it is not JSON)."""

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from starlette.exceptions import HTTPException

from api.deps import SettingsDep, StoreDep, authenticate
from database.probes import queued_by_priority
from metrics import CONTENT_TYPE, exposition

logger = logging.getLogger(__name__)
QUEUE_READ_TIMEOUT_S = 2.0

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
    """A store that cannot be read leaves `wos_queue_depth` out of the answer (the rest of the
    scrape still counts; the readiness probe says what is wrong)."""
    depth: dict[str, int] = {}
    try:
        depth = await asyncio.wait_for(queued_by_priority(store), QUEUE_READ_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - the scrape answers without the queue depth
        logger.warning("queue depth unreadable for /metrics", exc_info=True)
    return Response(exposition(depth), media_type=CONTENT_TYPE)
