"""Issue 9, `filePath` uploads: a run with an organization reads `UPLOAD_DIR/<org>/…` only; a
run without one reads only files directly in UPLOAD_DIR (today's place), never an org's folder,
whatever the spelling: `..`, symlinks (file or folder), absolute paths, case, separators."""

from pathlib import Path
from typing import Any

import pytest

from errors import NodeConfigError
from tasks.registry import get_spec
from tests.conftest import MakeResources
from tests.test_security_orgs import ctx


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    """UPLOAD_DIR with an org-less file, two org folders, links and a file outside it."""
    root = tmp_path / "uploads"
    for folder, value in (("orgA", "a"), ("orgB", "b")):
        (root / folder / "sub").mkdir(parents=True)
        (root / folder / "secret.csv").write_text(f"v\n{value}\n")
        (root / folder / "sub" / "deep.csv").write_text(f"v\n{value}-deep\n")
    (root / "none.csv").write_text("v\nnone\n")
    (tmp_path / "outside.csv").write_text("v\noutside\n")
    (root / "link.csv").symlink_to(root / "orgA" / "secret.csv")
    (root / "linkdir").symlink_to(root / "orgA", target_is_directory=True)
    (root / "orgB" / "escape.csv").symlink_to(root / "orgA" / "secret.csv")
    (root / "outlink.csv").symlink_to(tmp_path / "outside.csv")
    return root


NONE_OK = [{"v": "none"}]
REFUSED = "outside the upload folder|does not exist in the upload|in a subfolder of UPLOAD_DIR"
# (case, organization, filePath (`{root}`: UPLOAD_DIR, `{tmp}`: its parent), rows or None)
CASES = [
    ("org-less file in the root", None, "none.csv", NONE_OK),
    ("dot prefix", None, "./none.csv", NONE_OK),
    ("through an org folder and back", None, "orgA/../none.csv", NONE_OK),
    ("absolute path of a root file", None, "{root}/none.csv", NONE_OK),
    ("an org's file", None, "orgA/secret.csv", None),
    ("an org's deeper file", None, "orgA/sub/deep.csv", None),
    ("doubled separator", None, "orgA//secret.csv", None),
    ("dotted", None, "./orgA/./secret.csv", None),
    ("case trick", None, "ORGA/secret.csv", None),
    ("symlinked file into an org", None, "link.csv", None),
    ("symlinked folder of an org", None, "linkdir/secret.csv", None),
    ("absolute path into an org", None, "{root}/orgA/secret.csv", None),
    ("absolute path outside", None, "{tmp}/outside.csv", None),
    ("dot-dot outside", None, "../outside.csv", None),
    ("symlink outside", None, "outlink.csv", None),
    ("an org folder itself", None, "orgA", None),
    ("backslash", None, "orgA\\secret.csv", None),
    ("own file", "orgA", "secret.csv", [{"v": "a"}]),
    ("own subfolder", "orgA", "sub/deep.csv", [{"v": "a-deep"}]),
    ("another org by dot-dot", "orgA", "../orgB/secret.csv", None),
    ("the org-less root by dot-dot", "orgA", "../none.csv", None),
    ("absolute path into another org", "orgA", "{root}/orgB/secret.csv", None),
    ("symlink in its folder to another org", "orgB", "escape.csv", None),
    ("case trick on another org", "orgb", "secret.csv", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("organization", "file_path", "rows"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("node_type", ["excelInput", "pdfInput"])
async def test_file_path_stays_in_the_runs_folder(
    make_resources: MakeResources,
    uploads: Path,
    node_type: str,
    organization: str | None,
    file_path: str,
    rows: list[dict[str, Any]] | None,
) -> None:
    resources = make_resources(UPLOAD_DIR=str(uploads))
    spec = get_spec(node_type)
    value = file_path.format(root=uploads, tmp=uploads.parent)
    call = spec.handler(
        spec.config.model_validate({"filePath": value}),
        None,
        ctx(resources, organization, node_type),
    )
    if rows is None:
        with pytest.raises(NodeConfigError, match=REFUSED):
            await call
    elif node_type == "excelInput":
        assert (await call)["outputData"] == rows
    else:  # a CSV is no PDF: the file was found and read, then refused as not a PDF
        with pytest.raises(NodeConfigError, match="is not a readable PDF file"):
            await call


async def test_an_org_less_run_is_told_why(make_resources: MakeResources, uploads: Path) -> None:
    spec = get_spec("excelInput")
    call = spec.handler(
        spec.config.model_validate({"filePath": "orgA/secret.csv"}),
        None,
        ctx(make_resources(UPLOAD_DIR=str(uploads)), None),
    )
    with pytest.raises(NodeConfigError, match="run without an organization reads only files"):
        await call
