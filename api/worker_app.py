"""The worker role's HTTP app (`start_service.py --role worker`): only `GET /health/live`,
`GET /health/ready` and `GET /metrics` on the role's API_PORT, so orchestrators can probe and
scrape a worker machine. Everything else is 404 `{"detail"}`; no execution is submitted here."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.routes import health, metrics
from api_service import _http_error, _unexpected, _validation_error
from config import get_settings
from database import open_store

PROBES = ("/health/live", "/health/ready")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.store = await open_store(get_settings().database_url)
    try:
        yield
    finally:
        await app.state.store.close()


def probes_router() -> APIRouter:
    """The probes of `api.routes.health`, without the Node backend's `GET /`."""
    router = APIRouter()
    router.routes.extend(r for r in health.router.routes if getattr(r, "path", None) in PROBES)
    return router


app = FastAPI(title="Workflow Orchestration Service worker", lifespan=lifespan)
app.include_router(probes_router())
app.include_router(metrics.router)
app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
app.add_exception_handler(Exception, _unexpected)
