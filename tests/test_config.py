"""Settings: tests are hermetic (bug 7): a developer's `.env` and service variables reach neither
the in-process app nor a service the tests start."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config import ENV_FILE_VAR, env_file, get_settings
from tests.conftest import Service
from tests.service_process import ROOT, ServiceProcess

LEAKY_DOTENV = "API_KEYS=leak\nDATABASE_URL=postgresql://bogus@127.0.0.1:1/bogus\n"


@pytest.fixture
def leaky_dotenv() -> Iterator[Path]:
    """A developer's `.env` in the repository for one test; whatever `.env` was there before
    is put back, even when the test fails."""
    path = ROOT / ".env"
    before = path.read_bytes() if path.exists() else None
    path.write_text(LEAKY_DOTENV)
    try:
        yield path
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)


def test_env_file_is_dotenv_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_FILE_VAR)
    assert env_file() == ".env"
    monkeypatch.setenv(ENV_FILE_VAR, "/etc/wos.env")
    assert env_file() == "/etc/wos.env"
    monkeypatch.setenv(ENV_FILE_VAR, "")
    assert env_file() is None


def test_settings_ignore_the_developers_dotenv(leaky_dotenv: Path) -> None:
    settings = get_settings()
    assert settings.API_KEYS is None and settings.DATABASE_URL is None
    assert settings.database_url.startswith("sqlite:///")


async def test_in_process_app_ignores_the_developers_dotenv(
    leaky_dotenv: Path, service: Service
) -> None:
    r = await service.client.get("/api/executions/nope")
    assert r.status_code == 404, r.text  # 401 if API_KEYS leaked; no store on the bogus URL


@pytest.mark.slow
def test_started_service_ignores_the_developers_environment(
    tmp_path: Path, leaky_dotenv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEYS", "leak")  # exported in the developer's shell
    monkeypatch.setenv("DATABASE_URL", "postgresql://bogus@127.0.0.1:1/bogus")
    with ServiceProcess(tmp_path, EXECUTION_MODE="inline") as svc:
        r = httpx.get(f"{svc.url}/api/executions/nope", timeout=10, trust_env=False)
    assert r.status_code == 404, r.text  # 401 if API_KEYS leaked; no start on the bogus URL
