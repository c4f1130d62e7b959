"""`/api/workflows/{id}/versions…`: the Node backend's versions of a workflow, read-only (list,
one with its definition, the diff of two); the diff route comes first so `diff` is never taken
for a version number."""

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from starlette.exceptions import HTTPException

from api import versions
from api.deps import API_KEY, CallerDep, StoreDep
from api.schemas import (
    API_ERRORS,
    VERSION_MAX,
    VersionDetail,
    VersionDiff,
    VersionList,
    error_responses,
)

router = APIRouter(
    prefix="/api/workflows", tags=["versions"], dependencies=[API_KEY], responses=API_ERRORS
)


def _number(side: int | str) -> int | Literal["draft"]:
    if side == "draft":
        return "draft"
    if isinstance(side, int) and 0 <= side <= VERSION_MAX:
        return side
    raise HTTPException(422, f'from/to must be "draft" or a version number 0..{VERSION_MAX}')


@router.get(
    "/{workflow_id}/versions/diff", response_model=VersionDiff, responses=error_responses(404)
)
async def diff_versions(
    workflow_id: str,
    store: StoreDep,
    caller: CallerDep,
    old: Annotated[int | Literal["draft"], Query(alias="from")],
    new: Annotated[int | Literal["draft"], Query(alias="to")],
) -> VersionDiff:
    """Nodes added, removed and changed (type, label or config keys; positions ignored) and
    connections added and removed from `from` to `to` (version numbers or `draft`)."""
    try:
        return await versions.version_diff(
            store, workflow_id, _number(old), _number(new), caller.organization
        )
    except versions.DefinitionTooLarge as exc:
        raise HTTPException(413, str(exc)) from exc


@router.get("/{workflow_id}/versions", response_model=VersionList, responses=error_responses(404))
async def list_versions(
    workflow_id: str,
    store: StoreDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> VersionList:
    """The workflow's versions, newest first, each with `published` and its definition hash."""
    return await versions.version_list(store, workflow_id, limit, caller.organization)


@router.get(
    "/{workflow_id}/versions/{version}",
    response_model=VersionDetail,
    responses=error_responses(404),
)
async def get_version(
    workflow_id: str,
    version: Annotated[int, Path(ge=0, le=VERSION_MAX)],
    store: StoreDep,
    caller: CallerDep,
) -> VersionDetail:
    """One version with its definition `{nodes, connections}` as stored under `workflow`."""
    try:
        return await versions.version_detail(store, workflow_id, version, caller.organization)
    except versions.DefinitionTooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
