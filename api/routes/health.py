"""`GET /`: the health check the Node backend polls (never behind the API key)."""

from fastapi import APIRouter

from api.schemas import Health, error_responses
from jsonutil import now_iso

SERVICE = "Workflow Orchestration Service"
VERSION = "1.0.0"

router = APIRouter(tags=["health"], responses=error_responses(500))


@router.get("/", response_model=Health)
async def health() -> Health:
    return Health(service=SERVICE, status="running", version=VERSION, timestamp=now_iso())
