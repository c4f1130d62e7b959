"""Guards that keep the README and .env.example in step with the code."""

from pathlib import Path

from config import Settings
from tasks import node_types

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"| `{name}` |" in readme, f"{name} missing from the README settings table"
        assert f"\n{name}=" in "\n" + example, f"{name} missing from .env.example"


def test_every_node_type_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    for node_type in node_types():
        assert f"| `{node_type}` |" in readme, f"{node_type} missing from the README node table"


def test_readme_names_both_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "./start.sh" in readme and "./test.sh" in readme
