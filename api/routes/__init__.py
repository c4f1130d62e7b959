"""One router per resource; `api_service` includes them all (`ROUTERS`)."""

from fastapi import APIRouter

from api.routes import (
    dashboard,
    events,
    executions,
    health,
    images,
    metrics,
    nodes,
    versions,
    workflows,
)

ROUTERS: list[APIRouter] = [
    health.router,
    workflows.router,
    versions.router,
    executions.router,
    nodes.router,
    images.router,
    dashboard.router,
    events.router,
    metrics.router,
]
