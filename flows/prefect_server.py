"""Embedded Prefect 3.9.1 API server on SQLite that doesn't answer concurrent writes with 503.

Run it with `python -m flows.prefect_server --host 127.0.0.1 --port 4200` from the repo root. The
database is the default `$PREFECT_HOME/prefect.db`. uvicorn runs in this process: there is no
subprocess and no new session, so a parent that kills this PID (SIGTERM → graceful uvicorn shutdown)
or our process group stops everything. After a SIGTERM shutdown uvicorn re-raises the signal, so the
exit status is -15 (143), not 0. With ``--supervised`` (start_service.py on POSIX) SIGUSR1 is the
graceful stop instead (exit status -10), also sent when the supervisor dies, and SIGTERM and SIGINT
are ignored: a stop signal to the whole process group (Ctrl-C) is the supervisor's to act on, and it
stops this server after the workers drained, so their flow runs' final states still reach it.

Why the patch: in Prefect 3.9.1, `AioSqliteConfiguration.begin_transaction`
(prefect/server/database/configurations.py) opens a ``BEGIN DEFERRED`` transaction unless
``with_for_update=True``. Handlers such as ``POST /flow_runs/`` read first and then write inside
that transaction. When another connection is writing (another flow run, the task-run recorder, the
event persister, logs), SQLite cannot upgrade the read transaction to a write transaction and fails
*immediately* with SQLITE_BUSY / SQLITE_BUSY_SNAPSHOT ("database is locked"). ``busy_timeout`` does
not apply to that upgrade. The server maps the error to HTTP 503, and the client then sleeps
2, 4, 8, 16, 32 s between retries (about 60 s, or a failed flow call). We patch the method so every
transaction starts with ``BEGIN IMMEDIATE``: a writer takes the write lock up front and waits in
``busy_timeout`` (60 s) behind the current writer instead of failing. WAL readers are not blocked.
Measured (2 cores, 50 concurrent async flows x 10 tasks): unpatched 135-149 s, ~160 HTTP 503s and
1-3 failed flow calls; patched 7-13 s with zero 503s. Remove the patch once upstream does this
itself (PrefectHQ/prefect#10188, #16299, #17473).

Environment:
  PREFECT_SERVER_API_AUTH_STRING  set by start_service.py (the operator's, or generated at every
  start): every API route but ``GET /health`` then needs it (Basic auth; the workers get it as
  PREFECT_API_AUTH_STRING). The UI (on, same port) asks for it on its login page and sends it
  as Basic auth itself; ``PREFECT_UI_API_URL`` tells it where the API is for the browser.
  WOS_PREFECT_SQLITE_IMMEDIATE=0  turns the patch off (for A/B checks only; the default is on).
  The quiet defaults and batching settings below use ``os.environ.setdefault``, so any value set
  by the caller (e.g. PREFECT_SERVER_UI_ENABLED=true) takes precedence.
"""

import argparse
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

# These must be set before anything imports prefect, because prefect reads its settings on import.
_SERVER_DEFAULTS: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_SERVER_UI_ENABLED": "true",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    # Task-run recorder and event persister stay on (task runs visible in Prefect). Prefect's
    # default recorder batch of 1 fell 30+ s behind under 50 flows; batches keep it ~1 s behind.
    # The recorder int()s its flush interval, so keep it a whole number >= 1.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "1000",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "2",
}
_FALSE = {"0", "false", "no", "off"}


def apply_env_defaults() -> None:
    """Set the quiet server defaults without overriding values from the caller's environment."""
    for key, value in _SERVER_DEFAULTS.items():
        os.environ.setdefault(key, value)


def patch_sqlite_immediate_transactions() -> bool:
    """Make every Prefect SQLite transaction `BEGIN IMMEDIATE`; return whether the patch is on."""
    if os.environ.get("WOS_PREFECT_SQLITE_IMMEDIATE", "1").strip().lower() in _FALSE:
        return False
    from prefect.server.database.configurations import AioSqliteConfiguration

    original = AioSqliteConfiguration.begin_transaction
    if getattr(original, "_wos_immediate", False):
        return True

    def begin_transaction(
        self: AioSqliteConfiguration, session: Any, with_for_update: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        # with_for_update=True is Prefect's own switch for "BEGIN IMMEDIATE" on SQLite.
        return original(self, session, with_for_update=True)

    begin_transaction._wos_immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign,assignment]
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.prefect_server", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--supervised", action="store_true", help="stop on SIGUSR1 only")
    return parser.parse_args(argv)


def stop_on_sigusr1_only() -> None:
    """`--supervised`: uvicorn shuts down gracefully on SIGUSR1, which the kernel also sends when
    the supervisor dies (Linux, even by SIGKILL); SIGTERM and SIGINT are ignored."""
    import uvicorn.server

    uvicorn.server.HANDLED_SIGNALS = (signal.SIGUSR1,)  # type: ignore[assignment]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform == "linux":
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGUSR1)  # PR_SET_PDEATHSIG


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    apply_env_defaults()
    patch_sqlite_immediate_transactions()
    if args.supervised:
        stop_on_sigusr1_only()

    import prefect
    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import get_current_settings

    api = get_current_settings().server.api
    # Same call as prefect/cli/_server_utils.py::_run_in_foreground with workers=1 (in-process).
    uvicorn.run(
        app=create_app(final=True),
        app_dir=str(prefect.__module_path__.parent),
        host=args.host,
        port=args.port,
        timeout_keep_alive=api.keepalive_timeout,
        ws_ping_interval=api.websocket_ping_interval,
        ws_ping_timeout=api.websocket_ping_timeout,
        log_level=os.environ["PREFECT_SERVER_LOGGING_LEVEL"].lower(),
        # a Prefect logging config of the operator's (LOG_FORMAT=json sets one) also holds for
        # uvicorn's lines: uvicorn then leaves logging as Prefect configured it
        log_config=None
        if os.environ.get("PREFECT_LOGGING_SETTINGS_PATH")
        else uvicorn.config.LOGGING_CONFIG,
    )


if __name__ == "__main__":
    main()
