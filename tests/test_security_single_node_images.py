"""Issue 9, "one caller's rendered chart is never another caller's": `POST /api/nodes/execute`
renders each call's chart under its own run id, bound to the organization it acted for; the
image route serves it to that org (and to service keys) only, 404 to anyone else."""

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from api import single_runs
from config import get_settings
from tests.conftest import Service
from tests.test_nodes_visualization import BAR, PNG_SIGNATURE, png_size

K1, K2, SERVICE_KEY = {"X-API-Key": "k1"}, {"X-API-Key": "k2"}, {"X-API-Key": "svc"}


@pytest.fixture
def image_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """IMAGE_DIR in tmp_path; requested before `service`, whose resources render with it."""
    monkeypatch.setenv("IMAGE_DIR", str(tmp_path / "images"))
    get_settings.cache_clear()
    return tmp_path / "images"


@pytest.fixture
def org_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two organization keys and a service key (after `service`, which clears API_KEYS)."""
    monkeypatch.setenv("API_KEYS", "k1@orgA,k2@orgB,svc")
    get_settings.cache_clear()


def chart(values: list[int]) -> dict[str, Any]:
    data = [{"month": m, "sales": v} for m, v in zip(("Jan", "Feb", "Mar"), values, strict=True)]
    return {
        "nodeId": "viz1",  # the same node id for both callers
        "nodeType": "dataVisualization",
        "inputData": data,
        "node": {"config": {"generatedWidget": {**BAR, "data": data}, "renderImage": True}},
    }


async def render(
    client: httpx.AsyncClient, headers: dict[str, str], values: list[int], width: int
) -> dict[str, Any]:
    body = chart(values)
    body["node"]["config"]["imageWidth"] = width
    r = await client.post("/api/nodes/execute", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True, r.json()
    image: dict[str, Any] = r.json()["output"]["image"]
    return image


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
async def test_two_orgs_render_concurrently_and_each_sees_only_its_own(
    image_dir: Path, service: Service, org_keys: None
) -> None:
    client = service.client
    rounds = 3
    images = await asyncio.gather(
        *(
            render(client, headers, values, width)
            for _ in range(rounds)
            for headers, values, width in ((K1, [1, 2, 3], 400), (K2, [9, 8, 7], 600))
        )
    )
    mine_a, mine_b = images[0::2], images[1::2]
    urls = [image["url"] for image in images]
    assert len(set(urls)) == len(urls), "every call renders under its own run id"
    for own, other, headers, width in ((mine_a, mine_b, K1, 400), (mine_b, mine_a, K2, 600)):
        for image in own:
            served = await client.get(image["url"], headers=headers)
            assert served.status_code == 200, served.text
            assert served.content.startswith(PNG_SIGNATURE)
            assert len(served.content) == image["bytes"]
            assert png_size(served.content) == (width, 500) == (image["width"], image["height"])
            assert (await client.get(image["url"], headers=SERVICE_KEY)).status_code == 200
        for image in other:
            theirs = await client.get(image["url"], headers=headers)
            assert theirs.status_code == 404
            assert theirs.json()["detail"].startswith("No image for node viz1")
    # the old shared name is gone: nobody reads a chart at a guessable address
    for headers in (K1, K2, SERVICE_KEY):
        r = await client.get("/api/executions/single_node/images/viz1.png", headers=headers)
        assert r.status_code == 404


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
async def test_a_run_id_of_another_org_is_404_even_when_the_file_exists(
    image_dir: Path, service: Service, org_keys: None
) -> None:
    run_a = single_runs.new_run_id("orgA")
    path = image_dir / f"{run_a}_viz1.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG_SIGNATURE + b"a")
    url = f"/api/executions/{run_a}/images/viz1.png"
    assert (await service.client.get(url, headers=K1)).status_code == 200
    assert (await service.client.get(url, headers=K2)).status_code == 404
    forged = url.replace(run_a.split("-")[1], single_runs.new_run_id("orgB").split("-")[1])
    assert (await service.client.get(forged, headers=K2)).status_code == 404


def test_run_ids_bind_the_org() -> None:
    a, none = single_runs.new_run_id("orgA"), single_runs.new_run_id(None)
    assert single_runs.is_single_run(a) and single_runs.is_single_run(none)
    assert not single_runs.is_single_run("0123456789abcdef")
    assert single_runs.visible_to(a, "orgA") and single_runs.visible_to(a, None)
    assert not single_runs.visible_to(a, "orgB") and not single_runs.visible_to(none, "orgA")
    assert not single_runs.visible_to("single_node-", "orgA")
    assert a != single_runs.new_run_id("orgA")


def test_old_single_node_images_are_pruned(tmp_path: Path) -> None:
    keep = 5
    for i in range(8):
        path = tmp_path / f"{single_runs.new_run_id('orgA')}_n{i}.png"
        path.write_bytes(b"png")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    other = tmp_path / "0123456789abcdef_n.png"  # an execution's image: never pruned here
    other.write_bytes(b"png")
    os.utime(other, (0, 0))
    single_runs.prune_images(tmp_path, keep)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert other.name in left
    assert sorted(p.stem.rsplit("_", 1)[1] for p in tmp_path.glob("single_node-*.png")) == [
        f"n{i}" for i in range(3, 8)
    ]
