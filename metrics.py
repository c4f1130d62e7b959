"""The service's Prometheus metrics: their definitions, the small recording helpers the API,
the runner, the engine and the store call, and the exposition `GET /metrics` answers.

Every process of one machine (the API and each worker) records into prometheus-client's
multiprocess files when `PROMETHEUS_MULTIPROC_DIR` is set (start_service.py sets it to
`<STATE_DIR>/metrics`, wiped at start; a dead worker's live gauges are dropped with
`mark_process_dead`), so the API's `/metrics` sums them all. Without it (tests calling the app
in-process) each process has its own registry. `wos_queue_depth{priority}` is read from the
store at scrape time, not recorded.

Label values come from closed sets only: modes, terminal statuses, the registry's node types
(anything else is counted as `other`), node outcomes `completed`/`error`.
"""

import functools
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from states import ExecutionMode, Outcome

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
FINISHED_OUTCOMES = frozenset({Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED})

SUBMITTED = Counter(
    "wos_executions_submitted_total",
    "Executions queued by the API (submits and retries; an Idempotency-Key replay is not one)",
    ["mode"],
)
FINISHED = Counter(
    "wos_executions_finished_total",
    "Executions that reached a terminal status in a worker, by status and the mode they ran in",
    ["status", "mode"],
)
EXECUTION_SECONDS = Histogram(
    "wos_execution_duration_seconds",
    "Run time of the worker run that finished an execution (a resumed run counts from its claim)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
NODE_SECONDS = Histogram(
    "wos_node_duration_seconds",
    "Run time of one node (retries included), by node type and outcome",
    ["type", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RUNNING = Gauge(
    "wos_executions_running",
    "Executions being run by the workers now",
    multiprocess_mode="livesum",
)
RESUMES = Counter(
    "wos_resumes_total",
    "Claims that resumed an execution an earlier run had started (worker crash, restart, drain)",
)
PREFECT_FALLBACKS = Counter(
    "wos_prefect_fallbacks_total",
    "Prefect-mode executions that ran inline because Prefect was unreachable or failed to start",
)
STORE_COMMIT_SECONDS = Histogram(
    "wos_store_commit_seconds",
    "One group commit of execution state (start, checkpoints, finish) to the store",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)

EXPORTED = (
    "wos_executions_submitted_total",
    "wos_executions_finished_total",
    "wos_execution_duration_seconds",
    "wos_node_duration_seconds",
    "wos_queue_depth",
    "wos_executions_running",
    "wos_resumes_total",
    "wos_prefect_fallbacks_total",
    "wos_store_commit_seconds",
)
"""The metric names the service exports (the Grafana dashboard's test checks against these)."""


@dataclass
class RunTrack:
    """What the metrics need to know about the run of one execution while it goes on."""

    mode: str
    outcome: Outcome | None = None


_run: ContextVar[RunTrack | None] = ContextVar("wos_metrics_run", default=None)


def _mode(mode: str) -> str:
    return mode if mode in (ExecutionMode.PREFECT, ExecutionMode.INLINE) else "other"


def execution_submitted(mode: str) -> None:
    SUBMITTED.labels(_mode(mode)).inc()


@contextmanager
def execution_run(mode: str, resumed: bool) -> Iterator[RunTrack]:
    """Around one worker run of an execution: counts it running (and resumed); when the caller
    set `outcome` to a terminal one, counts it finished in the mode the run ended in."""
    track = RunTrack(_mode(mode))
    token = _run.set(track)
    started = time.perf_counter()
    RUNNING.inc()
    if resumed:
        RESUMES.inc()
    try:
        yield track
    finally:
        RUNNING.dec()
        _run.reset(token)
        if track.outcome in FINISHED_OUTCOMES:
            FINISHED.labels(str(track.outcome), track.mode).inc()
            EXECUTION_SECONDS.observe(time.perf_counter() - started)


def prefect_fallback() -> None:
    """The current execution runs inline instead of in Prefect."""
    PREFECT_FALLBACKS.inc()
    if (track := _run.get()) is not None:
        track.mode = ExecutionMode.INLINE.value


def node_finished(node_type: str, failed: bool, seconds: float) -> None:
    known = node_type if node_type in _known_types() else "other"
    NODE_SECONDS.labels(known, "error" if failed else "completed").observe(seconds)


@functools.cache
def _known_types() -> frozenset[str]:
    """The registry's node types (complete once a node runs: `tasks` registers them all)."""
    from tasks.registry import node_types

    return frozenset(node_types())


@contextmanager
def store_commit() -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        STORE_COMMIT_SECONDS.observe(time.perf_counter() - started)


def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def reset_multiproc_dir(path: Path) -> None:
    """The supervisor, before starting any process: an empty folder for this run's files (the
    files of an earlier run would be summed in, and their dead processes' gauges with them)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def process_dead(path: Path, pid: int) -> None:
    """The supervisor, when a process it started has exited: its live gauges stop counting."""
    if path.is_dir():
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def exposition(queue_depth: dict[str, int]) -> bytes:
    """The text `GET /metrics` answers: every process's metrics (summed in multiprocess mode,
    else this process's registry) and `wos_queue_depth` as read by the caller."""
    path = multiproc_dir()
    if path is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(path))  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    depth = GaugeMetricFamily(
        "wos_queue_depth", "Executions waiting for a worker, by priority", labels=["priority"]
    )
    for priority, count in queue_depth.items():
        depth.add_metric([priority], count)
    scrape = CollectorRegistry()
    scrape.register(_Fixed(depth))
    return text + generate_latest(scrape)


class _Fixed:
    """A collector of one metric family read before the scrape."""

    def __init__(self, family: GaugeMetricFamily) -> None:
        self.family = family

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield self.family
