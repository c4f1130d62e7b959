"""Run ids of `POST /api/nodes/execute`, so one caller's rendered chart is never another's.

Each call gets its own id, `single_node-<org tag>-<32 random hex>`: the tag is a digest of the
organization the call acted for, so the image route can tell whose a chart is without any stored
row (this endpoint writes none), and the random part makes the URL unguessable. Images of these
runs are pruned to the newest SINGLE_RUN_IMAGES_KEPT.
"""

import contextlib
import hashlib
import hmac
import secrets
from pathlib import Path

PREFIX = "single_node-"
SINGLE_RUN_IMAGES_KEPT = 1000
"""Charts of `POST /api/nodes/execute` calls kept in IMAGE_DIR (the oldest go first)."""


def _org_tag(organization: str | None) -> str:
    """16 hex digits naming the org (or none) in a file-name-safe way."""
    text = "none" if organization is None else f"org:{organization}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_run_id(organization: str | None) -> str:
    return f"{PREFIX}{_org_tag(organization)}-{secrets.token_hex(16)}"


def is_single_run(execution_id: str) -> bool:
    return execution_id.startswith(PREFIX)


def visible_to(run_id: str, organization: str | None) -> bool:
    """Whether a caller acting for `organization` may read the run's images: service keys
    (`None`) read any, an organization key only those of runs made for its org."""
    if organization is None:
        return True
    tag = run_id.removeprefix(PREFIX).split("-", 1)[0]
    return hmac.compare_digest(tag, _org_tag(organization))


def prune_images(image_dir: Path, keep: int = SINGLE_RUN_IMAGES_KEPT) -> None:
    """Delete all but the newest `keep` charts of single-node runs (never an execution's)."""
    found: list[tuple[float, Path]] = []
    try:
        for path in image_dir.glob(f"{PREFIX}*.png"):
            with contextlib.suppress(OSError):  # deleted by a concurrent prune
                found.append((path.stat().st_mtime, path))
    except OSError:  # no IMAGE_DIR yet
        return
    found.sort(reverse=True)
    for _, path in found[keep:]:
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete: next time
            path.unlink()
