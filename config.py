"""Service settings, read once from the environment and `.env` (the environment wins)."""

import base64
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rate_limits import parse_limits, parse_node_limits
from states import ExecutionMode

PROJECT_DIR = Path(__file__).resolve().parent
ENV_FILE_VAR = "WOS_ENV_FILE"
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One `API_KEYS` entry: the sha256 digest of the key (plaintext entries are hashed here, so
    every comparison is over digests) and the organization an organization key is bound to
    (None: a service key, which may act for any organization)."""

    digest: bytes
    organization: str | None


@lru_cache(maxsize=8)
def parse_api_keys(text: str | None) -> tuple[ApiKey, ...]:
    """`API_KEYS`: comma-separated `<key>`, `<key>@<org>`, `sha256:<hex>` or `sha256:<hex>@<org>`
    entries (the org is what follows the last `@`). Raises ValueError for a malformed entry."""
    keys = []
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        key, at, org = entry.rpartition("@")
        if not at:
            key, org = entry, ""
        elif not key or not org.strip():
            raise ValueError("an API_KEYS entry <key>@<org> needs both a key and an org")
        key, organization = key.strip(), org.strip() or None
        if key.lower().startswith("sha256:"):
            hexdigest = key[len("sha256:") :].strip()
            if not _SHA256_HEX.match(hexdigest):
                raise ValueError("an API_KEYS entry sha256:<hex> needs 64 hex digits")
            digest = bytes.fromhex(hexdigest)
        else:
            digest = hashlib.sha256(key.encode()).digest()
        keys.append(ApiKey(digest, organization))
    return tuple(keys)


class Settings(BaseSettings):
    """Every setting of the service; field names are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        env_ignore_empty=True,
        case_sensitive=True,
        hide_input_in_errors=True,  # a malformed API_KEYS (or password) is never echoed
    )

    API_HOST: str = "127.0.0.1"
    API_PORT: int = 8000
    DATABASE_PATH: str = "./database.sqlite"
    DATABASE_URL: str | None = None
    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_BASE_URL: str = "https://api.openai.com/v1"
    OPENAI_MODEL: str = "gpt-4o-mini"
    PREFECT_API_URL: str | None = None
    PREFECT_HOME: str | None = None
    EXECUTION_MODE: ExecutionMode = ExecutionMode.PREFECT
    PREFECT_TASK_NODES: Literal["all", "network"] = "all"
    PREFECT_SERVER_API_PORT: int = Field(default=4200, ge=1, le=65535)
    """Port of the embedded Prefect server (API and UI) on API_HOST; one per instance."""
    PREFECT_SERVER_API_AUTH_STRING: SecretStr | None = None
    """The embedded Prefect API's (and UI's) password; unset: a new one at every start."""
    PREFECT_UI_URL: str | None = None
    """Externally visible base URL of the Prefect UI (prefectUrl); see `prefect_ui_url`."""
    MAX_CONCURRENT_EXECUTIONS: int | None = Field(default=None, ge=1)
    WORKER_PROCESSES: int = Field(default=1, ge=1)
    HTTP_MAX_CONNECTIONS: int = Field(default=1000, ge=1)
    LOG_LEVEL: str = "INFO"
    LOG_FORMAT: Literal["text", "json"] = "text"
    """`json`: every line of every process is one JSON object (logformat.py)."""
    METRICS_PUBLIC: bool = False
    """`GET /metrics` without a key even when API_KEYS is set."""
    STATE_DIR: str | None = None
    """Per-instance runtime files (metrics of all processes, log configs); see `state_dir`."""
    API_KEYS: str | None = None
    MAX_REQUEST_BYTES: int = Field(default=10 * 1024 * 1024, ge=1024)
    LEASE_SECONDS: float = Field(default=15.0, gt=0)
    SHUTDOWN_GRACE_SECONDS: float = Field(default=8.0, ge=0)
    SMTP_HOST: str | None = None
    SMTP_PORT: int | None = Field(default=None, ge=1, le=65535)
    SMTP_USER: str | None = None
    SMTP_PASSWORD: SecretStr | None = None
    SMTP_FROM: str | None = None
    SMTP_SECURITY: Literal["auto", "starttls", "ssl", "none"] = "auto"
    SMTP_CA_FILE: str | None = None
    TWILIO_ACCOUNT_SID: str | None = None
    TWILIO_AUTH_TOKEN: SecretStr | None = None
    TWILIO_FROM_NUMBER: str | None = None
    TWILIO_BASE_URL: str = "https://api.twilio.com"
    UPLOAD_DIR: str = "./uploads"
    ESIOS_API_KEY: SecretStr | None = None
    ESIOS_BASE_URL: str = "https://api.esios.ree.es"
    CLIMATIQ_API_KEY: SecretStr | None = None
    CLIMATIQ_BASE_URL: str = "https://api.climatiq.io"
    CLIMATIQ_DATA_VERSION: str = "^21"
    IMAGE_DIR: str = "./data/images"
    MAX_WORKFLOW_NODES: int = Field(default=1000, ge=1)
    MAX_WORKFLOW_CONNECTIONS: int = Field(default=5000, ge=0)
    MAX_RESUME_ATTEMPTS: int = Field(default=3, ge=0)
    PRIORITY_AGING_SECONDS: float = Field(default=300.0, gt=0)
    """A normal or low execution queued longer than this is claimed as one priority higher."""
    MAX_CONCURRENT_PER_ORG: int | None = Field(default=None, ge=1)
    """At most this many running executions per organization (unset: no cap)."""
    RATE_LIMITS: str | None = None
    """Submits per API key (per organization without API_KEYS), e.g. `100/second;5000/hour`."""
    NODE_RATE_LIMITS: str | None = None
    """Outbound calls per node type, e.g. `llm=60/minute;sendSMS=10/second` (nodes wait)."""
    REDIS_URL: str | None = None
    """Where the rate limits' windows live, shared by every process (unset: each process's
    memory)."""

    DEFAULT_WORKFLOW_VERSION: Literal["auto", "draft"] = "auto"
    """Which definition an execute without `version` runs (api/versions.py `resolve`)."""

    @field_validator(
        "EXECUTION_MODE", "SMTP_SECURITY", "LOG_FORMAT", "DEFAULT_WORKFLOW_VERSION", mode="before"
    )
    @classmethod
    def _lower_mode(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("RATE_LIMITS")
    @classmethod
    def _valid_rate_limits(cls, value: str | None) -> str | None:
        parse_limits(value)
        return value

    @field_validator("NODE_RATE_LIMITS")
    @classmethod
    def _valid_node_rate_limits(cls, value: str | None) -> str | None:
        parse_node_limits(value)  # the node types are checked at start-up (tasks/node_limits)
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _valid_redis_url(cls, value: str | None) -> str | None:
        if value and value.partition("://")[0] not in ("redis", "rediss", "unix"):
            raise ValueError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("API_KEYS")
    @classmethod
    def _valid_api_keys(cls, value: str | None) -> str | None:
        parse_api_keys(value)
        return value

    @field_validator("DATABASE_URL")
    @classmethod
    def _not_in_memory(cls, value: str | None) -> str | None:
        if value and value.strip().lower().startswith("memory:"):
            raise ValueError(
                "memory: is the tests' in-process store; the service's API and workers are "
                "separate processes and need sqlite:/// or postgresql://"
            )
        return value

    @property
    def concurrency_limit(self) -> int:
        """MAX_CONCURRENT_EXECUTIONS; by default 500 inline (an execution waiting on I/O costs a
        coroutine) and 50 in prefect mode (each one is a flow run the Prefect server tracks)."""
        if self.MAX_CONCURRENT_EXECUTIONS:
            return self.MAX_CONCURRENT_EXECUTIONS
        return 500 if self.EXECUTION_MODE is ExecutionMode.INLINE else 50

    @property
    def database_url(self) -> str:
        """`DATABASE_URL` when set, else a SQLite URL for `DATABASE_PATH`."""
        if self.DATABASE_URL:
            return self.DATABASE_URL
        return f"sqlite:///{Path(self.DATABASE_PATH).expanduser().resolve()}"

    @property
    def prefect_home(self) -> Path:
        """Data folder of the embedded Prefect server: one per instance (API port) by default."""
        if self.PREFECT_HOME:
            return Path(self.PREFECT_HOME).expanduser().resolve()
        return PROJECT_DIR / ".prefect" / f"instance-{self.API_PORT}"

    @property
    def state_dir(self) -> Path:
        """STATE_DIR, else `<prefect_home>/service` (one per instance, like prefect_home)."""
        if self.STATE_DIR:
            return Path(self.STATE_DIR).expanduser().resolve()
        return self.prefect_home / "service"

    @property
    def prefect_ui_url(self) -> str:
        """PREFECT_UI_URL; else PREFECT_API_URL without its `/api`; else the embedded server's
        `http://<API_HOST>:<PREFECT_SERVER_API_PORT>` (the host name for a wildcard API_HOST)."""
        if self.PREFECT_UI_URL:
            return self.PREFECT_UI_URL.strip().rstrip("/")
        if self.PREFECT_API_URL:
            return self.PREFECT_API_URL.strip().rstrip("/").removesuffix("/api")
        host = self.API_HOST.strip()
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.PREFECT_SERVER_API_PORT}"

    @property
    def api_keys(self) -> tuple[ApiKey, ...]:
        """The parsed `API_KEYS` entries (empty: no key is required)."""
        return parse_api_keys(self.API_KEYS)

    OUTBOUND_DENY: str = ""
    """Hosts and CIDRs nodes may not connect to, added to tasks/outbound.py's DEFAULT_DENY."""
    OUTBOUND_ALLOW_PRIVATE: bool = True
    OUTBOUND_ALLOW: str = ""
    """Hosts and CIDRs allowed whatever the deny rules say (never the service's own ports)."""
    OUTBOUND_PROTECTED_URLS: str = ""
    """Set by start_service: the embedded Prefect API, refused to nodes like API_PORT."""
    SMTP_ALLOWED_FROM: str = ""
    """Addresses a node's emailFrom may send from through SMTP_HOST (else it is the Reply-To)."""
    EMAIL_MAX_RECIPIENTS: int = Field(default=50, ge=1)
    """Recipients (to, cc and bcc together) of one sendEmail message."""
    MYSQL_MAX_ROWS: int = Field(default=100_000, ge=1)
    """Rows one mysql node fetches; a larger result set is a node error."""

    @property
    def outbound_protected_urls(self) -> list[str]:
        """The URLs whose ports nodes never reach on a local address: PREFECT_API_URL and
        OUTBOUND_PROTECTED_URLS."""
        urls = [self.PREFECT_API_URL or "", *self.OUTBOUND_PROTECTED_URLS.split(",")]
        return [url.strip() for url in urls if url.strip()]

    MAX_NODE_OUTPUT_ROWS: int = Field(default=1_000_000, ge=1)
    """Rows (list items) one node may output; also the default of MAX_FILE_ROWS."""
    MAX_NODE_OUTPUT_BYTES: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Encoded JSON size one node may output (a bounded estimate, tasks/limits.py)."""
    HTTP_MAX_RESPONSE_BYTES: int = Field(default=50 * 1024 * 1024, ge=1)
    MAX_FILE_ROWS: int | None = Field(default=None, ge=1)
    """Rows of a spreadsheet/CSV file (default MAX_NODE_OUTPUT_ROWS)."""
    MAX_FILE_COLUMNS: int = Field(default=1000, ge=1)
    MAX_PDF_PAGES: int = Field(default=1000, ge=1)
    CHART_RENDER_TIMEOUT_S: float = Field(default=10.0, gt=0)
    CALLBACK_SECRET: SecretStr | None = None
    """Standard Webhooks signing secret of execution callbacks, `whsec_<base64 of 24-64
    bytes>`; without it an execute with a `callback` is refused."""
    CALLBACK_RETRY_BASE_SECONDS: float = Field(default=5.0, gt=0, le=5)
    """Delay before a callback's second attempt; it doubles per attempt up to an hour."""
    CALLBACK_RETRY_FOR_SECONDS: float = Field(default=24 * 3600.0, gt=0)
    """How long after its event a callback is still retried before it is `failed`."""
    CALLBACK_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=60)
    """One callback request, connect to last byte read."""
    EXECUTION_RETENTION_DAYS: float | None = Field(default=None, gt=0)
    """Finished executions of the service older than this many days are deleted (None: kept)."""
    EXECUTION_RETENTION_MAX: int | None = Field(default=None, ge=1)
    """Only the newest this many finished executions per organization are kept (None: all)."""
    RETENTION_INTERVAL_SECONDS: float = Field(default=60.0, gt=0, le=60)
    """How often a worker process looks for executions to prune (flows/retention.py)."""

    @field_validator("CALLBACK_SECRET")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            callback_key(value.get_secret_value())
        return value

    @property
    def max_file_rows(self) -> int:
        """MAX_FILE_ROWS, else MAX_NODE_OUTPUT_ROWS."""
        return self.MAX_FILE_ROWS or self.MAX_NODE_OUTPUT_ROWS


def callback_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret `whsec_<base64>` (24 to 64 bytes, as the
    specification asks). Raises ValueError without echoing the secret."""
    text = secret.strip()
    if not text.startswith("whsec_"):
        raise ValueError("CALLBACK_SECRET must be a Standard Webhooks secret: whsec_<base64>")
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ValueError("CALLBACK_SECRET: the part after whsec_ is not base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("CALLBACK_SECRET must encode 24 to 64 bytes")
    return key


def env_file() -> str | None:
    """The dotenv file settings are read from: `$WOS_ENV_FILE` when set (empty: none, as the
    tests and their service processes run), else `.env` in the working directory."""
    value = os.environ.get(ENV_FILE_VAR)
    if value is None:
        return ".env"
    return value or None


@lru_cache
def get_settings() -> Settings:
    return Settings(_env_file=env_file())  # type: ignore[call-arg]


async def settings_dependency() -> Settings:
    """`get_settings` for FastAPI's `Depends`: an `async def` runs on the event loop, a plain
    `def` dependency would cost a worker-thread round trip per request."""
    return get_settings()
