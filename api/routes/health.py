"""`GET /`: the health check the Node backend polls; `GET /health/live` and `/health/ready`:
the orchestrators' probes. None of them needs a key."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import SettingsDep, StoreDep
from api.probes import Liveness, Readiness, readiness
from api.schemas import ErrorDetail, Health, error_responses
from jsonutil import now_iso

SERVICE = "Workflow Orchestration Service"
VERSION = "1.0.0"

router = APIRouter(tags=["health"], responses=error_responses(500))


@router.get("/", response_model=Health)
async def health() -> Health:
    return Health(service=SERVICE, status="running", version=VERSION, timestamp=now_iso())


@router.get("/health/live", response_model=Liveness)
async def live() -> Liveness:
    """The process answers (its event loop runs)."""
    return Liveness(status="ok")


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={
        503: {
            "model": ErrorDetail,
            "description": "Not ready: `detail` names the failing checks; `checks` has them all",
        }
    },
)
async def ready(store: StoreDep, settings: SettingsDep) -> Readiness | JSONResponse:
    """Store reachable, schema ready, Prefect reachable (or the inline fallback), a worker
    heartbeat seen recently; 503 with the failing checks' reasons otherwise."""
    answer = await readiness(store, settings)
    if answer.detail is not None:
        return JSONResponse(answer.model_dump(), 503)
    return answer
