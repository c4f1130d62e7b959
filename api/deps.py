"""The routes' dependencies as `Annotated` aliases (override them in tests with
`app.dependency_overrides`). All are `async def`: FastAPI runs a plain `def` dependency in a
worker thread, one thread round trip per dependency per request on the submit path."""

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from starlette.exceptions import HTTPException

from api.executions import Wakeup
from config import ApiKey, Settings, get_settings, settings_dependency
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


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a service key (or no keys configured), which acts for any organization
    and names it in the body, or an organization key, bound to `organization`."""

    organization: str | None = None
    """The organization key's org; None for a service key."""
    key_id: str | None = None
    """Which API_KEYS entry (hex of its digest's first 8 bytes, never the key); None without
    keys. Submit rate limits count per key (api/rate_limits.py)."""

    @property
    def is_service(self) -> bool:
        return self.organization is None

    def check_body_org(self, organization_id: str | None) -> None:
        """An organization key may not name another org in a body (403)."""
        if self.organization is not None and organization_id not in (None, self.organization):
            raise HTTPException(403, "organizationId differs from the organization of the API key")


SERVICE = Caller()


def _match(presented: str, keys: tuple[ApiKey, ...]) -> ApiKey | None:
    """The entry whose digest equals the presented key's, compared in constant time (every
    entry is compared, whether an earlier one matched or not)."""
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest) and found is None:
            found = key
    return found


async def authenticate(
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Caller:
    """With API_KEYS set, `Authorization: Bearer <key>` or `X-API-Key: <key>` (else 401); the
    caller is the matching entry's (a service key, or an organization key with its org)."""
    auth = authorization or ""
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    if (caller := caller_of(bearer, x_api_key)) is not None:
        return caller
    raise HTTPException(
        401, "Missing or invalid API key (Authorization: Bearer <key> or X-API-Key)"
    )


def caller_of(*presented: str | None) -> Caller | None:
    """The caller of the first presented key that matches an API_KEYS entry (any caller is
    the service when API_KEYS is unset); None when none does."""
    keys = get_settings().api_keys
    if not keys:
        return SERVICE
    for key in presented:
        if key and (entry := _match(key, keys)) is not None:
            return Caller(entry.organization, entry.digest[:8].hex())
    return None


async def authenticate_stream(
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
    api_key: Annotated[str | None, Query(max_length=500)] = None,
) -> Caller:
    """`authenticate` for the event streams, which also take `?api_key=` (browsers cannot set
    headers on EventSource or WebSocket requests; the value is redacted from every log)."""
    auth = authorization or ""
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    if (caller := caller_of(bearer, x_api_key, api_key)) is not None:
        return caller
    raise HTTPException(401, "Missing or invalid API key (Authorization, X-API-Key or api_key)")


StoreDep = Annotated[ApiStore, Depends(get_store)]
WakeupDep = Annotated[Wakeup, Depends(get_wakeup)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
SettingsDep = Annotated[Settings, Depends(settings_dependency)]
StreamCallerDep = Annotated[Caller, Depends(authenticate_stream)]
"""The caller of an event stream (a key may also come as `?api_key=`)."""
CallerDep = Annotated[Caller, Depends(authenticate)]
"""The authenticated caller (FastAPI runs `authenticate` once per request)."""
API_KEY = Depends(authenticate)
"""For `dependencies=[API_KEY]` of every router but the health check (Decision 14)."""
