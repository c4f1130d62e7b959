"""The real service in a process group of its own, started as a user starts it: the one launcher
of the end-to-end tests (`tests/e2e.py`) and the benchmarks (`bench/targets.py`)."""

import contextlib
import fcntl
import importlib.metadata
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from config import ENV_FILE_VAR
from tests.support import node_backend_sqlite

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# what a process needs from the caller's environment; every service setting is explicit
BASIC_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def venv_python() -> str:
    candidate = ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def scrubbed_env(**settings: str) -> dict[str, str]:
    """The caller's PATH, HOME and locale, plus `settings`; nothing else of the caller's
    environment, and no `.env` file (`WOS_ENV_FILE=`)."""
    env = {k: v for k, v in os.environ.items() if k in BASIC_ENV or k.startswith("LC_")}
    return {**env, "PYTHONUNBUFFERED": "1", ENV_FILE_VAR: "", **settings}


MIGRATE = (sys.executable, "-m", "flows.prefect_migrate")
"""The one-shot migration step deploy/compose.yaml and deploy/k8s run (from the repository root)."""


def prefect_home_template() -> Path:
    """A Prefect home whose SQLite database is migrated and has Prefect's block types registered
    (`python -m flows.prefect_migrate`), built once per Prefect version and shared by the test
    services (and processes) of this machine: a fresh embedded Prefect server spends 5-10 s of
    its start on the migrations. A service's first start on a fresh home stays covered by the
    services started with `seed_prefect=False`."""
    version = importlib.metadata.version("prefect")
    template = Path(tempfile.gettempdir()) / f"wos-test-prefect-home-{version}"
    with (Path(tempfile.gettempdir()) / f"wos-test-prefect-home-{version}.lock").open("wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building it
        if not (template / "prefect.db").exists():
            building = Path(tempfile.mkdtemp(prefix="wos-prefect-home-"))
            subprocess.run(
                MIGRATE,
                cwd=ROOT,
                env=scrubbed_env(PREFECT_HOME=str(building)),
                check=True,
                capture_output=True,
                timeout=300,
            )
            shutil.rmtree(template, ignore_errors=True)
            building.rename(template)
    return template


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_group(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15
) -> float:
    """Signal the process group `proc` leads, SIGKILL it if the leader outlives `timeout`, and
    wait until every member is gone; returns how long that took."""
    start = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5  # children may outlive the leader briefly
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return time.monotonic() - start


class ServiceProcess:
    """`./start.sh` (or `python start_service.py` of another checkout `root` with this repo's
    venv) on a free port (and a free PREFECT_SERVER_API_PORT, so instances started at once never
    share the embedded Prefect server's port), with a database the Node backend created first and
    PREFECT_HOME in `workdir`, and only the given settings (the environment is scrubbed, `.env`
    ignored).

    `ServiceProcess(workdir, EXECUTION_MODE="inline").start()` returns once `GET /` answers
    `running`; `stop()` sends SIGTERM to the group, SIGKILL after a timeout. Output goes to
    `<workdir>/<name>.log`, appended across restarts.

    A service that starts the embedded Prefect server (prefect mode or `--role prefect`, no
    PREFECT_API_URL) on an empty PREFECT_HOME gets a copy of `prefect_home_template()`'s
    database unless `seed_prefect=False`."""

    def __init__(
        self,
        workdir: Path,
        *,
        root: Path | str | None = None,
        name: str = "service",
        seed_prefect: bool = True,
        **settings: str,
    ) -> None:
        self.workdir = workdir
        self.args: tuple[str, ...] = ()
        """Command-line arguments of start.sh (a subclass sets `--role api`, …)."""
        self.root = Path(root) if root is not None else None
        self.db = workdir / "database.sqlite"
        if not self.db.exists():
            node_backend_sqlite(self.db)
        self.port = int(settings.pop("API_PORT", 0)) or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefect_port = int(settings.pop("PREFECT_SERVER_API_PORT", 0)) or free_port()
        self.settings = {
            "API_PORT": str(self.port),
            "PREFECT_SERVER_API_PORT": str(self.prefect_port),
            "DATABASE_PATH": str(self.db),
            "PREFECT_HOME": str(workdir / "prefect"),
            "LOG_LEVEL": "INFO",
            **settings,
        }
        self.log_path = workdir / f"{name}.log"
        self.seed_prefect = seed_prefect
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pgid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def _seed_prefect_home(self) -> None:
        args, settings = self.args, self.settings
        role = args[args.index("--role") + 1] if "--role" in args else "all"
        prefect_mode = settings.get("EXECUTION_MODE", "prefect") == "prefect"
        embedded = role == "prefect" or (
            role == "all" and prefect_mode and "PREFECT_API_URL" not in settings
        )
        home = Path(settings["PREFECT_HOME"])
        sqlite = "PREFECT_API_DATABASE_CONNECTION_URL" not in settings
        if self.seed_prefect and embedded and sqlite and not (home / "prefect.db").exists():
            home.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(prefect_home_template() / "prefect.db", home / "prefect.db")

    def start(self, timeout: float = 240) -> Self:
        self._seed_prefect_home()
        if self.root is None:
            command, cwd = [str(ROOT / "start.sh"), *self.args], ROOT
        else:
            command, cwd = [venv_python(), "start_service.py", *self.args], self.root
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=cwd,
                env=scrubbed_env(**self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"service exited with {self.proc.returncode}; see {self.log_path}"
                    )
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if client.get("/").json().get("status") == "running":
                        return
                time.sleep(0.2)
        raise RuntimeError(f"service did not start in {timeout} s; see {self.log_path}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float:
        """Signal the whole process group; returns how long it took to go away."""
        if self.proc is None:
            return 0.0
        return stop_group(self.proc, sig, timeout)

    def __enter__(self) -> Self:
        return self.start() if self.proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
