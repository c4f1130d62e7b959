"""What a handler receives besides its config and input: ids, run-time inputs, shared clients."""

from dataclasses import dataclass, field
from typing import Any

import httpx

from config import Settings


@dataclass
class Resources:
    """Clients shared by every node a process runs; opened once, closed on shutdown."""

    settings: Settings
    http: httpx.AsyncClient
    store: Any = None
    """The service's `database.Store` (None in unit tests that need no database)."""
    _openai: Any = field(default=None, repr=False)
    mysql_pools: dict[Any, Any] = field(default_factory=dict, repr=False)
    """aiomysql pools of the mysql node, one per DSN (tasks/mysql_query.py)."""

    def openai(self) -> Any:
        """The shared `openai.AsyncOpenAI` client (built on first use, no SDK-level retries)."""
        if self._openai is None:
            from openai import AsyncOpenAI

            key = self.settings.OPENAI_API_KEY
            self._openai = AsyncOpenAI(
                api_key=key.get_secret_value() if key else "",
                base_url=self.settings.OPENAI_BASE_URL,
                max_retries=0,
            )
        return self._openai

    async def aclose(self) -> None:
        await self.http.aclose()
        if self._openai is not None:
            await self._openai.close()
        for pool in self.mysql_pools.values():
            pool.terminate()
            await pool.wait_closed()
        self.mysql_pools.clear()


def open_resources(settings: Settings, store: Any = None) -> Resources:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    return Resources(settings, httpx.AsyncClient(limits=limits, follow_redirects=True), store)


@dataclass(frozen=True)
class RunContext:
    """Everything about the run a handler may read; `attempt` counts from 1."""

    execution_id: str
    workflow_id: str | None
    organization_id: str | None
    inputs: dict[str, Any]
    node_id: str
    node_type: str
    node_label: str
    resources: Resources
    attempt: int = 1

    @property
    def settings(self) -> Settings:
        return self.resources.settings

    @property
    def http(self) -> httpx.AsyncClient:
        return self.resources.http
