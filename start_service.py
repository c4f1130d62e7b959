"""Starts everything the service needs on one machine and stops it cleanly.

    start_service.py (supervisor, stays in start.sh's process group)
    ├── Prefect API server   python -m flows.prefect_server   (prefect mode, no PREFECT_API_URL)
    ├── worker process(es)   python -m flows.worker           (WORKER_PROCESSES)
    └── HTTP API             uvicorn api_service:app          (API_HOST:API_PORT)

`--role api|worker|prefect` starts one part instead (split roles, `ROLES`): `api` only the HTTP
API (it runs no execution), `worker` only the worker processes plus `api.worker_app` on API_PORT
(its probes and /metrics), `prefect` only the Prefect server. The api and worker roles need
DATABASE_URL on PostgreSQL (the one store every machine shares; SQLite is refused), a worker role
in prefect mode PREFECT_API_URL as well.

The embedded Prefect server serves its API and UI on API_HOST:PREFECT_SERVER_API_PORT (4200 by
default; a port in use is a start-up error, exit status 1). It requires an auth string: the
operator's `PREFECT_SERVER_API_AUTH_STRING`, else one generated here at every start and written to
`<PREFECT_HOME>/ui-auth-string` (owner-only) for logging in to the UI. The server gets it as
`PREFECT_SERVER_API_AUTH_STRING`, the workers as `PREFECT_API_AUTH_STRING`; it is never logged
nor given to the HTTP API process, so nothing else on the machine can drive the Prefect API.

SIGTERM/SIGINT: the API stops, workers drain for SHUTDOWN_GRACE_SECONDS, then Prefect stops;
exit status 0. A signal during start-up (store preparation, Prefect start) ends start-up: no API
or worker is spawned, a started Prefect server is stopped, and the exit status is 128 + the
signal number (130 for SIGINT, 143 for SIGTERM). Status 1: the API exited on its own.
"""

import argparse
import asyncio
import contextlib
import logging
import logging.config
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from config import PROJECT_DIR, Settings, get_settings
from logformat import uvicorn_log_config
from metrics import MULTIPROC_ENV, process_dead, reset_multiproc_dir
from states import ExecutionMode

ROLES = ("all", "api", "worker", "prefect")
"""`--role`: everything on one machine (the default), or one part of a split deployment."""
PREFECT_SERVER_AUTH = "PREFECT_SERVER_API_AUTH_STRING"
PREFECT_CLIENT_AUTH = "PREFECT_API_AUTH_STRING"
AUTH_FILE = "ui-auth-string"
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
PREFECT_STOP_SIGNAL = getattr(signal, "SIGUSR1", signal.SIGTERM)
"""How the embedded Prefect server is stopped. POSIX: it runs `--supervised`, deaf to SIGTERM and
SIGINT, so a signal to the whole process group (Ctrl-C) stops it only after the workers drained
(they report their flow runs' final states to it while draining)."""

logger = logging.getLogger("start_service")


def configure_logging(level: str) -> None:
    """Text lines, or JSON objects with LOG_FORMAT=json (also for Prefect's loggers in this
    process and its children: PREFECT_LOGGING_SETTINGS_PATH)."""
    if get_settings().LOG_FORMAT == "json":
        from logformat import PREFECT_LOGGING_FILE, json_dict_config

        os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(PREFECT_LOGGING_FILE))
        logging.config.dictConfig(json_dict_config(level))
        return
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
            "root": {"handlers": ["console"], "level": level.upper()},
            "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
        }
    )


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM if the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def prefect_env(settings: Settings, api_url: str | None) -> dict[str, str]:
    """Environment shared by the Prefect server and its clients: quiet, offline, no ephemeral
    servers, and no per-task INFO log lines."""
    env = {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
        "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # each flow run otherwise spends two extra round trips on these checks
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
        "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
        if api_url.startswith("http://"):
            env["PREFECT_API_SSL_CERT_FILE"] = str(one_cert_pem(settings.prefect_home))
    return env


def one_cert_pem(folder: Path) -> Path:
    """A single self-signed certificate for PREFECT_API_SSL_CERT_FILE.

    The Prefect client builds an SSL context (loading the whole CA bundle, 25-50 ms of CPU) for
    every client it creates, about twice per flow run, even for a plain-http API. Pointing it at
    a one-certificate file makes that 0.4 ms; outbound HTTPS of the nodes is not affected.
    """
    path = folder / "one-cert.pem"
    if path.exists():
        return path
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prefect-http-placeholder")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=36500))
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


class StartupInterrupted(Exception):
    """A signal arrived before every process was started."""


class StartupFailed(Exception):
    """A setting makes start-up impossible (the message says which); exit status 1."""


def check_node_rate_limits(settings: Settings) -> None:
    """NODE_RATE_LIMITS may name only node types (each API and worker process checks it too,
    when it opens its resources)."""
    from rate_limits import RateLimitSettingError
    from tasks.node_limits import node_limits_of

    try:
        node_limits_of(settings)
    except RateLimitSettingError as exc:
        raise StartupFailed(str(exc)) from None


def port_free(host: str, port: int) -> bool:
    """Whether `host:port` can be listened on now (SO_REUSEADDR, as uvicorn binds, so a port
    left in TIME_WAIT by a previous instance counts as free; not on Windows, where it would let
    the bind share a port another process listens on)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if os.name != "nt":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


def local_url(host: str, port: int) -> str:
    """How processes of this machine reach a server listening on `host:port`."""
    if host.strip() in WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def write_auth_file(folder: Path, auth: str) -> Path:
    """The generated auth string, readable by this user only, for logging in to the UI."""
    path = folder / AUTH_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(auth + "\n")
    return path


class Supervisor:
    def __init__(self, settings: Settings, role: str = "all") -> None:
        self.settings, self.role = settings, role
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.signal: int | None = None
        fixed = settings.PREFECT_SERVER_API_AUTH_STRING
        self.prefect_auth = fixed.get_secret_value() if fixed else secrets.token_urlsafe(32)
        """The embedded Prefect API's auth string (the operator's, or this run's only)."""

    @property
    def metrics_dir(self) -> Path:
        return self.settings.state_dir / "metrics"

    def uvicorn_log_args(self) -> list[str]:
        """LOG_FORMAT=json: uvicorn's own lines (start-up, shutdown) as JSON too."""
        if self.settings.LOG_FORMAT != "json":
            return []
        path = uvicorn_log_config(self.settings.state_dir, self.settings.LOG_LEVEL)
        return ["--log-config", str(path)]

    def request_stop(self, signum: int) -> None:
        """The signal handler: only a flag, acted upon by `run` (start-up or the watch loop)."""
        if not self.stopping:
            logger.info("received %s; stopping", signal.Signals(signum).name)
            self.signal, self.stopping = signum, True

    def spawn(
        self, name: str, args: list[str], extra_env: dict[str, str], drop: tuple[str, ...] = ()
    ) -> None:
        """Start `python <args>` with this environment plus `extra_env`, minus `drop`."""
        if self.stopping:
            raise StartupInterrupted(name)
        env = {**os.environ, **extra_env, "PYTHONUNBUFFERED": "1"}
        for key in drop:
            env.pop(key, None)
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args],
            cwd=PROJECT_DIR,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        logger.info("started %s (pid %d)", name, self.procs[name].pid)

    def start_prefect(self) -> str | None:
        """The embedded Prefect server (API and UI); returns its API URL, or None if it did not
        come up. Raises StartupFailed when its port is taken."""
        settings = self.settings
        home = settings.prefect_home
        home.mkdir(parents=True, exist_ok=True)
        host, port = settings.API_HOST.strip(), settings.PREFECT_SERVER_API_PORT
        if port == settings.API_PORT and self.role != "prefect":
            raise StartupFailed(
                f"PREFECT_SERVER_API_PORT and API_PORT are both {port}; the Prefect server and "
                "the HTTP API listen on API_HOST side by side and need two ports"
            )
        if not port_free(host, port):
            raise StartupFailed(
                f"PREFECT_SERVER_API_PORT {port} on {host or '0.0.0.0'} is already in use (another "
                "instance's Prefect server?); give each instance its own PREFECT_SERVER_API_PORT"
            )
        auth_hint = "PREFECT_SERVER_API_AUTH_STRING"
        if settings.PREFECT_SERVER_API_AUTH_STRING is None:
            auth_hint = str(write_auth_file(home, self.prefect_auth))
        ui = settings.prefect_ui_url
        supervised = ["--supervised"] if PREFECT_STOP_SIGNAL != signal.SIGTERM else []
        self.spawn(
            "prefect-server",
            ["-m", "flows.prefect_server", "--host", host or "0.0.0.0", "--port", str(port)]
            + supervised,
            {
                **prefect_env(settings, None),
                PREFECT_SERVER_AUTH: self.prefect_auth,
                "PREFECT_SERVER_API_HOST": host or "0.0.0.0",
                "PREFECT_SERVER_API_PORT": str(port),
                "PREFECT_UI_API_URL": f"{ui}/api",
            },
        )
        url = f"{local_url(host, port)}/api"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.stopping:
            if self.procs["prefect-server"].poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    logger.info("Prefect API ready at %s (data in %s)", url, home)
                    logger.info("Prefect UI at %s (log in with the auth string: %s)", ui, auth_hint)
                    return url
            time.sleep(0.25)
        if self.stopping:
            raise StartupInterrupted("Prefect server starting")
        logger.error("the embedded Prefect server did not start; executions will run inline")
        self.stop_one("prefect-server", 3)
        return None

    def stop_one(self, name: str, timeout: float) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(PREFECT_STOP_SIGNAL if name == "prefect-server" else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        self.stopping = True
        for name, proc in self.procs.items():
            if name != "prefect-server" and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + self.settings.SHUTDOWN_GRACE_SECONDS + 3
        for name, proc in self.procs.items():
            if name == "prefect-server":
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stop_one("prefect-server", 2)

    def run(self) -> int:
        """Start everything and watch it until a signal; returns the exit status."""
        try:
            return self._run()
        except StartupInterrupted:
            self.stop_all()
            name = signal.Signals(self.signal).name if self.signal else "a signal"
            logger.info("start-up interrupted by %s; nothing left running", name)
            return 128 + self.signal if self.signal else 1
        except StartupFailed as exc:
            self.stop_all()
            logger.error("cannot start: %s", exc)
            return 1

    def _run(self) -> int:
        settings = self.settings
        check_node_rate_limits(settings)
        if self.role == "prefect":
            return self._run_prefect()
        check_role(settings, self.role)
        asyncio.run(prepare_store(settings, release=self.role != "api"))
        if self.stopping:
            raise StartupInterrupted("store prepared")
        api_url = settings.PREFECT_API_URL
        prefect_auth: dict[str, str] = {}
        if settings.EXECUTION_MODE is ExecutionMode.PREFECT and not api_url and self.role == "all":
            api_url = self.start_prefect()
            prefect_auth = {PREFECT_CLIENT_AUTH: self.prefect_auth}
        # the outbound policy refuses nodes this API port and the Prefect API (tasks/outbound.py)
        outbound_env = {
            "API_PORT": str(settings.API_PORT),
            "OUTBOUND_PROTECTED_URLS": api_url or "",
        }
        # every API and worker process records metrics in one folder, summed by /metrics
        metrics_env = {MULTIPROC_ENV: str(self.metrics_dir)}
        reset_multiproc_dir(self.metrics_dir)
        worker_env = {
            **prefect_env(settings, api_url),
            **prefect_auth,
            **outbound_env,
            **metrics_env,
            "WOS_INSTANCE": instance_id(settings),
        }
        # all-in-one: the API pings its workers' UDP ports; split roles: LISTEN wos_queue
        wake_ports = [
            str(free_port(socket.SOCK_DGRAM)) if self.role == "all" else ""
            for _ in range(settings.WORKER_PROCESSES if self.role != "api" else 0)
        ]
        for i, port in enumerate(wake_ports):
            self.spawn(
                f"worker-{i + 1}", ["-m", "flows.worker"], {**worker_env, "WOS_WAKE_PORT": port}
            )
        self.spawn(
            "api",
            [
                "-m",
                "uvicorn",
                "api.worker_app:app" if self.role == "worker" else "api_service:app",
                "--host",
                settings.API_HOST,
                "--port",
                str(settings.API_PORT),
                "--no-access-log",
                "--log-level",
                settings.LOG_LEVEL.lower(),
                *self.uvicorn_log_args(),
            ],
            {**outbound_env, **metrics_env, "WOS_WAKE_PORTS": ",".join(wake_ports)},
            drop=(PREFECT_SERVER_AUTH, PREFECT_CLIENT_AUTH),
        )
        logger.info(
            "service starting on http://%s:%d (mode %s, role %s)",
            settings.API_HOST,
            settings.API_PORT,
            settings.EXECUTION_MODE,
            self.role,
        )
        while not self.stopping:
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                if name.startswith("worker-"):
                    logger.error("%s exited with %s; restarting it", name, code)
                    process_dead(self.metrics_dir, proc.pid)
                    port = wake_ports[int(name.split("-")[1]) - 1]
                    self.spawn(name, ["-m", "flows.worker"], {**worker_env, "WOS_WAKE_PORT": port})
                elif name == "prefect-server":
                    logger.error(
                        "the Prefect server exited with %s; executions run inline "
                        "until the service is restarted",
                        code,
                    )
                    del self.procs[name]
                else:
                    logger.error("%s exited with %s; stopping the service", name, code)
                    self.stop_all()
                    return 1
            time.sleep(0.5)
        self.stop_all()
        return 0

    def _run_prefect(self) -> int:
        """`--role prefect`: the Prefect server alone, until a signal (1: it did not start or
        exited on its own)."""
        if self.start_prefect() is None:
            return 1
        while not self.stopping:
            code = self.procs["prefect-server"].poll()
            if code is not None:
                logger.error("the Prefect server exited with %s; stopping", code)
                return 1
            time.sleep(0.5)
        self.stop_all()
        return 0


def check_role(settings: Settings, role: str) -> None:
    """Split roles share one store across machines: PostgreSQL only (a SQLite file or a memory
    store cannot be shared), and a worker in prefect mode needs the prefect role's API."""
    if role == "all":
        return
    scheme = settings.database_url.partition(":")[0].partition("+")[0].lower()
    if scheme not in ("postgresql", "postgres"):
        raise StartupFailed(
            f"--role {role} needs DATABASE_URL on PostgreSQL, the store every role shares "
            f"(this is {scheme}: a SQLite file cannot be shared across machines); start without "
            "--role to run everything on one machine"
        )
    if role == "worker" and settings.EXECUTION_MODE is ExecutionMode.PREFECT:
        if not settings.PREFECT_API_URL:
            raise StartupFailed(
                "--role worker in prefect mode needs PREFECT_API_URL (the Prefect server of "
                "--role prefect, e.g. http://prefect-host:4200/api), or EXECUTION_MODE=inline"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start the Workflow Orchestration Service.")
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="one part of a split deployment (api, worker, prefect); default: everything",
    )
    return parser.parse_args(argv)


def instance_id(settings: Settings) -> str:
    """Names this service instance in lease owners, so a restart resumes its own executions."""
    return f"{socket.gethostname()}:{settings.API_PORT}"


async def prepare_store(settings: Settings, *, release: bool = True) -> None:
    """Create missing tables once, and (`release`: an instance with workers) free the
    executions a previous instance left running."""
    from database import open_store

    store = await open_store(settings.database_url)
    try:
        if not release:
            return
        await store.release_instance(instance_id(settings))
        await store.callbacks.release(instance_id(settings) + ":")  # resend what it was sending
    finally:
        await store.close()


def raise_open_file_limit(wanted: int = 65536) -> None:
    """Up to 500 running executions and HTTP_MAX_CONNECTIONS sockets per worker need more than
    the common soft limit of 1024 descriptors; the children inherit the raised soft limit."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> int:
    role = parse_args(argv).role
    settings = get_settings()
    configure_logging(settings.LOG_LEVEL)
    raise_open_file_limit()
    supervisor = Supervisor(settings, role)

    def on_signal(signum: int, _frame: object) -> None:
        supervisor.request_stop(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
