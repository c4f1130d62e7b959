"""The routes' dependencies as `Annotated` aliases (override them in tests with
`app.dependency_overrides`). All are `async def`: FastAPI runs a plain `def` dependency in a
worker thread, one thread round trip per dependency per request on the submit path."""

from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.exceptions import HTTPException

from api.executions import Wakeup
from config import Settings, get_settings, settings_dependency
from database.interfaces import ApiStore
from tasks.context import Resources


async def get_store(request: Request) -> ApiStore:
    """The store the app's lifespan opened."""
    store: ApiStore = request.app.state.store
    return store


async def get_wakeup(request: Request) -> Wakeup:
    wake: Wakeup = request.app.state.wake_workers
    return wake


async def get_resources(request: Request) -> Resources:
    """The clients shared by single-node runs (`POST /api/nodes/execute`)."""
    resources: Resources = request.app.state.resources
    return resources


async def require_api_key(
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    """With API_KEYS set, `Authorization: Bearer <key>` or `X-API-Key: <key>` (else 401)."""
    keys = get_settings().api_keys
    if not keys:
        return
    auth = authorization or ""
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    if bearer not in keys and x_api_key not in keys:
        raise HTTPException(
            401, "Missing or invalid API key (Authorization: Bearer <key> or X-API-Key)"
        )


StoreDep = Annotated[ApiStore, Depends(get_store)]
WakeupDep = Annotated[Wakeup, Depends(get_wakeup)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
SettingsDep = Annotated[Settings, Depends(settings_dependency)]
API_KEY = Depends(require_api_key)
"""For `dependencies=[API_KEY]` of every router but the health check (Decision 14)."""
