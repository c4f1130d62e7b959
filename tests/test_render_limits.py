"""Issue 9: a template cannot amplify its input without bound. `{{a}}` repeated over a big value
(one rendering) or a big template over many records (addField) stops at MAX_NODE_OUTPUT_BYTES
as the text is made, with a node error naming the limit."""

import time
from typing import Any

import pytest

from errors import NodeError, NodeExecutionError
from models import NodeDef
from tasks.context import Resources
from tasks.run_node import run_with_retries
from tasks.values import render_fields, render_template
from tests.conftest import MakeCtx

MiB = 1 << 20
BIG = {"a": "x" * MiB}

RENDER_CASES = [
    ("placeholders over a 1 MB value", lambda: render_template("{{a}}" * 200_000, BIG)),
    ("single braces over a 1 MB value", lambda: render_fields("{a}" * 200_000, BIG)),
    ("double braces in a message", lambda: render_fields("{{ a }}" * 200_000, BIG)),
    ("a small limit", lambda: render_template("{{b}}" * 11, {"b": "y" * 10}, limit=100)),
]


@pytest.mark.parametrize("render", [c[1] for c in RENDER_CASES], ids=[c[0] for c in RENDER_CASES])
def test_a_rendering_stops_at_its_limit(render: Any) -> None:
    started = time.perf_counter()
    with pytest.raises(NodeExecutionError, match="MAX_NODE_OUTPUT_BYTES"):
        render()
    assert time.perf_counter() - started < 5


def test_a_rendering_at_its_limit_is_kept() -> None:
    assert render_template("{{b}}" * 10, {"b": "y" * 10}, limit=100) == "y" * 100
    assert render_fields("{b}!", {"b": "y" * 10}, limit=11) == "y" * 10 + "!"


ADD_CASES = [
    # (label, template, records, limit, error or None)
    ("1 MB template on 500 records", "{{n}}" + "{" * MiB, 500, 64 * MiB, "records 0 to 63"),
    ("fits", "{{n}}-" + "z" * 1000, 500, 64 * MiB, None),
    ("no placeholder: one shared value", "z" * 100_000, 500, 64 * MiB, None),
    ("just over a small limit", "{{n}}" + "z" * 1020, 2, 2048, "records 0 to 1 "),
]


@pytest.mark.parametrize(
    ("template", "count", "limit", "error"),
    [c[1:] for c in ADD_CASES],
    ids=[c[0] for c in ADD_CASES],
)
async def test_add_field_counts_what_it_renders(
    make_ctx: MakeCtx,
    make_resources: Any,
    template: str,
    count: int,
    limit: int,
    error: str | None,
) -> None:
    resources: Resources = make_resources(MAX_NODE_OUTPUT_BYTES=limit)
    node = NodeDef.model_validate(
        {"id": "n1", "type": "addField", "config": {"addFieldName": "t", "addFieldValue": template}}
    )
    data = [{"n": f"{i:05d}"} for i in range(count)]
    ctx = make_ctx("addField", resources=resources)
    if error is not None:  # addField's own count, before the output check
        with pytest.raises(NodeError, match="MAX_NODE_OUTPUT_BYTES") as info:
            await run_with_retries(node, data, ctx)
        assert error in str(info.value)
        return
    result = await run_with_retries(node, data, ctx)
    assert len(result["outputData"]) == count
    assert result["outputData"][-1]["n"] == f"{count - 1:05d}"
