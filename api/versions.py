"""Workflow versions (issue 12): which definition an execute runs (`resolve`), the hash every
execution records (`definition_hash`), and the answers of the read-only version endpoints (list,
one, diff) over the Node backend's `workflow_versions`, which the service never writes."""

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import rfc8785

from api.schemas import (
    ConnectionsDiff,
    NodeChange,
    NodesDiff,
    VersionDetail,
    VersionDiff,
    VersionList,
    VersionPublic,
)
from config import get_settings
from database.interfaces import ApiStore, Row
from errors import GraphValidationError, InvalidRequest, WorkflowNotFound
from flows.graph import parse_workflow
from models import EdgeDef, NodeDef, WorkflowDef
from tasks.cpu import run_cpu

Selector = int | Literal["draft", "published"]
"""An execute body's `version`, or a diff side (`draft` or a number)."""
HASH_CACHE_MAX_CHARS = 64 * 1024
"""Stored definitions up to this long keep their hash in an LRU (the submit path reads them
every time); longer ones are hashed in the CPU pool."""
JSON_SAFE_INT = 2**53 - 1


class DefinitionTooLarge(InvalidRequest):
    """The stored definition is larger than MAX_REQUEST_BYTES."""


@dataclass(frozen=True, slots=True)
class Chosen:
    """The definition an execute runs: as stored (JSON text, or an inline body's object)."""

    raw: Any
    version: int | None
    """The version number; None for the draft."""


async def resolve(
    store: ApiStore, workflow: Row, selector: Selector | None, inputs: dict[str, Any] | None
) -> Chosen:
    """The stored workflow's definition `selector` names. Without one, DEFAULT_WORKFLOW_VERSION
    decides: `auto` runs the published version when publishedVersionId names one and
    `inputs._triggerType` is not "manual" (the Node backend's own executor), else the draft.
    Raises WorkflowNotFound for "published" without a published version, or an unknown number."""
    workflow_id = workflow["id"]
    if selector is None:
        manual = (inputs or {}).get("_triggerType") == "manual"
        if get_settings().DEFAULT_WORKFLOW_VERSION == "draft" or manual:
            return Chosen(workflow["data"], None)
        published = await store.get_published_version(workflow_id)
        if published is None:
            return Chosen(workflow["data"], None)
        return Chosen(published["data"], published["version"])
    if selector == "draft":
        return Chosen(workflow["data"], None)
    row = await _version_row(store, workflow_id, selector)
    return Chosen(row["data"], row["version"])


async def _version_row(store: ApiStore, workflow_id: str, selector: int | str) -> Row:
    if selector == "published":
        row = await store.get_published_version(workflow_id)
        if row is None:
            raise WorkflowNotFound(f"Workflow {workflow_id} has no published version")
        return row
    row = await store.get_version(workflow_id, int(selector))
    if row is None:
        raise WorkflowNotFound(f"Workflow {workflow_id} has no version {selector}")
    return row


async def definition_hash(raw: Any) -> str:
    """sha256 hex of the RFC 8785 canonical JSON of `{nodes, connections}` of a definition as
    stored (JSON text or an object; a missing or null array is []), so equal definitions hash
    equal whatever their key order or whitespace. Raises GraphValidationError for JSON RFC 8785
    cannot represent (NaN, numbers beyond a double)."""
    if isinstance(raw, str) and len(raw) <= HASH_CACHE_MAX_CHARS:
        return _hash_of_text(raw)
    if isinstance(raw, dict):
        size = sum(len(v) for v in raw.values() if isinstance(v, list))
        return await run_cpu(_hash, raw, size=size)
    return await run_cpu(_hash, raw)


@functools.lru_cache(maxsize=512)
def _hash_of_text(raw: str) -> str:
    return _hash(raw)


def _hash(raw: Any) -> str:
    return hashlib.sha256(_canonical(_stored_pair(_decoded(raw)))).hexdigest()


def _decoded(raw: Any) -> Any:
    if not isinstance(raw, str | bytes):
        return raw
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise GraphValidationError(f"Workflow data is not valid JSON: {exc}") from None


def _stored_pair(value: Any) -> dict[str, Any]:
    """`{nodes, connections}` of decoded workflow data (contract §3.1: a missing array is [])."""
    if not isinstance(value, dict):
        raise GraphValidationError("Workflow data must be a JSON object with nodes and connections")
    return {"nodes": value.get("nodes") or [], "connections": value.get("connections") or []}


def _canonical(value: Any) -> bytes:
    try:
        try:
            return rfc8785.dumps(value)
        except rfc8785.IntegerDomainError:
            # The Node backend reads every JSON number as a double: so does the hash.
            return rfc8785.dumps(_doubles(value))
    except (rfc8785.CanonicalizationError, OverflowError, RecursionError) as exc:
        raise GraphValidationError(f"Workflow data cannot be hashed as JSON: {exc}") from None


def _doubles(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _doubles(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_doubles(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > JSON_SAFE_INT:
        return float(value)
    return value


def _bounded(raw: Any) -> dict[str, Any]:
    """A stored definition's `{nodes, connections}` within the submit limits: larger than
    MAX_REQUEST_BYTES is DefinitionTooLarge (413), more nodes or connections than allowed, or
    not JSON, GraphValidationError (422)."""
    settings = get_settings()
    if isinstance(raw, str) and len(raw) > settings.MAX_REQUEST_BYTES:
        raise DefinitionTooLarge(
            f"Workflow definition of {len(raw):,} characters is larger than "
            f"{settings.MAX_REQUEST_BYTES:,} (MAX_REQUEST_BYTES)"
        )
    pair = _stored_pair(_decoded(raw))
    for key, limit, name in (
        ("nodes", settings.MAX_WORKFLOW_NODES, "MAX_WORKFLOW_NODES"),
        ("connections", settings.MAX_WORKFLOW_CONNECTIONS, "MAX_WORKFLOW_CONNECTIONS"),
    ):
        if not isinstance(pair[key], list):
            raise GraphValidationError(f"Workflow data: {key} must be a list")
        if len(pair[key]) > limit:
            raise GraphValidationError(
                f"Workflow has {len(pair[key]):,} {key}; the limit is {limit:,} ({name})"
            )
    try:  # what the answers carry must be JSON text (no lone surrogates, NaN or Infinity)
        json.dumps(pair, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise GraphValidationError(f"Workflow data cannot be answered as JSON: {exc}") from None
    return pair


def _public(row: Row, hash_: str | None) -> VersionPublic:
    return VersionPublic(
        version=row["version"],
        name=row["name"],
        description=row["description"],
        createdAt=row["createdAt"],
        createdByName=row["createdByName"],
        published=bool(row["published"]),
        hash=hash_,
    )


def _list_hash(raw: Any) -> str | None:
    """The hash of a listed version; None when its definition is over the submit limits."""
    try:
        pair = _bounded(raw)
    except (DefinitionTooLarge, GraphValidationError):
        return None
    if isinstance(raw, str) and len(raw) <= HASH_CACHE_MAX_CHARS:
        return _hash_of_text(raw)
    return hashlib.sha256(_canonical(pair)).hexdigest()


async def _workflow(store: ApiStore, workflow_id: str, organization: str | None) -> Row:
    workflow = await store.get_workflow(workflow_id, organization)
    if workflow is None:
        raise WorkflowNotFound(f"Workflow {workflow_id} not found")
    return workflow


async def version_list(
    store: ApiStore, workflow_id: str, limit: int, organization: str | None = None
) -> VersionList:
    """The workflow's newest `limit` versions (of an organization key's org only)."""
    await _workflow(store, workflow_id, organization)
    rows = await store.list_versions(workflow_id, limit)
    return VersionList(versions=[_public(r, await _listed_hash(store, r)) for r in rows])


async def _listed_hash(store: ApiStore, row: Row) -> str | None:
    """A listed version's hash, its definition read on its own (one in memory at a time); None
    when over the submit limits (one over MAX_REQUEST_BYTES is not read at all)."""
    if row["size"] is None or row["size"] > get_settings().MAX_REQUEST_BYTES:
        return None
    full = await store.get_version(row["workflowId"], row["version"])
    if full is None or full["id"] != row["id"]:  # deleted meanwhile, or a duplicate number
        return None
    return await run_cpu(_list_hash, full["data"], size=_size(full["data"]))


async def version_detail(
    store: ApiStore, workflow_id: str, version: int, organization: str | None = None
) -> VersionDetail:
    """One version with its definition `{nodes, connections}` as stored."""
    await _workflow(store, workflow_id, organization)
    row = await _version_row(store, workflow_id, version)
    pair, hash_ = await run_cpu(_detail, row["data"], size=_size(row["data"]))
    return VersionDetail(**_public(row, hash_).model_dump(), workflow=pair)


def _detail(raw: Any) -> tuple[dict[str, Any], str]:
    pair = _bounded(raw)
    return pair, hashlib.sha256(_canonical(pair)).hexdigest()


async def version_diff(
    store: ApiStore,
    workflow_id: str,
    old: int | Literal["draft"],
    new: int | Literal["draft"],
    organization: str | None = None,
) -> VersionDiff:
    """What changed from `old` to `new` (version numbers or the draft)."""
    workflow = await _workflow(store, workflow_id, organization)
    raws = [
        workflow["data"]
        if side == "draft"
        else (await _version_row(store, workflow_id, side))["data"]
        for side in (old, new)
    ]
    return await run_cpu(_diff, *raws, size=_size(*raws))


def _size(*raws: Any) -> int | None:
    """`run_cpu`'s size of definitions: 0 (on the loop) when short, None (the pool) otherwise."""
    chars = sum(len(r) if isinstance(r, str) else HASH_CACHE_MAX_CHARS + 1 for r in raws)
    return 0 if chars <= HASH_CACHE_MAX_CHARS else None


def _parsed(raw: Any) -> WorkflowDef:
    return parse_workflow(_bounded(raw))


def _diff(old_raw: Any, new_raw: Any) -> VersionDiff:
    old, new = _parsed(old_raw), _parsed(new_raw)
    before = {n.id: n for n in old.nodes}
    after = {n.id: n for n in new.nodes}
    changed = []
    for node in new.nodes:
        if node.id in before and (keys := changed_keys(before[node.id], node)):
            changed.append(NodeChange(id=node.id, keys=keys))
    added, removed = _edge_changes(old.connections, new.connections)
    return VersionDiff(
        nodes=NodesDiff(
            added=[n.id for n in new.nodes if n.id not in before],
            removed=[n.id for n in old.nodes if n.id not in after],
            changed=changed,
        ),
        connections=ConnectionsDiff(added=added, removed=removed),
    )


def changed_keys(old: NodeDef, new: NodeDef) -> list[str]:
    """The config keys whose values differ (JSON equality: `true` is not `1`), then `type` and
    `label` when those differ; positions and other editor fields are not compared."""
    a, b = old.config or {}, new.config or {}
    try:
        keys = sorted(
            k for k in a.keys() | b.keys() if k not in a or k not in b or not same(a[k], b[k])
        )
    except RecursionError:
        raise GraphValidationError("Workflow data is nested too deeply to compare") from None
    keys += [k for k in ("type", "label") if getattr(old, k) != getattr(new, k)]
    return keys


def same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), but a boolean is never a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(b, dict | list):
        return False
    return bool(a == b)


def _edge_key(edge: EdgeDef) -> tuple[str, str, str | None, str | None]:
    return edge.fromNodeId, edge.toNodeId, edge.branch, edge.inputPort


def _edge_changes(
    old: list[EdgeDef], new: list[EdgeDef]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(added, removed) connections, compared by endpoints, branch (`outputType`, else
    `fromPort`) and input port, not by id (the editor gives a redrawn edge a new one)."""
    return _missing(new, Counter(map(_edge_key, old))), _missing(old, Counter(map(_edge_key, new)))


def _missing(edges: Iterable[EdgeDef], other: Counter[tuple[Any, ...]]) -> list[dict[str, Any]]:
    left = other.copy()
    missing = []
    for edge in edges:
        key = _edge_key(edge)
        if left[key] > 0:
            left[key] -= 1
        else:
            missing.append(edge.model_dump(exclude_none=True))
    return missing
