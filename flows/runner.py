"""Runs one claimed execution: builds the plan, picks the mode (Prefect, or inline as fallback),
and drives the engine from `running` to its terminal status."""

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpx

from config import Settings
from database.interfaces import Checkpoint, Claim, LogRow, RunEnd, RunStart, WorkerStore
from errors import GraphValidationError
from flows.engine import Job, RunResult, execute
from flows.graph import Plan, build_plan, parse_workflow
from jsonutil import load_json_column
from logformat import bind_log_context, log_context
from metrics import execution_run, prefect_fallback
from states import ExecutionMode, ExecutionStatus, NodeStatus, Outcome
from tasks.context import Resources
from tasks.redaction import redact_url
from tasks.registry import rules_of
from tasks.run_node import run_with_retries

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0


@dataclass
class PrefectProbe:
    """Cached health check of the Prefect API, so a dead server costs one probe, not one per run."""

    api_url: str | None
    ttl_s: float = 5.0
    _checked_at: float = field(default=-1e9)
    _result: tuple[bool, str] = field(default=(False, "not checked"))

    async def available(self) -> tuple[bool, str]:
        if not self.api_url:
            return False, "PREFECT_API_URL is not set"
        if time.monotonic() - self._checked_at < self.ttl_s:
            return self._result
        try:
            # generous: a busy but alive Prefect server is used rather than bypassed
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
                response = await client.get(self.api_url.rstrip("/") + "/health")
            ok = response.status_code == 200
            self._result = (ok, "ok" if ok else f"health check answered {response.status_code}")
        except httpx.HTTPError as exc:
            self._result = (False, f"{type(exc).__name__}: {exc}")
        self._checked_at = time.monotonic()
        return self._result


def _fallback(execution_id: str, cause: str) -> str:
    """Log (and return, for `modeReason`) why an execution runs inline instead of in Prefect."""
    reason = f"{cause}; ran inline"
    prefect_fallback()
    logger.warning(
        "execution %s: %s",
        execution_id,
        reason,
        extra={"execution_id": execution_id, "action": "fallback"},
    )
    return reason


def _json_object(text: str | None) -> dict[str, Any]:
    """A stored JSON object column (inputs, nodeResults); anything else reads as `{}`."""
    value = load_json_column(text)
    return value if isinstance(value, dict) else {}


def plan_of(definition: str, execution_id: str) -> Plan:
    """The execution's plan, with the node types' declared graph rules. Connections without
    existing endpoints are dropped (contract §5.2 step 1) and the execution's log says so."""
    plan = build_plan(parse_workflow(definition), rules_of)
    if plan.dropped_connections:
        logger.warning(
            "execution %s: %d connection(s) without existing endpoints dropped",
            execution_id,
            plan.dropped_connections,
            extra={"execution_id": execution_id, "action": "drop_connections"},
        )
    return plan


@dataclass(frozen=True, slots=True)
class Fenced:
    """The engine's `Recorder` for one run: every checkpoint fenced by the worker's lease."""

    store: WorkerStore
    owner: str | None

    async def checkpoint(
        self, execution_id: str, checkpoint: Checkpoint, owner: str | None = None
    ) -> bool:
        return await self.store.checkpoint(execution_id, checkpoint, owner or self.owner)


@dataclass
class Runner:
    """Shared by every execution a worker process runs. A run's writes are fenced by its
    worker's lease (`owner`): one refused means another worker took the run over, and the run
    stops at once without writing anything more (interrupted)."""

    settings: Settings
    store: WorkerStore
    resources: Resources
    probe: PrefectProbe
    drain: asyncio.Event = field(default_factory=asyncio.Event)
    drains_on_sigterm: bool = False
    """The process drains on SIGTERM through its event loop (a worker process): Prefect's own
    SIGTERM handler is kept out of its flow runs (`flows.workflow_flow.keep_worker_sigterm`)."""

    async def run(self, claim: Claim, cancel: asyncio.Event) -> Outcome:
        """Run the claim to a terminal status; returns it (interrupted when drained, or when
        `claim.owner` lost the lease). Every log line of the run carries the execution's ids;
        the metrics count it."""
        eid, org = claim.execution_id, claim.organization_id
        with (
            log_context(executionId=eid, organizationId=org),
            execution_run(claim.requested_mode, claim.attempts > 1) as track,
        ):
            track.outcome = await self._run(claim, cancel, claim.owner)
            logger.info("execution %s %s (ran %s)", eid, track.outcome, track.mode)
        return track.outcome

    async def _run(self, claim: Claim, cancel: asyncio.Event, owner: str | None) -> Outcome:
        eid = claim.execution_id
        try:
            plan = plan_of(claim.definition, eid)
        except GraphValidationError as exc:
            resumed = claim.attempts > 1
            start = RunStart(0, ExecutionMode.INLINE, None, resumed=resumed)
            if not await self.store.start(eid, start, owner) and await self._lost(eid, owner):
                return Outcome.INTERRUPTED
            end = RunEnd(
                status=ExecutionStatus.FAILED, error=redact_url(str(exc)), node_results="{}"
            )
            return await self._end(eid, end, owner)
        if claim.crashed_node and claim.crash_resumes > self.settings.MAX_RESUME_ATTEMPTS:
            return await self._abandon(claim, plan, claim.crashed_node, owner)
        previous = _json_object(claim.node_results)
        job = Job(
            eid,
            claim.workflow_id,
            claim.organization_id,
            _json_object(claim.inputs),
            plan,
            self.resources,
            {k: v for k, v in previous.items() if k in plan.nodes},
        )
        mode, reason = claim.requested_mode, None
        if mode == ExecutionMode.PREFECT:
            ok, why = await self.probe.available()
            if not ok:
                mode = ExecutionMode.INLINE
                reason = _fallback(eid, f"Prefect API unreachable ({why})")
        started = False

        async def body(flow_run_id: str | None) -> Outcome:
            nonlocal started
            started = True
            bind_log_context(flowRunId=flow_run_id)
            logger.info(
                "execution %s started (%s%s)",
                eid,
                mode,
                f", flow run {flow_run_id}" if flow_run_id else "",
            )
            start = RunStart(len(plan.nodes), mode, reason, flow_run_id, claim.attempts > 1)
            if not await self.store.start(eid, start, owner):
                return Outcome.INTERRUPTED if await self._lost(eid, owner) else Outcome.CANCELLED
            run_node = run_with_retries
            if mode == ExecutionMode.PREFECT:
                from flows.workflow_flow import run_node_as_task

                run_node = run_node_as_task
            result = await execute(job, Fenced(self.store, owner), run_node, cancel, self.drain)
            return await self._settle(eid, result, owner)

        if mode != ExecutionMode.PREFECT:
            return await self._guarded(eid, body(None), owner)
        from flows.workflow_flow import keep_worker_sigterm, mark_crashed, run_as_flow

        if claim.attempts > 1 and claim.flow_run_id:
            await mark_crashed(claim.flow_run_id, eid)

        status: list[Outcome] = []

        async def recording_body(flow_run_id: str | None) -> Outcome:
            if self.drains_on_sigterm:
                keep_worker_sigterm()
            status.append(await self._guarded(eid, body(flow_run_id), owner))
            return status[-1]

        result_dir = self.settings.prefect_home / "results"
        try:
            await run_as_flow(
                eid,
                claim.workflow_id,
                claim.workflow_name or claim.workflow_id or "workflow",
                claim.attempts,
                recording_body,
                result_dir,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Prefect itself failed around our body
            if not started:
                cause = f"Prefect flow could not start ({type(exc).__name__}: {exc})"
                mode, reason = ExecutionMode.INLINE, _fallback(eid, cause)
                return await self._guarded(eid, body(None), owner)
            logger.warning(
                "execution %s: Prefect failed around the run: %s",
                eid,
                exc,
                extra={"execution_id": eid},
            )
        return status[-1] if status else Outcome.INTERRUPTED

    async def _abandon(self, claim: Claim, plan: Plan, nid: str, owner: str | None) -> Outcome:
        """No poison executions: a run that killed or stalled its worker with a node in flight
        more than MAX_RESUME_ATTEMPTS times fails instead of freezing the next worker too; the
        node in flight (`nid`) gets the error as its final log row."""
        eid = claim.execution_id
        error = redact_url(
            f"Execution abandoned after {claim.crash_resumes} worker crashes at node {nid}"
        )
        logger.error(
            "execution %s: %s", eid, error, extra={"execution_id": eid, "action": "abandon"}
        )
        if (node := plan.nodes.get(nid)) is not None:
            row = LogRow(nid, node.type, node.display_label, NodeStatus.ERROR, error=error)
            checkpoint = Checkpoint([row], None, None, {})
            if not await self.store.checkpoint(eid, checkpoint, owner) and await self._lost(
                eid, owner
            ):
                return Outcome.INTERRUPTED
        end = RunEnd(status=ExecutionStatus.FAILED, error=error, node_results=None)
        return await self._end(eid, end, owner)

    async def _settle(self, eid: str, result: RunResult, owner: str | None) -> Outcome:
        """Record how the walk ended; returns the run's outcome (interrupted when the lease
        was lost: a refused checkpoint ends the walk like a cancel)."""
        if result.status == Outcome.INTERRUPTED:
            return result.status  # the worker stops renewing its lease; a later claim resumes it
        if result.status == Outcome.CANCELLED:
            return Outcome.INTERRUPTED if await self._lost(eid, owner) else result.status
        end = RunEnd(
            status=ExecutionStatus(result.status),
            error=result.error,
            node_results=result.node_results,
        )
        return await self._end(eid, end, owner)

    async def _end(self, eid: str, end: RunEnd, owner: str | None) -> Outcome:
        """The terminal write; interrupted when `owner` lost the lease before it."""
        if not await self.store.finish(eid, end, owner) and await self._lost(eid, owner):
            return Outcome.INTERRUPTED
        return Outcome(end.status)

    async def _lost(self, eid: str, owner: str | None) -> bool:
        """After a refused write (or a cancel): take the run off the queue, unless `owner` lost
        the lease; True then (logged), and nothing more of the run is written."""
        if await self.store.mark_done(eid, owner) or owner is None:
            return False
        logger.warning(
            "execution %s: lease lost to another worker; write refused, run stopped",
            eid,
            extra={"execution_id": eid, "action": "fenced_write"},
        )
        return True

    async def _guarded(self, eid: str, body: Awaitable[Outcome], owner: str | None) -> Outcome:
        """Any unexpected error fails the execution with its message (rule 12)."""
        try:
            return await body
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the run's last line of defence
            logger.exception("execution %s crashed", eid, extra={"execution_id": eid})
            end = RunEnd(
                status=ExecutionStatus.FAILED,
                error=redact_url(f"{type(exc).__name__}: {exc}"),
                node_results=None,
            )
            return await self._end(eid, end, owner)
