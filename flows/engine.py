"""Walks one execution's graph: ready-queue scheduling, skip rules, checkpoints, cancellation.

Plain asyncio; it knows nothing of Prefect nor of any database. Nodes run through an injected
`run_node` callable (the Prefect task wrapper, the inline retry loop, or a test double). Every
node's outcome is committed through `Recorder.checkpoint` before any child starts and before the
final status. No node task outlives `execute`: whatever ends the walk cancels and awaits them.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from database.interfaces import Checkpoint, LogRow, Recorder
from errors import NodeError
from flows.graph import (
    FanInLimits,
    Plan,
    assemble_input,
    edge_payload,
    is_failed,
    is_skipped,
)
from jsonutil import dump_json
from logformat import log_context
from metrics import node_finished
from models import EdgeDef, NodeDef
from states import NodeStatus, Outcome
from tasks.context import Resources, RunContext
from tasks.cpu import encode_json
from tasks.limits import SAMPLE, estimate_bytes
from tasks.redaction import redact_url

logger = logging.getLogger(__name__)

Envelope = dict[str, Any]
RunNode = Callable[[NodeDef, Any, RunContext], Awaitable[Envelope]]
CANCELLED_TEXT = "Execution cancelled by user"
LOG_PAYLOAD_MAX_BYTES = 256 * 1024


@dataclass
class Job:
    """One execution as the engine sees it; `previous` holds results adopted without running."""

    execution_id: str
    workflow_id: str | None
    organization_id: str | None
    inputs: dict[str, Any]
    plan: Plan
    resources: Resources
    previous: dict[str, Envelope] = field(default_factory=dict)


@dataclass
class RunResult:
    """How a walk ended: `status`, the error text of a failed/cancelled run, and every settled
    node's result (as a map, and encoded as the `nodeResults` column)."""

    status: Outcome
    error: str | None
    node_results: str
    results: dict[str, Envelope]


def _log_json(value: Any, encoded: str | None = None) -> str | None:
    """JSON for a log column, capped: the status endpoint ships log rows on every poll."""
    if value is None:
        return None
    text = encoded if encoded is not None else dump_json(value)
    if len(text) <= LOG_PAYLOAD_MAX_BYTES:
        return redact_url(text)
    preview: Any = None
    if isinstance(value, list):
        preview = value[:10]
    elif isinstance(value, dict) and isinstance(value.get("outputData"), list):
        preview = {k: v for k, v in value.items() if not isinstance(v, list | dict)}
        preview["outputData"] = value["outputData"][:10]
    return redact_url(
        dump_json({"truncated": True, "originalBytes": len(text), "preview": preview})
    )


async def _log_input(value: Any) -> str | None:
    """`_log_json` of a node's input, encoded off the loop's critical path (`encode_json`)."""
    return None if value is None else _log_json(value, await encode_json(value))


def error_result(message: str, attempts: int | None = None) -> Envelope:
    result: Envelope = {"success": False, "error": message, "message": message}
    if attempts is not None:
        result["attempts"] = attempts
    return result


class _Run:
    """Mutable state of one walk; `execute` below is the entry point."""

    def __init__(
        self,
        job: Job,
        recorder: Recorder,
        run_node: RunNode,
        cancel: asyncio.Event,
        drain: asyncio.Event,
    ) -> None:
        self.job, self.recorder, self.run_node = job, recorder, run_node
        self.cancel, self.drain = cancel, drain
        plan = job.plan
        self.results: dict[str, Envelope] = {}
        self.encoded: dict[str, tuple[str, str]] = {}
        self.remaining = {nid: len(plan.incoming[nid]) for nid in plan.nodes}
        self.active: dict[str, list[tuple[EdgeDef, Any]]] = {nid: [] for nid in plan.nodes}
        # each edge's place among its target's incoming edges (the connections array's order)
        self.position = {id(e): i for edges in plan.incoming.values() for i, e in enumerate(edges)}
        self.ready = deque(nid for nid in plan.order if self.remaining[nid] == 0)
        self.rows: list[LogRow] = []
        self.current: str | None = None
        self.dirty = False
        self.in_flight: dict[asyncio.Task[Envelope], tuple[str, str | None, float]] = {}
        resources: Resources | None = job.resources  # unit tests may walk without any
        self.fan_in_limits = None
        if resources is not None:
            settings = resources.settings
            self.fan_in_limits = FanInLimits(
                settings.MAX_NODE_OUTPUT_ROWS,
                settings.MAX_NODE_OUTPUT_BYTES,
                estimate_bytes,
                SAMPLE,
            )

    def _row(self, nid: str, status: NodeStatus, **kw: Any) -> LogRow:
        node = self.job.plan.nodes[nid]
        return LogRow(nid, node.type, node.display_label, status, **kw)

    def counts(self) -> dict[str, int]:
        failed = skipped = 0
        for r in self.results.values():
            if is_failed(r):
                failed += 1
            elif is_skipped(r):
                skipped += 1
        done = len(self.results) - failed - skipped
        return {"completedNodes": done, "failedNodes": failed, "skippedNodes": skipped}

    def node_results_json(self) -> str:
        """`encoded` holds each node's `"id":` and `{result}`, encoded once when it settled;
        joined in one copy (a big result is copied once per checkpoint, not three times)."""
        parts: list[str] = []
        for key, encoded in self.encoded.values():
            parts += (",", key, encoded)
        parts[:1] = ["{"]  # in place of the first comma
        return "".join([*parts, "}"])

    def encode(self, nid: str, encoded: str, redacted: bool = False) -> None:
        """Kept for the `nodeResults` column, so with URL secrets redacted (the result itself,
        handed to the children, is not changed); `redacted`: `encoded` already is."""
        key = redact_url(f"{dump_json(nid)}:")
        self.encoded[nid] = (key, encoded if redacted else redact_url(encoded))

    def settle(
        self, nid: str, result: Envelope, encoded: str | None = None, redacted: bool = False
    ) -> None:
        plan = self.job.plan
        self.results[nid] = result
        self.encode(nid, encoded or dump_json(result), redacted)
        self.dirty = True
        for edge in plan.outgoing[nid]:
            live, payload = edge_payload(edge, plan.rules[nid], result)
            if live:
                self.active[edge.toNodeId].append((edge, payload))
            self.remaining[edge.toNodeId] -= 1
            if self.remaining[edge.toNodeId] == 0:
                self.ready.append(edge.toNodeId)

    async def flush(self) -> bool:
        """Commit pending rows and results; False when the execution was cancelled meanwhile."""
        if not self.rows and not self.dirty:
            return True
        rows, self.rows = self.rows, []
        live = await self.recorder.checkpoint(
            self.job.execution_id,
            Checkpoint(
                rows,
                current_node_id=self.current,
                node_results=self.node_results_json() if self.dirty else None,
                counts=self.counts() if self.dirty else {},
            ),
        )
        self.dirty = False
        return live

    async def take_ready(self) -> list[tuple[str, Any]]:
        """Settle skipped/adopted nodes, return the nodes to start with their inputs."""
        job, to_start = self.job, []
        while self.ready:
            nid = self.ready.popleft()
            node = job.plan.nodes[nid]
            if nid in job.previous:
                encoded = await encode_json(job.previous[nid], redact_url)
                self.settle(nid, job.previous[nid], encoded, redacted=True)
                continue
            # fan-in merges follow the connections array, not the order parents finished in
            active = sorted(self.active[nid], key=lambda ep: self.position[id(ep[0])])
            try:
                run, data, reason = assemble_input(
                    node,
                    job.plan.rules[nid],
                    active,
                    bool(job.plan.incoming[nid]),
                    job.inputs,
                    self.fan_in_limits,
                )
            except NodeError as exc:  # a fan-in over MAX_NODE_OUTPUT_ROWS/BYTES fails the node
                self.rows.append(self._row(nid, NodeStatus.ERROR, error=redact_url(str(exc))))
                self.settle(nid, error_result(str(exc)))
                continue
            if not run:
                marker = {"success": True, "skipped": True, "message": reason}
                encoded = dump_json(marker)
                self.rows.append(self._row(nid, NodeStatus.SKIPPED, output_json=encoded))
                self.settle(nid, marker, encoded)
                continue
            to_start.append((nid, data))
        return to_start

    def start(self, nid: str, data: Any, input_json: str | None) -> None:
        job = self.job
        node = job.plan.nodes[nid]
        ctx = RunContext(
            execution_id=job.execution_id,
            workflow_id=job.workflow_id,
            organization_id=job.organization_id,
            inputs=job.inputs,
            node_id=nid,
            node_type=node.type,
            node_label=node.display_label,
            resources=job.resources,
        )
        with log_context(nodeId=nid):  # the node's task copies the context: its lines say so
            task = asyncio.ensure_future(self.run_node(node, data, ctx))
        self.in_flight[task] = (nid, input_json, time.monotonic())

    async def finish_task(self, task: asyncio.Task[Envelope]) -> None:
        nid, input_json, started = self.in_flight.pop(task)
        duration = int((time.monotonic() - started) * 1000)
        try:
            result = task.result()
        except NodeError as exc:
            result = error_result(str(exc), exc.attempts)
        except asyncio.CancelledError:
            result = error_result(CANCELLED_TEXT)
        except Exception as exc:  # noqa: BLE001 - an orchestrator failure still settles the node
            logger.exception("node %s crashed outside its handler", nid, extra={"node_id": nid})
            result = error_result(f"{type(exc).__name__}: {exc}")
        node_finished(self.job.plan.nodes[nid].type, is_failed(result), time.monotonic() - started)
        if is_failed(result):
            self.rows.append(
                self._row(
                    nid,
                    NodeStatus.ERROR,
                    input_json=input_json,
                    error=redact_url(str(result.get("error"))),
                    duration_ms=duration,
                    attempts=result.get("attempts"),
                )
            )
            self.settle(nid, result)
        else:
            encoded = await encode_json(result, redact_url)
            self.rows.append(
                self._row(
                    nid,
                    NodeStatus.COMPLETED,
                    input_json=input_json,
                    output_json=_log_json(result, encoded),
                    duration_ms=duration,
                    attempts=result.get("attempts"),
                )
            )
            self.settle(nid, result, encoded, redacted=True)

    async def stop_in_flight(self) -> None:
        """Cancel the running nodes and wait until each has stopped (none outlives the walk)."""
        tasks = list(self.in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: a node that failed meanwhile is not news

    async def abort_in_flight(self) -> None:
        """Cancellation: stop the running nodes and record them as cancelled."""
        await self.stop_in_flight()
        for task in list(self.in_flight):
            nid, input_json, started = self.in_flight.pop(task)
            self.rows.append(
                self._row(
                    nid,
                    NodeStatus.ERROR,
                    input_json=input_json,
                    error=CANCELLED_TEXT,
                    duration_ms=int((time.monotonic() - started) * 1000),
                )
            )
            self.results[nid] = error_result(CANCELLED_TEXT)
            self.encode(nid, dump_json(self.results[nid]))
        self.dirty = True
        await self.flush()

    def settled_outcome(self) -> Outcome:
        failed = any(is_failed(r) for r in self.results.values())
        return Outcome.FAILED if failed else Outcome.COMPLETED

    async def walk(self) -> Outcome:
        """Run until every node settled (completed/failed), the execution is cancelled, or
        draining stopped new nodes from starting (interrupted: the in-flight ones finished and
        were checkpointed). Any exception (a checkpoint that raised, a hard cancel) first
        cancels and awaits the nodes in flight, then propagates."""
        cancel_wait = asyncio.ensure_future(self.cancel.wait())
        try:
            while True:
                if self.drain.is_set():
                    if not self.in_flight:
                        await self.flush()
                        return Outcome.INTERRUPTED
                    to_start = []
                else:
                    ready = await self.take_ready()
                    to_start = [(nid, data, await _log_input(data)) for nid, data in ready]
                if to_start:
                    if self.cancel.is_set():
                        await self.flush()
                        await self.abort_in_flight()
                        return Outcome.CANCELLED
                    for nid, _, input_json in to_start:
                        self.rows.append(self._row(nid, NodeStatus.RUNNING, input_json=input_json))
                    self.current = to_start[-1][0]
                if not await self.flush():
                    await self.abort_in_flight()
                    return Outcome.CANCELLED
                for nid, data, input_json in to_start:
                    self.start(nid, data, input_json)
                if not self.in_flight and not self.drain.is_set():
                    return self.settled_outcome()
                if self.drain.is_set() and not self.in_flight:
                    continue
                waits = [*self.in_flight, cancel_wait]
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not cancel_wait:
                        await self.finish_task(task)  # type: ignore[arg-type]
                if cancel_wait in done:
                    await self.flush()
                    await self.abort_in_flight()
                    return Outcome.CANCELLED
        except BaseException:
            # a hard stop leaves the nodes to be re-run on resume; a failed checkpoint fails the
            # execution: either way no node may go on (an http call, an email) unowned
            await self.stop_in_flight()
            raise
        finally:
            cancel_wait.cancel()


async def execute(
    job: Job,
    recorder: Recorder,
    run_node: RunNode,
    cancel: asyncio.Event | None = None,
    drain: asyncio.Event | None = None,
) -> RunResult:
    """Walk the plan to the end and return the result: completed/failed, or cancelled when
    `cancel` is set, or interrupted when `drain` is set (no new node starts; resumable).
    Raises whatever a checkpoint raised, after the nodes in flight were cancelled."""
    run = _Run(job, recorder, run_node, cancel or asyncio.Event(), drain or asyncio.Event())
    outcome = await run.walk()
    error = None
    if outcome == Outcome.CANCELLED:
        error = CANCELLED_TEXT
    elif outcome == Outcome.FAILED:
        failed = [nid for nid in job.plan.order if is_failed(run.results.get(nid))]
        causes = "; ".join(
            f"{nid} ({job.plan.nodes[nid].display_label}): {str(run.results[nid]['error'])[:300]}"
            for nid in failed
        )
        error = redact_url(f"Nodes failed: {', '.join(failed)} — {causes}")
    return RunResult(outcome, error, run.node_results_json(), run.results)
