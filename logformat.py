"""Log lines as one JSON object each (`LOG_FORMAT=json`), and the ids every line about an
execution carries.

`log_context(executionId=..., organizationId=...)` (the runner, per execution) and
`bind_log_context(flowRunId=...)` tag every record logged in that asyncio task and the tasks it
starts (a contextvar), ours, Prefect's and the libraries'; the engine adds `nodeId` around each
node. The older `extra={"execution_id": ...}` convention is read too (`execution_id`,
`node_id`, `organization_id`, `flow_run_id` become the camelCase keys), so a line that names
an execution carries `executionId` whichever way it was logged.

Every JSON line has `timestamp` (UTC ISO-8601, milliseconds, `Z`), `level`, `logger`,
`message`, the ids where known, any other `extra` fields, and `exc_info` with the traceback.
The processes get it from `start_service.configure_logging` (supervisor and workers),
uvicorn's `--log-config` (the API process, `uvicorn_log_config`) and Prefect's
`PREFECT_LOGGING_SETTINGS_PATH` (`deploy/prefect-logging.yml`: Prefect's own handlers, the
embedded Prefect server included). Building the formatter also routes warnings, uncaught
exceptions (main thread, threads, unraisable) through logging (`install_hooks`).
"""

import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

CONTEXT_KEYS = ("executionId", "nodeId", "organizationId", "flowRunId")
EXTRA_KEYS = {
    "execution_id": "executionId",
    "node_id": "nodeId",
    "organization_id": "organizationId",
    "flow_run_id": "flowRunId",
}
"""`extra=` names used by the code (and Prefect's run loggers) → the JSON keys."""
DROPPED = ("color_message", "taskName")
"""Record attributes that only repeat the message (uvicorn's coloured copy) or say nothing."""
PREFECT_LOGGING_FILE = Path(__file__).resolve().parent / "deploy" / "prefect-logging.yml"

_context: ContextVar[Mapping[str, str]] = ContextVar(
    "wos_log_context", default=MappingProxyType({})
)


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Tag the records logged inside the block (and in tasks started from it) with `ids`
    (keys from CONTEXT_KEYS; None values are left out)."""
    token = _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**ids: str | None) -> None:
    """Add `ids` to the current context until the enclosing `log_context` ends."""
    _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})


def current_ids() -> Mapping[str, str]:
    return _context.get()


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(_LibraryJsonFormatter):
    """python-json-logger's formatter with the service's keys and the execution ids."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", "%(levelname)s %(name)s %(message)s")
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__(*args, **kwargs)
        install_hooks()

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["timestamp"] = _iso(record.created)
        super().add_fields(log_data, record, message_dict)
        for old, new in EXTRA_KEYS.items():
            if (value := log_data.pop(old, None)) is not None:
                log_data.setdefault(new, str(value))
        for key, value in _context.get().items():
            log_data.setdefault(key, value)
        for key in DROPPED:
            log_data.pop(key, None)


def json_dict_config(level: str) -> dict[str, Any]:
    """The dictConfig of a process writing JSON lines to stderr (root at `level`; uvicorn's
    loggers propagate to it; httpx quiet)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "logformat.JsonFormatter"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["console"], "level": level.upper()},
        "loggers": {
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            **{
                name: {"handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
        },
    }


def uvicorn_log_config(folder: Path, level: str) -> Path:
    """`json_dict_config` written for uvicorn's `--log-config` (the API process)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "uvicorn-logging.json"
    path.write_text(json.dumps(json_dict_config(level), indent=1))
    return path


_hooked = False


def install_hooks() -> None:
    """Warnings and uncaught exceptions become log records (so JSON lines) instead of raw
    stderr text. Idempotent."""
    global _hooked
    if _hooked:
        return
    _hooked = True
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread
    sys.unraisablehook = _unraisable


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        logging.getLogger("uncaught").info("interrupted")
        return
    logging.getLogger("uncaught").critical("uncaught exception", exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    logging.getLogger("uncaught").error(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _unraisable(args: Any) -> None:
    exc = args.exc_value
    logging.getLogger("uncaught").warning(
        "%s: %r",
        args.err_msg or "Exception ignored in",
        args.object,
        exc_info=(type(exc), exc, args.exc_traceback) if exc is not None else None,
    )
