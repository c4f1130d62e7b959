"""The workflow definitions of the bench workloads (the editor's JSON: nodes + connections)."""

from typing import Any

Workflow = dict[str, Any]


def _edge(a: str, b: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"e_{a}_{b}", "fromNodeId": a, "toNodeId": b, **extra}


def chain(nodes: list[dict[str, Any]]) -> Workflow:
    pairs = zip(nodes, nodes[1:], strict=False)
    return {"nodes": nodes, "connections": [_edge(a["id"], b["id"]) for a, b in pairs]}


def add_field(i: int) -> dict[str, Any]:
    return {
        "id": f"f{i}",
        "type": "addField",
        "label": f"field {i}",
        "config": {"addFieldName": f"k{i}", "addFieldValue": "v"},
    }


def http_node(i: int, url: str) -> dict[str, Any]:
    # retries 0: a failed request is a failed run (the bench counts it), not a hidden retry
    return {
        "id": f"h{i}",
        "type": "http",
        "label": f"http {i}",
        "config": {"httpUrl": url, "httpMethod": "GET", "retries": 0},
    }


def trigger() -> dict[str, Any]:
    return {"id": "t", "type": "trigger", "label": "Trigger"}


def w1_noop(n: int = 40) -> Workflow:
    """`n` sequential addField nodes (no trigger: every node is a no-op transform)."""
    return chain([add_field(i) for i in range(n)])


def w1_http(url: str, n: int = 40) -> Workflow:
    """`n` sequential http GETs against the local upstream."""
    return chain([http_node(i, url) for i in range(n)])


def w2_noop() -> Workflow:
    """The 10-node no-op workflow: trigger + 9 addField in a chain."""
    return chain([trigger(), *[add_field(i) for i in range(9)]])


def w3_fanout(url: str, n: int = 5) -> Workflow:
    """trigger → a chain of `n` http nodes (ideal time: n × the upstream delay)."""
    return chain([trigger(), *[http_node(i, url) for i in range(n)]])


def w5_rows(n: int, side: str) -> list[dict[str, Any]]:
    """`n` spreadsheet-like rows keyed by `id` (strings, as parsed CSV cells are)."""
    if side == "A":
        return [
            {
                "id": str(i),
                "name": f"customer {i}",
                "amount": str(i % 997),
                "region": ("north", "south", "east", "west")[i % 4],
            }
            for i in range(n)
        ]
    return [
        {
            "id": str(i),
            "score": str(i % 101),
            "tier": ("gold", "silver", "bronze")[i % 3],
            "active": "yes" if i % 2 else "no",
        }
        for i in range(n)
    ]


def w5_bigdata(n: int, source_a: dict[str, Any], source_b: dict[str, Any]) -> Workflow:
    """excelInput A + excelInput B → join (mergeByKey on id, ports A/B) → splitColumns → output.

    `source_a`/`source_b` are the excelInput configs (inline `parsedData` or a file reference)."""
    nodes = [
        {"id": "xa", "type": "excelInput", "label": "customers.csv", "config": source_a},
        {"id": "xb", "type": "excelInput", "label": "scores.csv", "config": source_b},
        {
            "id": "j",
            "type": "join",
            "label": "Join on id",
            "config": {"joinStrategy": "mergeByKey", "joinType": "inner", "joinKey": "id"},
        },
        {
            "id": "s",
            "type": "splitColumns",
            "label": "Split",
            "config": {
                "columnsOutputA": ["id", "name", "amount"],
                "columnsOutputB": ["id", "score", "tier"],
            },
        },
        {"id": "o", "type": "output", "label": "Output"},
    ]
    connections = [
        _edge("xa", "j", inputPort="A"),
        _edge("xb", "j", inputPort="B"),
        _edge("j", "s"),
        _edge("s", "o", outputType="A"),
    ]
    return {"nodes": nodes, "connections": connections}


def inline_source(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return {
        "fileName": name,
        "headers": list(rows[0]) if rows else [],
        "parsedData": rows,
        "rowCount": len(rows),
    }
