"""Prefect at the edge: one async flow per execution, one generic task per node.

The flow body is `runner.run_job` (plain engine code); the task wraps `tasks.run_node.run_attempt`
and leaves retries (exponential backoff with jitter, only for retryable errors) to Prefect, so each
attempt is visible as a task-run state. Large inputs are `quote`d so Prefect does not walk them.

What Prefect stores of an execution carries no node secret: the flow run's parameters are the
execution and workflow ids, its name the workflow's name; a task run's name is its node's label and
its inputs are `quote`d (Prefect records no task parameters, and `quote` keeps them out of
`task_inputs`); results are not persisted; a failed node's state message and Prefect's error log
see only the node error, whose text `run_attempt` scrubbed (`tasks.run_node.scrub`) and whose
chained causes (a library's exception, which may quote a URL or a password) are dropped here.
"""

import contextvars
import functools
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, runtime, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Crashed, Failed
from prefect.utilities.annotations import quote

from errors import NodeError
from models import NodeDef
from states import Outcome
from tasks.context import RunContext
from tasks.registry import Envelope, get_spec
from tasks.run_node import retry_policy, run_attempt, run_with_retries

logger = logging.getLogger(__name__)

# The worker puts the job body here before calling the flow: flow parameters must be JSON.
_BODY: contextvars.ContextVar[Callable[[str | None], Awaitable[Any]]] = contextvars.ContextVar(
    "wos_flow_body"
)


def _retryable(_task: Any, _run: Any, state: Any) -> bool:
    return bool(getattr(state.data, "retryable", False))


@task(name="node", cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_retryable)
async def node_task(node: NodeDef, data: Any, ctx: RunContext) -> Envelope:
    try:
        return await run_attempt(node, data, replace(ctx, attempt=runtime.task_run.run_count or 1))
    except NodeError as exc:
        # Prefect records this exception (state message, its error log's traceback): keep it to
        # the scrubbed node error, without the causes chained to it
        exc.__cause__, exc.__suppress_context__ = None, True
        raise


MAX_TASK_RUN_NAME = 200


def task_run_name(node: NodeDef) -> str:
    """A node's task run name: its label (as the editor shows it), else `<type>:<node id>`."""
    label = (node.label or "").strip()
    return label[:MAX_TASK_RUN_NAME] if label else f"{node.type}:{node.id}"


async def run_node_as_task(node: NodeDef, data: Any, ctx: RunContext) -> Envelope:
    """The engine's `run_node` in prefect mode: one task run named after the node's label.
    With PREFECT_TASK_NODES=network, nodes that do no I/O run inline in the flow instead."""
    spec = get_spec(node.type)
    if not spec.network and ctx.settings.PREFECT_TASK_NODES == "network":
        return await run_with_retries(node, data, ctx)
    policy = retry_policy(spec, node)
    token = _RUN_NAME.set(task_run_name(node))
    try:
        configured = _node_task(policy.retries, policy.delay_s)
        result: Envelope = await configured(quote(node), quote(data), quote(ctx))
        return result
    finally:
        _RUN_NAME.reset(token)


# Configured copies of the flow and the task are built once per option set (`with_options`
# builds a whole new Flow/Task, a sizeable share of a flow run's CPU) and take their run names
# from _RUN_NAME, set per call.
_RUN_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("wos_run_name")


def _run_name() -> str:
    return _RUN_NAME.get()


@functools.lru_cache(maxsize=64)  # retryDelayMs is the node's own: bounded
def _node_task(retries: int, delay_s: float) -> Any:
    return node_task.with_options(
        task_run_name=_run_name,
        retries=retries,
        retry_delay_seconds=[delay_s * 2**i for i in range(retries)] or 0,
        retry_jitter_factor=0.5 if retries else None,  # type: ignore[arg-type]
    )


@functools.cache
def _flow(result_dir: Path) -> Any:
    return workflow_flow.with_options(flow_run_name=_run_name, result_storage=result_dir)


def _ignore_sigterm(_signum: int, _frame: Any) -> None:
    """The worker's loop learns of SIGTERM through the signal wake-up fd and drains."""


def keep_worker_sigterm() -> None:
    """Prefect's flow engine swaps in a SIGTERM handler that raises `TerminationSignal` into the
    flow for as long as it runs, which would crash a worker's executions instead of letting it
    drain them within SHUTDOWN_GRACE_SECONDS. A worker's event loop hears SIGTERM through the
    signal wake-up fd whatever the Python-level handler is, so inside a worker that handler is
    made a no-op again (Prefect puts back the one it replaced when the flow ends). Called from
    inside the flow by a runner whose process drains on SIGTERM (`Runner.drains_on_sigterm`)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _ignore_sigterm)


@flow(name="workflow-execution", persist_result=False, validate_parameters=False, log_prints=False)
async def workflow_flow(execution_id: str, workflow_id: str | None) -> Any:
    status = await _BODY.get()(str(runtime.flow_run.id))
    if status == Outcome.CANCELLED:
        return Cancelled(message="Execution cancelled by user")
    if status == Outcome.FAILED:
        return Failed(message=f"Execution {execution_id} failed (see its nodeResults)")
    if status == Outcome.INTERRUPTED:
        # ended as Prefect's own shutdown ends a run, not Completed: the execution is not done,
        # it resumes in a new flow run (a run left RUNNING gets the same state: `mark_crashed`)
        return Crashed(
            message=f"Execution {execution_id} interrupted (its worker drained or lost the "
            "lease); it resumes in a new flow run"
        )
    return status


async def mark_crashed(flow_run_id: str, execution_id: str) -> None:
    """The flow run of a worker that died stays RUNNING in Prefect; close it as Crashed when the
    execution resumes (best effort: Prefect is not the source of truth). A run that reached a
    final state itself (an interrupted one ends Crashed, see `workflow_flow`) is left as it is."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        async with get_client() as client:
            previous = await client.read_flow_run(UUID(flow_run_id))
            if previous.state is not None and previous.state.is_final():
                return
            await client.set_flow_run_state(
                flow_run_id,
                Crashed(message=f"Worker lost; execution {execution_id} resumed"),
                force=True,
            )
    except Exception as exc:  # noqa: BLE001 - informational only
        logger.warning("could not mark flow run %s crashed: %s", flow_run_id, exc)


async def run_as_flow(
    execution_id: str,
    workflow_id: str | None,
    label: str,
    attempt: int,
    body: Callable[[str | None], Awaitable[Any]],
    result_dir: Path,
) -> None:
    """Run `body(flow_run_id)` as the flow run `<label> · <execution id>`, tagged with the
    execution id and attempt so a resumed execution's runs are found together in Prefect."""
    name = f"{label} · {execution_id}" + (f" · resume {attempt - 1}" if attempt > 1 else "")
    body_token, name_token = _BODY.set(body), _RUN_NAME.set(name)
    try:
        with tags(f"execution:{execution_id}", f"attempt:{attempt}"):
            await _flow(result_dir)(execution_id, workflow_id, return_state=True)
    finally:
        _RUN_NAME.reset(name_token)
        _BODY.reset(body_token)
