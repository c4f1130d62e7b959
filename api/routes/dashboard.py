"""`/dashboard`: the operator's dashboard, a static page (HTML, JS, CSS shipped in
`api/dashboard/`, no build step, no CDN). The page and its files need no key: the page asks for
one and sends it with every API call it makes."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

STATIC = Path(__file__).resolve().parent.parent / "dashboard"
FILES = {
    "app.js": "text/javascript",
    "execution.js": "text/javascript",
    "graph.js": "text/javascript",
    "style.css": "text/css",
}
"""The only files served besides the page (a fixed list: no path from the request is opened)."""
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # only this origin's scripts, styles and API: nothing from a CDN, no inline script
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/dashboard")
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/dashboard/{name}")
async def dashboard_file(name: str) -> FileResponse:
    media_type = FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"No dashboard file {name!r}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
