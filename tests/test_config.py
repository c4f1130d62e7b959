"""Settings: tests are hermetic (bug 7): a developer's `.env` and service variables reach neither
the in-process app nor a service the tests start."""

from pathlib import Path

import httpx
import pytest

from config import ENV_FILE_VAR, Settings, env_file, get_settings
from tests.conftest import Service
from tests.service_process import ROOT, ServiceProcess

LEAKY_DOTENV = "API_KEYS=leak\nDATABASE_URL=postgresql://bogus@127.0.0.1:1/bogus\n"


@pytest.fixture
def leaky_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A developer's `.env` in the working directory (settings read `.env` from there), in a
    temporary folder: the repository's own `.env` is never touched."""
    path = tmp_path / ".env"
    path.write_text(LEAKY_DOTENV)
    monkeypatch.chdir(tmp_path)
    return path


@pytest.fixture
def checkout_with_dotenv(tmp_path: Path) -> Path:
    """A checkout of this repository (symlinks to its files) that has a developer's `.env`: a
    service started from it runs with that folder as its working directory."""
    root = tmp_path / "checkout"
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".env", ".git"):
            (root / entry.name).symlink_to(entry)
    (root / ".env").write_text(LEAKY_DOTENV)
    return root


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
    tmp_path: Path, checkout_with_dotenv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEYS", "leak")  # exported in the developer's shell
    monkeypatch.setenv("DATABASE_URL", "postgresql://bogus@127.0.0.1:1/bogus")
    with ServiceProcess(tmp_path, root=checkout_with_dotenv, EXECUTION_MODE="inline") as svc:
        r = httpx.get(f"{svc.url}/api/executions/nope", timeout=10, trust_env=False)
    assert r.status_code == 404, r.text  # 401 if API_KEYS leaked; no start on the bogus URL


def test_the_in_memory_store_is_refused_for_the_service() -> None:
    with pytest.raises(ValueError, match="separate processes"):
        Settings(_env_file=None, DATABASE_URL="memory://x")  # type: ignore[call-arg]
