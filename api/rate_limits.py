"""RATE_LIMITS on submits (`rate_limits.SubmitLimits`): a submit over a limit is answered 429
`{"detail"}` with `Retry-After` (whole seconds) before anything is validated or queued."""

from typing import Annotated

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from api.deps import Caller
from config import Settings
from rate_limits import SubmitLimits, open_storage, parse_limits


def open_submit_limits(settings: Settings) -> SubmitLimits:
    """The API process's submit limits (Redis when REDIS_URL is set, else its memory)."""
    return SubmitLimits(parse_limits(settings.RATE_LIMITS), open_storage(settings.REDIS_URL))


async def get_submit_limits(request: Request) -> SubmitLimits:
    limits: SubmitLimits = request.app.state.submit_limits
    return limits


SubmitLimitsDep = Annotated[SubmitLimits, Depends(get_submit_limits)]


async def check_submit(limits: SubmitLimits, caller: Caller, organization_id: str | None) -> None:
    """Count one submit of `caller` (its key when API_KEYS is set, else the body's organization);
    raises HTTPException 429 with Retry-After when a window is full (while the limits' Redis is
    unreachable, in this process's own windows)."""
    verdict = await limits.check(
        key_id=caller.key_id, organization=caller.organization or organization_id
    )
    if not verdict.allowed:
        who = "API key" if caller.key_id is not None else "organization"
        raise HTTPException(
            429,
            f"Rate limit exceeded for this {who} (RATE_LIMITS); retry in {verdict.retry_after_s} s",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )
