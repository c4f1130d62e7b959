"""Prefect's own production setup as real processes, for the cluster tests: the Prefect server on
a fresh PostgreSQL database with `prefect-redis` messaging, migrated once with its block types
registered (`python -m flows.prefect_migrate`), two API replicas (`prefect server start
--no-services`, block registration off) and one background-services process (`prefect server
services start`) — what deploy/compose.yaml and deploy/k8s run, on this machine's PostgreSQL and
Redis.

`PrefectStack(workdir).start()` starts the replicas and the services at once after the migration
and returns once every replica answers `/api/health` and the services process has started its
services; `stop()` ends every process and drops the database. Redis:
the stack takes a pair of database numbers (messaging, docket) no other stack on this machine
holds (a file lock per pair) and flushes them, so stacks of concurrent test runs never share
streams."""

import asyncio
import contextlib
import fcntl
import secrets
import subprocess
import tempfile
import time
from base64 import b64encode
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

from tests.service_process import MIGRATE, ROOT, free_port, scrubbed_env, stop_group
from tests.support import PG_ADMIN_URL, postgres_query, require_server

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# (messaging, docket) database pairs of Redis' default 16; 0 and 1 are the service's and
# deploy/compose.yaml's
REDIS_DB_PAIRS = ((10, 11), (12, 13), (14, 15))
SERVICES_STARTED = "Starting services"
"""What `prefect server services start` logs once its services run."""


def prefect_cli() -> str:
    candidate = ROOT / ".venv" / "bin" / "prefect"
    return str(candidate) if candidate.exists() else "prefect"


class PrefectStack:
    """Two Prefect API replicas and one services process on PostgreSQL and Redis.

    `api_urls` are the replicas' `http://127.0.0.1:<port>/api`; clients (the service's workers)
    use one of them as PREFECT_API_URL with `auth` as PREFECT_API_AUTH_STRING. Each process logs
    to `<workdir>/<name>.log`."""

    def __init__(self, workdir: Path, *, replicas: int = 2, **settings: str) -> None:
        self.workdir = workdir
        self.auth = f"stack:{secrets.token_hex(8)}"
        self.database = f"wos_prefect_{secrets.token_hex(4)}"
        self.ports = [free_port() for _ in range(replicas)]
        self.api_urls = [f"http://127.0.0.1:{port}/api" for port in self.ports]
        self.extra = settings
        """More Prefect settings for every process (e.g. a service's loop interval); they win over
        the stack's own."""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock: IO[bytes] | None = None
        self.redis_dbs = (-1, -1)
        self.replicas_started: datetime | None = None
        """When the replicas were started (after the migration step had ended)."""

    @property
    def database_url(self) -> str:
        return (
            PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            + f"/{self.database}"
        )

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header every replica asks for (the auth string, as Basic)."""
        return {"Authorization": f"Basic {b64encode(self.auth.encode()).decode()}"}

    def env(self, name: str) -> dict[str, str]:
        messaging_db, docket_db = self.redis_dbs
        settings = dict(
            PREFECT_HOME=str(self.workdir / name),
            PREFECT_API_DATABASE_CONNECTION_URL=self.database_url,
            PREFECT_API_DATABASE_MIGRATE_ON_START="false",
            PREFECT_SERVER_REGISTER_BLOCKS_ON_START="false",
            PREFECT_MESSAGING_BROKER="prefect_redis.messaging",
            PREFECT_MESSAGING_CACHE="prefect_redis.messaging",
            PREFECT_SERVER_EVENTS_CAUSAL_ORDERING="prefect_redis.ordering",
            PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE="prefect_redis.lease_storage",
            PREFECT_REDIS_MESSAGING_HOST=REDIS_HOST,
            PREFECT_REDIS_MESSAGING_PORT=str(REDIS_PORT),
            PREFECT_REDIS_MESSAGING_DB=str(messaging_db),
            PREFECT_SERVER_DOCKET_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/{docket_db}",
            PREFECT_SERVER_API_AUTH_STRING=self.auth,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_LOGGING_LEVEL="INFO",
        )
        return scrubbed_env(**{**settings, **self.extra})

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log_text(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def _take_redis_dbs(self) -> None:
        import redis

        for pair in REDIS_DB_PAIRS:
            lock = (Path(tempfile.gettempdir()) / f"wos-prefect-stack-redis-{pair[0]}.lock").open(
                "wb"
            )
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._lock, self.redis_dbs = lock, pair
            for db in pair:
                with redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db) as client:
                    client.flushdb()
            return
        raise RuntimeError(f"every Redis database pair {REDIS_DB_PAIRS} is held by another stack")

    def _spawn(
        self, name: str, *args: str, command: Sequence[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `prefect <args>` (or `command`, from the repository root) as process `name`."""
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(
                [prefect_cli(), *args] if command is None else list(command),
                cwd=self.workdir if command is None else ROOT,
                env=self.env(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def start(self, timeout: float = 180) -> Self:
        require_server("PostgreSQL", "127.0.0.1", 5432)
        require_server("Redis", REDIS_HOST, REDIS_PORT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._take_redis_dbs()
            asyncio.run(postgres_query(PG_ADMIN_URL, f'CREATE DATABASE "{self.database}"'))
            deadline = time.monotonic() + timeout
            code = self.migrate(timeout)
            if code != 0:
                raise RuntimeError(f"migration exited {code}; see {self.log_path('migrate')}")
            # every replica at the same moment: the migration registered the block types, so
            # they do not race on it (the test that the race is gone)
            self._spawn("services", "server", "services", "start")
            self.replicas_started = datetime.now(UTC)
            for i in range(len(self.ports)):
                self._start_replica(i)
            with ThreadPoolExecutor(len(self.ports)) as pool:
                list(pool.map(lambda i: self._wait_replica(i, deadline), range(len(self.ports))))
            self._wait_services(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def migrate(self, timeout: float = 180) -> int:
        """Run the migration step (`python -m flows.prefect_migrate`) to its end, logging to
        `migrate.log` (appended); returns its exit code."""
        proc = self._spawn("migrate", command=MIGRATE)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            raise RuntimeError(f"migration did not end in {timeout} s") from None

    def _start_replica(self, index: int) -> None:
        self._spawn(
            f"server-{index + 1}",
            *("server", "start", "--no-services", "--host", "127.0.0.1"),
            *("--port", str(self.ports[index])),
        )

    def _check_alive(self, name: str) -> None:
        code = self.procs[name].poll()
        if code is not None:
            raise RuntimeError(f"{name} exited {code}; see {self.log_path(name)}")

    def _wait_replica(self, index: int, deadline: float) -> None:
        name, url = f"server-{index + 1}", self.api_urls[index]
        with httpx.Client(timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                self._check_alive(name)
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{url}/health").status_code == 200:
                        return
                time.sleep(0.3)
        raise RuntimeError(f"{name} did not answer /api/health; see {self.log_path(name)}")

    def _wait_services(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive("services")
            if SERVICES_STARTED in self.log_text("services"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the services did not start; see {self.log_path('services')}")

    def api(self, index: int, method: str, path: str, **kwargs: Any) -> Any:
        """One authorized call to replica `index`'s API; its JSON answer (raises on 4xx/5xx)."""
        answer = httpx.request(
            method, self.api_urls[index] + path, headers=self.headers, timeout=30, **kwargs
        )
        answer.raise_for_status()
        return answer.json()

    def running(self) -> dict[str, bool]:
        """Whether each long-lived process (the services and every replica) still runs."""
        return {n: p.poll() is None for n, p in self.procs.items() if n != "migrate"}

    def stop(self) -> dict[str, int | None]:
        """SIGTERM to every process group (SIGKILL after 15 s), the database dropped, the Redis
        databases flushed and given back; returns each process's exit code."""
        for proc in self.procs.values():
            if proc.poll() is None:
                stop_group(proc)
        codes = {name: proc.returncode for name, proc in self.procs.items()}
        with contextlib.suppress(OSError):
            asyncio.run(
                postgres_query(
                    PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'
                )
            )
        if self._lock is not None:
            import redis

            for db in self.redis_dbs:
                with (
                    contextlib.suppress(redis.RedisError),
                    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db) as client,
                ):
                    client.flushdb()
            self._lock.close()
            self._lock = None
        return codes

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
